//! The `flowpol` command: parses the command line, calls the library crates and prints.
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
