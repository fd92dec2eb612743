//! The workers' runtime: threads of their own that give way to intake. Under a burst the router
//! acknowledges first (every acknowledged event is already on disk) and delivers with the CPU
//! left over, at full speed again as soon as the burst is over. When the CPU is not short, the
//! lower priority changes nothing.

/// The nice value of the workers' threads: when the CPU is short, intake's threads run first.
const WORKER_NICE: i32 = 10;

/// A runtime for the workers, with a thread per available core (sends mostly wait on the
/// network; rendering and recording are what take CPU).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("switchboard-delivery")
        .on_thread_start(give_way)
        .enable_all()
        .build()
}

/// Lowers the calling thread's priority (raises its nice value), on Linux.
fn give_way() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority and gettid only read their arguments. On Linux the nice value belongs
    // to the thread, so this changes the calling thread alone.
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            WORKER_NICE,
        );
    }
}
