//! The `duet` binary; see `duet --help`.

fn main() -> std::process::ExitCode {
    duet::cli::main()
}
