//! The `caldera` binary: parse the command line and hand over to `app`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the builds' short-lived trees,
/// made on the worker threads, left glibc's per-thread arenas holding freed
/// memory it never gave back — measured at 50k units (BENCHMARKS.md,
/// "Scale"), the daemon's outputs cost 10.4 kB per unit with glibc and
/// 6.2 kB with mimalloc, at the same or better build speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    caldera::app::main(caldera::cli::Cli::parse())
}
