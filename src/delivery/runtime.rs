//! The workers' runtime: threads of their own, so that a burst of webhooks and the sends share
//! the CPU through the kernel's scheduler rather than one runtime's queue. They run at the same
//! priority as intake: at nice 10 the router acknowledged first and delivered with what was
//! left, and at saturation a third of the events were delivered only after the load, seconds
//! behind their acknowledgement; at equal priority deliveries keep pace far better (POST to
//! arrival p99 at saturation about halved, with about as many acknowledgements).

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
