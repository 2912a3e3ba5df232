//! The `ferry` binary: parses flags, sets up logging and runs the chosen command.

use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        Command::Send(_) => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    match cli.command {
        Command::Serve(args) => cli::serve(args),
        Command::Send(command) => cli::send(command),
    }
}
