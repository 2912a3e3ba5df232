//! The command examples a user copies must be commands the binary takes: every `ferry …`
//! line in the README's `sh` blocks and in the `--help` examples of every subcommand is
//! parsed by the binary's own argument parser, so a renamed or removed flag fails here
//! rather than in a user's first hour. (The commands that need brokers are run for real by
//! `scripts/demo` and the end-to-end tests; this checks all of them against the parser.)

#![cfg(feature = "daemon")]

use clap::{CommandFactory, Parser};
use ferry::cli::Cli;

/// The README, as shipped.
const README: &str = include_str!("../README.md");

/// Joins lines continued with a trailing backslash, so each item is one shell line.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.trim_end().strip_suffix('\\') {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// The `ferry` invocations of shell text: each line split as the shell would (quotes,
/// comments), cut at pipes and `||`/`&&`/`;`, keeping the pieces whose program is `ferry`.
/// Text that shows a prompt (`$ ferry …` followed by output) has its commands on the
/// prompt lines only.
fn ferry_commands(text: &str) -> Vec<Vec<String>> {
    let prompted = text.lines().any(|line| line.trim_start().starts_with("$ "));
    let mut commands = Vec::new();
    for line in logical_lines(text) {
        let line = line.trim_start();
        // `Example: ferry …` and `Example (an ecFlow task): ferry …` in --help texts.
        let line = match line.find("ferry ") {
            Some(at) if line.starts_with("Example") => &line[at..],
            _ => line,
        };
        let line = match line.strip_prefix("$ ") {
            Some(command) => command,
            None if prompted => continue,
            None => line,
        };
        if !line.contains("ferry") {
            continue;
        }
        let Some(words) = shlex::split(line) else {
            commands.push(vec!["not a shell line:".to_owned(), line.to_owned()]);
            continue;
        };
        for piece in words.split(|word| matches!(word.as_str(), "|" | "||" | "&&" | ";")) {
            if piece.first().map(String::as_str) == Some("ferry") {
                commands.push(without_redirections(piece));
            }
        }
    }
    commands
}

/// A command's words without the shell's redirections (`> file`, `2>/dev/null`, `<in`).
fn without_redirections(words: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let operator = word.trim_start_matches(|c: char| c.is_ascii_digit());
        if matches!(operator, ">" | ">>" | "<") {
            words.next();
        } else if !(operator.starts_with('>') || operator.starts_with('<')) {
            kept.push(word.clone());
        }
    }
    kept
}

/// The contents of the README's code blocks that hold commands: ```sh and unlabelled
/// ones (indented ones in lists too), and ```text ones that show a `$ ` prompt.
fn readme_shell_blocks() -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in README.lines() {
        let fence = line.trim_start();
        match current.as_mut() {
            None => {
                if let Some(language) = fence.strip_prefix("```") {
                    current = Some((language.to_owned(), String::new()));
                }
            }
            Some((language, block)) if fence.starts_with("```") => {
                let prompted = block.lines().any(|l| l.trim_start().starts_with("$ "));
                let shell =
                    matches!(language.as_str(), "sh" | "") || (language == "text" && prompted);
                if shell {
                    blocks.push(std::mem::take(block));
                }
                current = None;
            }
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Every subcommand's `--help` examples (its after_help text), by name.
fn help_examples() -> Vec<(String, String)> {
    let mut examples = Vec::new();
    let mut pending = vec![Cli::command()];
    while let Some(command) = pending.pop() {
        let texts = [command.get_after_help(), command.get_long_about()];
        for text in texts.into_iter().flatten() {
            examples.push((command.get_name().to_owned(), text.to_string()));
        }
        pending.extend(command.get_subcommands().cloned());
    }
    examples
}

/// Parses each command; the failures, with clap's message.
fn unparsed(commands: &[Vec<String>]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|command| {
            Cli::try_parse_from(command)
                .err()
                .map(|error| format!("{}\n  {}", command.join(" "), error.render()))
        })
        .collect()
}

#[test]
fn every_readme_ferry_command_parses() {
    let commands: Vec<_> = readme_shell_blocks()
        .iter()
        .flat_map(|block| ferry_commands(block))
        .collect();
    assert!(
        commands.len() >= 15,
        "only {} ferry commands found in the README: is the extraction broken?",
        commands.len()
    );
    let failures = unparsed(&commands);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_help_example_parses() {
    let mut commands = Vec::new();
    for (name, text) in help_examples() {
        let found = ferry_commands(&text);
        assert!(
            !text.contains("Example") || !found.is_empty(),
            "`{name} --help` has examples but none was extracted"
        );
        commands.extend(found);
    }
    assert!(
        commands.len() >= 10,
        "only {} help examples",
        commands.len()
    );
    let failures = unparsed(&commands);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_changed_flag_is_caught() {
    let commands = ferry_commands("ferry send kafka --brokers k:9092 --topic t --no-such-flag");
    assert_eq!(unparsed(&commands).len(), 1);
    let commands = ferry_commands("echo x | ferry send kafka --brokers k:9092 --topic t # ok");
    assert_eq!(commands.len(), 1);
    assert!(unparsed(&commands).is_empty());
    let commands = ferry_commands("$ ferry spool export --dir d > dead.jsonl 2>/dev/null\nferry x");
    assert_eq!(commands.len(), 1);
    assert!(unparsed(&commands).is_empty());
}
