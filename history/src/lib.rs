//! overdraft's run history: the file format the ATMs write, reading one or
//! more files back as one run, and the checker that turns a run into a
//! verdict naming every anomaly, the operations behind it and the money.
//!
//! It has no I/O beyond reading files and no async: `atm check` and the
//! tests drive it directly, and it stays fast to build.
//!
//! # Layout
//! - [`format`]: the lines (header, open, operation, journal) and the one
//!   [`format::Operation`] type of the client and the checker.
//! - [`read`]: files to a [`read::Run`], errors naming file, line and field.
//! - [`evidence`]: the ledger's journal and the chaos fault log.
//! - [`check`]: the checker and its [`check::Report`].
//! - [`oracle`]: a brute-force checker (every order) the fast one is tested against.
//! - [`generate`]: seeded histories of a correct ledger, and ways to corrupt them.

pub mod check;
pub mod evidence;
pub mod format;
pub mod generate;
pub mod oracle;
pub mod read;

pub use check::{AnomalyKind, Report, Verdict, check};
pub use read::{Run, read_files};
