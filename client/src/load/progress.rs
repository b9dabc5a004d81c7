//! Progress while a load runs: a bar on a terminal, a plain line a second otherwise.

use std::{
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Shared live counters for the progress display.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub(super) operations: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// Prints progress: a bar on a terminal, a plain line a second otherwise.
pub(super) async fn show(progress: Arc<Progress>, duration: Option<Duration>, ops: Option<u64>) {
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let length = ops.unwrap_or_else(|| duration.map_or(0, |d| d.as_secs().max(1)));
        let bar = indicatif::ProgressBar::new(length);
        let template = if ops.is_some() {
            "{bar:40} {pos}/{len} ops {msg}"
        } else {
            "{bar:40} {pos}/{len} s {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let operations = progress.operations.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let rate = operations as f64 / elapsed.max(1e-9);
        match &bar {
            Some(bar) => {
                bar.set_position(if ops.is_some() {
                    operations
                } else {
                    started.elapsed().as_secs()
                });
                bar.set_message(format!("{rate:.0} ops/s, {errors} not ok"));
            }
            None => eprintln!(
                "atm load: {elapsed:.0}s {operations} ops, {rate:.0} ops/s, {errors} not ok"
            ),
        }
    }
}
