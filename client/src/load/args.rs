//! The workload flags `atm load` and `atm compare` share, their bounds, and
//! the parsers of their values.

use std::{path::PathBuf, time::Duration};

use serde::Serialize;

use super::workload::{AmountRange, Mix, Skew};

/// Most ATMs: each is a task with one request in flight.
pub const ATMS_MAX: u32 = 4_096;

/// Most connections the ATMs share.
pub const CONNECTIONS_MAX: u32 = 256;

/// Most accounts: one Reset opens them all.
pub const ACCOUNTS_MAX: u32 = 10_000;

/// Most operations one run may send.
pub const OPS_MAX: u64 = 100_000_000;

/// Longest run: a day.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3_600);

/// Most attempts of one operation (the first send and its resends): with
/// the backoff's 2 s ceiling, twenty attempts ride out a ledger that is
/// away for about half a minute, longer than any restart it makes.
pub const ATTEMPTS_MAX: u32 = 20;

/// Longest name of a crowd member: it goes into every request id.
pub(super) const NAME_BYTES_MAX: usize = 64;

/// The workload flags `atm load` and `atm compare` share.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct LoadArgs {
    /// Concurrent ATMs (each has one request in flight).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=i64::from(ATMS_MAX)))]
    pub atms: u32,
    /// Accounts acct-0 .. acct-(K-1), opened by a Reset before the run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// How long to run (e.g. 10s, 500ms, 2m). Default 10s unless --ops is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    #[serde(skip)]
    pub duration: Option<Duration>,
    /// How many operations to send in all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=OPS_MAX))]
    pub ops: Option<u64>,
    /// Relative weights of the operations.
    #[arg(long, default_value = "deposit=40,withdraw=40,transfer=15,balance=5")]
    pub mix: Mix,
    /// Amount range in cents, MIN..MAX inclusive.
    #[arg(long, default_value = "100..10000")]
    pub amount_cents: AmountRange,
    /// Account choice: uniform, zipf:S (e.g. zipf:1.1) or hot:P (account 0 with probability P).
    #[arg(long, default_value = "uniform")]
    pub skew: Skew,
    /// Open model: total arrivals per second (default: closed model).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// HTTP/2 connections the ATMs share.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONNECTIONS_MAX)))]
    pub connections: u32,
    /// Seed of every random choice; the same seed sends the same operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000_000))]
    pub opening_cents: i64,
    /// Write one JSON line per operation here (format: docs/HISTORY.md). An
    /// existing directory gets NAME.jsonl (a --join member's name), written
    /// as NAME.jsonl.part until the run ends.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// gRPC deadline of each attempt (e.g. 500ms). Without it an attempt
    /// waits up to 10 s for its reply.
    #[arg(long, value_parser = parse_duration)]
    #[serde(skip)]
    pub deadline: Option<Duration>,
    /// Sends of one operation in all: an attempt with no reply (deadline
    /// passed, ledger unreachable) is sent again with the same request_id,
    /// after a backoff, until one answers or the attempts run out.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(ATTEMPTS_MAX)))]
    pub attempts: u32,
}

/// How `atm load` takes part in a run: alone (it resets the ledger and
/// reconciles every balance at the end) or as one member of a crowd.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CrowdArgs {
    /// Join a run that `atm reset` set up, as one member of a crowd (one
    /// container of many): no Reset, no mode switch, no final reads and no
    /// reconciliation; `atm referee` does those once every member is done.
    /// --accounts and --opening-cents must say what `atm reset` opened.
    #[arg(long, conflicts_with = "mode", requires = "history")]
    pub join: bool,
    /// This member's name: in its request ids, its history's ATM names, and
    /// the history's file name when --history is a directory. Letters,
    /// digits, '.', '_' and '-', at most 64. Default: the host name.
    #[arg(long, requires = "join", value_parser = parse_name)]
    pub name: Option<String>,
}

impl CrowdArgs {
    /// The member's name when joining a crowd (the host name unless given);
    /// None for a run of its own.
    pub fn member(&self) -> Result<Option<String>, String> {
        if !self.join {
            return Ok(None);
        }
        if let Some(name) = &self.name {
            return Ok(Some(name.clone()));
        }
        let host = nix::unistd::gethostname()
            .map_err(|e| format!("cannot read the host name ({e}); give --name"))?;
        let host = host.to_string_lossy();
        parse_name(&host)
            .map(Some)
            .map_err(|e| format!("the host name cannot name this member: {e}; give --name"))
    }
}

/// A crowd member's name: what a file name and a request id can both carry.
pub fn parse_name(text: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty() || text.len() > NAME_BYTES_MAX || !text.chars().all(allowed) {
        return Err(format!(
            "`{text}`: a name is 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(text.to_owned())
}

impl Default for LoadArgs {
    /// What `atm load` runs with no workload flags: the command line's own
    /// defaults, so that code and tests building a load start from them.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: LoadArgs,
        }
        // No flags: only the defaults above, which all parse.
        <Defaults as clap::Parser>::try_parse_from(["atm"])
            .map(|defaults| defaults.args)
            .unwrap_or_else(|error| unreachable!("the load defaults parse: {error}"))
    }
}

impl LoadArgs {
    /// The run length, when bounded by time.
    pub fn run_duration(&self) -> Option<Duration> {
        match (self.duration, self.ops) {
            (Some(duration), _) => Some(duration),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// Parses a duration as humantime does (`10s`, `500ms`, `2m`, `1h 30m`),
/// or a bare number of seconds; above zero and at most [`DURATION_MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("expected a duration like 10s, 500ms or 2m, got `{text}`: {e}"))?,
    };
    if duration.is_zero() || duration > DURATION_MAX {
        return Err(format!("must be above zero and at most 24h, got `{text}`"));
    }
    Ok(duration)
}

/// Slowest open-model rate: one arrival every 1,000 s. Below it an ATM's
/// interval (ATMs / rate) stops being a duration worth scheduling.
pub const RATE_PER_SEC_MIN: f64 = 0.001;

/// Fastest open-model rate: far beyond what two cores can send.
pub const RATE_PER_SEC_MAX: f64 = 1_000_000.0;

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of operations per second"))?;
    if !(RATE_PER_SEC_MIN..=RATE_PER_SEC_MAX).contains(&rate) {
        return Err(format!(
            "must be at least {RATE_PER_SEC_MIN} and at most {RATE_PER_SEC_MAX}, got {rate}"
        ));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: durations read as humantime writes them, a bare number as
    /// seconds, and out-of-range ones are refused with the rule.
    #[test]
    fn durations_parse_with_units_and_bounds() {
        let ok = |text: &str| parse_duration(text).unwrap();
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5_400));
        for bad in ["0", "0s", "25h", "ten seconds", "-5s"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(
                error.contains("duration") || error.contains("at most 24h"),
                "{bad}: {error}"
            );
        }
    }

    /// Goal: a member's name is what both a file name and a request id can
    /// carry; anything else is refused with the rule.
    #[test]
    fn member_names_are_checked() {
        assert_eq!(parse_name("overdraft_atm_3").unwrap(), "overdraft_atm_3");
        assert_eq!(parse_name("a1b2c3.local").unwrap(), "a1b2c3.local");
        for bad in ["", "../etc", "a b", "x/y", &"n".repeat(NAME_BYTES_MAX + 1)] {
            let error = parse_name(bad).unwrap_err();
            assert!(error.contains("1 to 64 letters"), "{bad}: {error}");
        }
    }
}
