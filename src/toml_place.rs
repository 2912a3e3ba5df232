//! TOML's errors on one line, at the right line: `line 4, column 1: unknown field
//! `topc`, expected one of …`. TOML's own text spans several lines (the source line and a
//! caret), which a log line or a one-line client error flattens into noise; and for an
//! unknown key it points at the table's header, not at the key.

/// Where `error` is in `text` (`line L, column C: `, or "" when TOML gave no place) and
/// its message on one line. An unknown key is placed at its own line.
pub fn describe(text: &str, error: &toml::de::Error) -> (String, String) {
    let message = error.message().trim().replace('\n', " ");
    let place = error.span().map_or_else(String::new, |span| {
        let start = unknown_key_at(text, span.start, &message).unwrap_or(span.start);
        let before = text.get(..start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
        format!("line {line}, column {column}: ")
    });
    (place, message)
}

/// Where the key an "unknown field `name`" message names is written, at or after `from`
/// (the table TOML pointed to): the first line that begins with it.
fn unknown_key_at(text: &str, from: usize, message: &str) -> Option<usize> {
    let name = message.strip_prefix("unknown field `")?.split('`').next()?;
    let quoted = format!("\"{name}\"");
    let mut at = text.get(..from)?.rfind('\n').map_or(0, |n| n + 1);
    for line in text[at..].split_inclusive('\n') {
        let key = line.trim_start();
        let rest = key
            .strip_prefix(name)
            .or_else(|| key.strip_prefix(quoted.as_str()));
        if rest.is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return Some(at + (line.len() - key.len()));
        }
        at += line.len();
    }
    None
}
