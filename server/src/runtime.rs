//! The async runtime the `ledger` and the `atm` run on, sized by their
//! `--threads`.

/// Most runtime threads `--threads` accepts.
pub const THREADS_MAX: u16 = 256;

/// A runtime with `threads` threads: 1 runs every task on the thread that
/// blocks on it (tokio's current-thread runtime, no hand-offs between
/// threads); more is a multi-threaded runtime with that many workers;
/// unset, one worker per core.
pub fn build(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}
