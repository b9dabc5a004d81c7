//! Toxics: what the proxy does to the bytes of one direction of one
//! connection, after Toxiproxy. A pump reads a chunk, lets every toxic that
//! applies to this connection act on it in the order they were added, and
//! writes what is left.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
};

use crate::{
    fault::{Direction, FaultKind},
    registry::{Active, Registry},
};

/// Largest chunk read at once: 32 KiB, a few HTTP/2 frames.
pub const CHUNK_BYTES_MAX: usize = 32 * 1024;

/// How a connection ends when a toxic ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Still open.
    Open,
    /// A FIN: the peer reads end of stream.
    Graceful,
    /// A RST: the peer reads "connection reset by peer".
    Reset,
}

/// One direction of one connection.
pub struct Pump {
    /// Which bytes.
    pub direction: Direction,
    /// The connection's number, for the per-connection draws.
    pub connection: u64,
    /// The live faults.
    pub registry: Arc<Registry>,
    /// Set by either pump to end the connection; watched by both.
    pub close: watch::Sender<Close>,
}

impl Pump {
    /// Copies `from` to `to` through the toxics until end of stream or a
    /// close; returns how the connection should end.
    pub async fn run<R, W>(&self, mut from: R, mut to: W) -> Close
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut closed = self.close.subscribe();
        let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
        let mut passed_bytes: u64 = 0;
        let mut counted = Vec::new();
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                seen = closed.wait_for(|close| *close != Close::Open) => {
                    return seen.map_or(Close::Graceful, |close| *close);
                }
            };
            let length = match read {
                Ok(0) | Err(_) => {
                    // A toxic on the other pump may have ended the connection,
                    // which ends this stream too: end it the toxic's way (a
                    // reset must not become a graceful FIN first).
                    let closing = *self.close.borrow();
                    if closing != Close::Open {
                        return closing;
                    }
                    self.slow_close(&mut closed).await;
                    let _ = to.shutdown().await;
                    return Close::Graceful;
                }
                Ok(length) => length,
            };
            let toxics = self.registry.toxics(self.direction, self.connection);
            for toxic in &toxics {
                if !counted.iter().any(|id: &String| *id == toxic.fault.id) {
                    toxic.fired_on_connection();
                    counted.push(toxic.fault.id.clone());
                }
            }
            let outcome = self
                .pass(
                    &toxics,
                    &buffer[..length],
                    &mut passed_bytes,
                    &mut to,
                    &mut closed,
                )
                .await;
            if outcome != Close::Open {
                self.close.send_replace(outcome);
                return outcome;
            }
        }
    }

    /// Sends one chunk through `toxics`; returns Open to go on.
    async fn pass<W: AsyncWrite + Unpin>(
        &self,
        toxics: &[Arc<Active>],
        chunk: &[u8],
        passed_bytes: &mut u64,
        to: &mut W,
        closed: &mut watch::Receiver<Close>,
    ) -> Close {
        let mut chunk = chunk;
        let mut slicer = None;
        let mut bandwidth = None;
        for toxic in toxics {
            match &toxic.fault.kind {
                FaultKind::Timeout { timeout_ms } => {
                    // Nothing gets through; with a timeout the connection
                    // then closes, without one it stays open and silent.
                    if *timeout_ms == 0 {
                        return Close::Open;
                    }
                    return wait_or_closed(
                        Duration::from_millis(*timeout_ms),
                        closed,
                        Close::Graceful,
                    )
                    .await;
                }
                FaultKind::ResetPeer { timeout_ms } => {
                    return wait_or_closed(
                        Duration::from_millis(*timeout_ms),
                        closed,
                        Close::Reset,
                    )
                    .await;
                }
                FaultKind::Latency {
                    latency_ms,
                    jitter_ms,
                } => {
                    let spread = toxic.draw(0, jitter_ms.saturating_mul(2));
                    let delay_ms = (latency_ms + spread).saturating_sub(*jitter_ms);
                    if wait_or_closed(Duration::from_millis(delay_ms), closed, Close::Open).await
                        != Close::Open
                    {
                        return *closed.borrow();
                    }
                }
                FaultKind::LimitData { bytes } => {
                    let room = bytes.saturating_sub(*passed_bytes);
                    let room = usize::try_from(room).unwrap_or(usize::MAX);
                    if room < chunk.len() {
                        let _ = to.write_all(&chunk[..room]).await;
                        let _ = to.flush().await;
                        return Close::Graceful;
                    }
                }
                FaultKind::Slicer { .. } => slicer = Some(toxic),
                FaultKind::Bandwidth { rate_kib_per_s } => bandwidth = Some(*rate_kib_per_s),
                _ => {}
            }
        }
        *passed_bytes = passed_bytes.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        while !chunk.is_empty() {
            let (slice, rest) = match slicer {
                Some(toxic) => chunk.split_at(slice_length(toxic, chunk.len())),
                None => (chunk, &chunk[chunk.len()..]),
            };
            if to.write_all(slice).await.is_err() || to.flush().await.is_err() {
                return Close::Graceful;
            }
            let mut pause = Duration::ZERO;
            if let Some(rate_kib_per_s) = bandwidth {
                let bytes = u64::try_from(slice.len()).unwrap_or(u64::MAX);
                pause += Duration::from_micros(
                    bytes.saturating_mul(1_000_000) / (rate_kib_per_s * 1024),
                );
            }
            if let Some(toxic) = slicer
                && let FaultKind::Slicer { delay_us, .. } = toxic.fault.kind
                && !rest.is_empty()
            {
                pause += Duration::from_micros(delay_us);
            }
            if !pause.is_zero() && wait_or_closed(pause, closed, Close::Open).await != Close::Open {
                return *closed.borrow();
            }
            chunk = rest;
        }
        Close::Open
    }

    async fn slow_close(&self, closed: &mut watch::Receiver<Close>) {
        let delay_ms = self
            .registry
            .toxics(self.direction, self.connection)
            .iter()
            .filter_map(|toxic| match toxic.fault.kind {
                FaultKind::SlowClose { delay_ms } => Some(delay_ms),
                _ => None,
            })
            .max();
        if let Some(delay_ms) = delay_ms {
            wait_or_closed(Duration::from_millis(delay_ms), closed, Close::Open).await;
        }
    }
}

/// The next slice: the toxic's average ± its variation, at most what is left.
fn slice_length(toxic: &Active, left: usize) -> usize {
    let FaultKind::Slicer {
        average_size_bytes,
        size_variation_bytes,
        ..
    } = toxic.fault.kind
    else {
        return left;
    };
    let low = average_size_bytes - size_variation_bytes;
    let high = average_size_bytes + size_variation_bytes;
    let length = usize::try_from(toxic.draw(low.max(1), high)).unwrap_or(left);
    length.clamp(1, left)
}

/// Sleeps `delay`, or less if the connection closes meanwhile; returns
/// `then` after a full sleep, or how the connection closed.
async fn wait_or_closed(
    delay: Duration,
    closed: &mut watch::Receiver<Close>,
    then: Close,
) -> Close {
    tokio::select! {
        () = tokio::time::sleep(delay) => then,
        seen = closed.wait_for(|close| *close != Close::Open) => {
            seen.map_or(Close::Graceful, |close| *close)
        }
    }
}
