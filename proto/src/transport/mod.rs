//! The channel overdraft's clients call through: the atm, the ledger's
//! calls to its peers, and the chaos proxy's calls upstream.
//!
//! tonic's own channel sends each call through three tasks besides the
//! caller's: a buffer's worker, hyper's dispatcher, and a task hyper spawns
//! per call to wait for the response. On a loaded laptop those hops were
//! most of the atm's CPU per call, so the atm measured itself as much as the
//! ledger. [`Channel`] drives h2 directly: the caller's task sends the
//! request and reads the response, and one task per connection moves the
//! frames. Each unary request leaves as two frames (HEADERS, then DATA
//! carrying END_STREAM), as h2load sends it. [`Channel::unary`] goes
//! further for the atm's calls: it encodes and decodes a unary call in
//! place, without tonic's generic client.

mod channel;
mod request_body;
mod response_body;
mod unary;

pub use channel::{Channel, TargetError};
pub use response_body::ResponseBody;
pub use unary::{MAX_REPLY_BYTES, MAX_REQUEST_BYTES};
