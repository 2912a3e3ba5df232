//! `ferry-bench`: parses flags and runs the benchmark the library describes.

use std::process::ExitCode;

use clap::Parser;
use ferry_bench::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ferry-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => {
                let plan = args.plan()?;
                let results = ferry_bench::run::load(&plan).await?;
                let summaries = ferry_bench::report::summarise(&plan, &results);
                ferry_bench::report::print_summary(&plan, &summaries);
                let verified = summaries.iter().all(|s| s.verified);
                Ok((!verified).then_some("the broker does not hold what was reported delivered"))
            }
            Command::Targets(args) => {
                let report = ferry_bench::targets::measure(&args).await?;
                ferry_bench::targets::print(&report);
                Ok((report.failed > 0).then_some("some targets were not delivered to"))
            }
        }
    });
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(problem)) => {
            eprintln!("ferry-bench: {problem}");
            ExitCode::FAILURE
        }
        Err::<_, ferry_bench::BenchError>(error) => {
            eprintln!("ferry-bench: {error}");
            ExitCode::from(2)
        }
    }
}
