/// mimalloc returns freed memory to the system promptly; glibc's allocator keeps the large
/// buffers of decoded photos per thread, which made peak memory grow with the batch size.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    api::cli::main()
}
