//! `bench`: runs the benchmarks and writes BENCHMARKS.md and its chart (see bench.sh).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = bench::runner::Options::parse();
    if let Some(args) = &opts.device_child {
        return match bench::runner::device_child(&opts, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match bench::runner::run(&opts) {
        Ok(report) => {
            let misses = report.checks().iter().filter(|c| !c.pass).count();
            eprintln!(
                "bench: wrote {} and {} ({misses} budget misses)",
                opts.out.display(),
                opts.chart.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
