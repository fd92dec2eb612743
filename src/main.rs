//! The `switchboard` binary: parses the command line and maps errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    switchboard::cli::main()
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc settings: one arena per CPU (jemalloc's default of four per CPU holds memory that
/// a router of this size never uses) and dirty pages returned within a second, to keep the
/// resident set small.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"percpu_arena:percpu,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
