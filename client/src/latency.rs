//! Latency histograms: HDR, microseconds, 1 µs to 60 s at 3 significant figures.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded; longer ones are clamped to it.
const LATENCY_US_MAX: u64 = 60_000_000;

/// A latency histogram.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        // The bounds are constants that hdrhistogram accepts (low >= 1,
        // high >= 2 * low, sigfig <= 5), so construction cannot fail.
        let histogram =
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant bounds are valid");
        Self { histogram }
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(1, LATENCY_US_MAX));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0..=1), in µs; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.value_at_quantile(q)
    }

    /// The largest latency recorded, in µs.
    pub fn max_us(&self) -> u64 {
        self.histogram.max()
    }
}
