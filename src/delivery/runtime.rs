//! The workers' runtime: threads of their own, so that a burst of webhooks and the sends share
//! the CPU through the kernel's scheduler rather than one runtime's queue. They run at intake's
//! priority: were intake to come first when the CPU is short, a burst would be acknowledged
//! seconds ahead of its deliveries, a backlog that alerts arrive behind (bench/RESULTS.md has
//! the runs that compare the two).

/// A runtime for the workers, with a thread per available core (sends mostly wait on the
/// network; rendering and recording are what take CPU).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("switchboard-delivery")
        .enable_all()
        .build()
}
