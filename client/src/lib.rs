//! overdraft's ATM: how people meet the ledger. A one-command demo that shows
//! the race, named scenarios that reproduce incidents, and a load tester that
//! compares the four modes side by side.
//!
//! # Layout
//! - [`cli`]: the `atm` command line and what each subcommand prints.
//! - [`check`]: `atm check`, histories judged by the checker.
//! - [`connect`]: connecting to a ledger, with errors that say what to do.
//! - [`call`]: the one way an operation is sent and recorded.
//! - [`scenario`]: scenario files (TOML), the built-ins, and the runner.
//! - [`demo`]: the flagship scenarios in every mode, one table.
//! - [`load`]: the seeded load generator (closed or open model).
//! - [`compare`]: the same load in each mode, with the transport ceiling; HTML.
//! - [`history`]: writing the history of a run (format 2).
//! - [`journal`]: `atm journal`, the ledger's journal streamed to a file.
//! - [`health`]: `atm health`, the gRPC health check for containers and scripts.
//! - [`postmortem`]: `atm postmortem`, a checked run as an incident report.
//! - [`drill`]: `atm drill`, symptoms, questions, grades, then the answer.
//! - [`referee`]: `atm referee`, a crowd of `atm load --join` members judged
//!   once all are done (and `atm reset --fresh-histories`'s clearing).
//! - [`view`]: `atm view`, the live page pushed to a projector.
//! - [`latency`], [`report`]: histograms and human-readable output.
//! - [`embedded`]: a ledger in the same process, for the demo.
//! - [`child`]: a ledger in a child process, for scenarios that crash it.

pub mod call;
pub mod check;
pub mod child;
pub mod cli;
pub mod compare;
pub mod connect;
pub mod demo;
pub mod drill;
pub mod embedded;
pub mod health;
pub mod history;
pub mod journal;
pub mod latency;
pub mod load;
pub mod postmortem;
pub mod referee;
pub mod report;
pub mod scenario;
pub mod view;
