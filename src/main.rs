//! The `caldera` binary: parse the command line and hand over to `app`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    caldera::app::main(caldera::cli::Cli::parse())
}
