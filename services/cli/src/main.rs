//! The `jetsched` binary; everything lives in the library so that tests run the same code.

// Many small, short-lived allocations across threads: mimalloc handles them
// far better than glibc's allocator (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jetsched::main()
}
