//! The `ferry` binary: parses flags, sets up logging and runs the chosen command.

use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{self, Cli};

/// The portable daemon is built for musl, whose malloc is slow under many threads.
#[cfg(feature = "portable")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli.command.default_log_level();
    ferry::logging::init(level, cli.log_format);
    cli::run(cli.command)
}
