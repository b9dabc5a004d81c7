//! overdraft's chaos injector: turns a latent race into an incident on
//! demand, and writes down when it did.
//!
//! # Layout
//! - [`fault`]: every fault, its parameters and bounds (JSON, TOML, CLI words).
//! - [`registry`]: the proxy's live faults and their seeded draws.
//! - [`toxic`]: byte-level toxics on one direction of one connection.
//! - [`calls`]: faults on single gRPC calls (the proxy speaks HTTP/2).
//! - [`proxy`]: the TCP proxy that wires the two together towards the ledger.
//! - [`control`]: the proxy's HTTP/JSON control API and its client.
//! - [`ledger`]: faults inside the ledger, through its Chaos service.
//! - [`process`]: a ledger process paused and resumed from outside.
//! - [`schedule`]: phases on a timeline, a seeded plan, the run.
//! - [`log`]: the fault log, one JSON line per fault applied or removed.
//! - [`cli`]: the `chaos` command line.

pub mod calls;
pub mod cli;
pub mod control;
pub mod fault;
pub mod ledger;
pub mod log;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod schedule;
pub mod toxic;
