//! The `jetsched` binary; everything lives in the library so that tests run the same code.

fn main() -> std::process::ExitCode {
    jetsched::main()
}
