//! The `switchboard` binary: parses the command line and maps errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    switchboard::app::on_memory_freed(purge);
    switchboard::cli::main()
}

/// Returns the pages every jemalloc arena holds unused to the system at once. Called after a
/// reload: the configuration it replaced and the garbage of compiling are tens of MiB with
/// 10,000 rules, and an arena keeps them dirty (for its own later use, which another arena's
/// allocations cannot make) until they decay.
fn purge() {
    // jemalloc's MALLCTL_ARENAS_ALL: the command applies to every arena.
    const ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: a command with no value read or written (both pointers null, length 0).
    unsafe {
        tikv_jemalloc_sys::mallctl(
            ALL_ARENAS.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc settings: one arena per CPU (jemalloc's default of four per CPU holds memory that
/// a router of this size never uses) and dirty pages returned within a second, to keep the
/// resident set small.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"percpu_arena:percpu,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
