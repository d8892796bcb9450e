//! The `strata` command-line tool.

use clap::Parser;

/// strata: an embeddable event store. Subcommands arrive with the engine issues.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
