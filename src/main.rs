//! The `loratune` binary: parse arguments, run, report errors for people.

fn main() {
    keep_freed_memory();
    if let Err(e) = loratune::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc hands every freed block above 128 KiB back to the kernel, so a training step,
/// which allocates and frees the same activation-sized buffers layer after layer, paid
/// for fresh zeroed pages on every op (a fifth of its time in the kernel's page clearing).
/// Blocks up to 32 MiB (glibc's ceiling) now stay in the heap and the heap is never
/// trimmed, so they are reused; the peak resident memory is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
