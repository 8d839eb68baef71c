//! The `jacker-gate` command. The command line lives in the library (`jacker_gate::cli`), so
//! that every edge module stays private to it.

fn main() -> std::process::ExitCode {
    jacker_gate::cli::main()
}
