//! The `tarflow` command-line program.
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod cli;

/// Keeps freed activation buffers in the process. By default glibc returns large freed
/// blocks to the kernel at once, so every training step pays for the kernel zeroing fresh
/// pages (a quarter of attention's forward+backward time, measured); a training run reuses
/// the same sizes every step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// matrixmultiply (f64 products, and f32 on CPUs without AVX2) counts physical cores by
/// default, which is 1 on many 2-vCPU machines: the program gives it every core the process
/// may use unless `MATMUL_NUM_THREADS` is set. The environment is process-global, so this
/// happens here, before any other thread exists, and never in the library.
fn use_every_core_for_gemm() {
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
    }
}

fn main() {
    keep_freed_memory();
    use_every_core_for_gemm();
    // The command runs on a worker of the thread pool rather than on the main thread: a
    // parallel kernel called from a worker runs its first half right there and wakes one
    // other worker, where from outside the pool the caller would hand the whole job over,
    // wake the workers and sleep until they finish, a context switch per kernel.
    let result = match rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build() {
        Ok(pool) => pool.install(cli::run),
        Err(_) => cli::run(),
    };
    if let Err(e) = result {
        cli::out::say_err!("error: {e}");
        // A cause whose text the message already carries (an I/O error's OS text) would
        // only print the same words twice.
        let mut shown = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let text = s.to_string();
            if !shown.contains(&text) {
                cli::out::say_err!("  caused by: {text}");
                shown.push_str(&text);
            }
            src = s.source();
        }
        std::process::exit(1);
    }
}
