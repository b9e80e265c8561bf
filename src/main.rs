//! The `berth` binary: see `cli` for the verbs.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
