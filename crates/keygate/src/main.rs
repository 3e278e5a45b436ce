//! The `keygate` binary: argument parsing and wiring only; the work lives in the library crates.

mod backend;
mod cli;
mod commands;
mod log_writer;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: hyper and tokio allocate a few dozen small blocks per
/// proxied request, and glibc's allocator cost about a tenth of the gate path's instructions
/// (callgrind, BENCHMARKS.md); mimalloc's thread-local free lists are the well-kept remedy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let json = cli.json;
    let ran = commands::run(cli);
    // The access log's buffered lines, before the process ends (graceful stop or error).
    log_writer::flush();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(&e, json);
            ExitCode::FAILURE
        }
    }
}
