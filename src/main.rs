//! Thin: parse the command line and dispatch (see `otadepot::cli`).

use clap::Parser;

/// jemalloc, not the system's: with glibc's allocator a held long poll cost
/// about twice the memory, and what a burst of answers allocated stayed in
/// the process after it ended; jemalloc's background thread hands freed
/// pages back (docs/benchmarks.md, "Long polls at fleet scale").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = otadepot::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(otadepot::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
