//! The ledger's configuration: the `ledger` command line, its defaults, and the
//! small enums (mode, policies) that the rest of the crate reads.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// How account operations are protected. CLI values: `unsafe`, `mutex`, `cas`, `actor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Read, race hook, check, blind write: nothing protects the gap.
    Unsafe,
    /// Per-account locks around read-check-write.
    Mutex,
    /// Optimistic compare-and-swap on the version, retried with backoff.
    Cas,
    /// Accounts sharded over owner tasks; operations are messages.
    Actor,
}

impl Mode {
    /// Every mode, in the order reports list them.
    pub const ALL: [Mode; 4] = [Mode::Unsafe, Mode::Mutex, Mode::Cas, Mode::Actor];

    /// The CLI and journal name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Unsafe => "unsafe",
            Mode::Mutex => "mutex",
            Mode::Cas => "cas",
            Mode::Actor => "actor",
        }
    }

    /// Position in [`Mode::ALL`], for per-mode counters.
    pub fn index(self) -> usize {
        match self {
            Mode::Unsafe => 0,
            Mode::Mutex => 1,
            Mode::Cas => 2,
            Mode::Actor => 3,
        }
    }
}

impl Mode {
    /// The mode a proto enum value names; None for unspecified or unknown values.
    pub fn from_proto(raw: i32) -> Option<Mode> {
        match overdraft_proto::v1::Mode::try_from(raw).ok()? {
            overdraft_proto::v1::Mode::Unsafe => Some(Mode::Unsafe),
            overdraft_proto::v1::Mode::Mutex => Some(Mode::Mutex),
            overdraft_proto::v1::Mode::Cas => Some(Mode::Cas),
            overdraft_proto::v1::Mode::Actor => Some(Mode::Actor),
            overdraft_proto::v1::Mode::Unspecified => None,
        }
    }
}

impl From<Mode> for overdraft_proto::v1::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Unsafe => Self::Unsafe,
            Mode::Mutex => Self::Mutex,
            Mode::Cas => Self::Cas,
            Mode::Actor => Self::Actor,
        }
    }
}

impl From<LockOrder> for overdraft_proto::v1::LockOrder {
    fn from(order: LockOrder) -> Self {
        match order {
            LockOrder::Ordered => Self::Ordered,
            LockOrder::Naive => Self::Naive,
        }
    }
}

impl From<OverdraftPolicy> for overdraft_proto::v1::Overdraft {
    fn from(policy: OverdraftPolicy) -> Self {
        match policy {
            OverdraftPolicy::Reject => Self::default(),
            OverdraftPolicy::Fee {
                fee_cents,
                limit_cents,
            } => Self {
                allow: true,
                fee_cents,
                limit_cents,
            },
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a withdrawal beyond the balance does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum OverdraftPolicy {
    /// Refuse it with FAILED_PRECONDITION "insufficient funds".
    Reject,
    /// Allow it down to `-limit_cents`, charging `fee_cents` once per debit that goes negative.
    Fee {
        /// Fee per overdrawing debit.
        fee_cents: i64,
        /// How far below zero a balance may go, fee included.
        limit_cents: i64,
    },
}

impl OverdraftPolicy {
    /// The lowest balance the policy allows.
    pub fn floor_cents(&self) -> i64 {
        match self {
            OverdraftPolicy::Reject => 0,
            OverdraftPolicy::Fee { limit_cents, .. } => -limit_cents,
        }
    }
}

/// Largest overdraft fee or limit accepted on the command line: $1,000,000.
pub const OVERDRAFT_CENTS_MAX: i64 = 100_000_000;

/// The `--overdraft` value before the limit is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverdraftArg {
    /// `reject`
    Reject,
    /// `fee=CENTS`
    Fee(i64),
}

impl FromStr for OverdraftArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "reject" {
            return Ok(Self::Reject);
        }
        let Some(cents) = s.strip_prefix("fee=") else {
            return Err(format!(
                "expected `reject` or `fee=CENTS` (e.g. fee=1000), got `{s}`"
            ));
        };
        let fee_cents: i64 = cents
            .parse()
            .map_err(|_| format!("fee must be a whole number of cents, got `{cents}`"))?;
        if !(0..=OVERDRAFT_CENTS_MAX).contains(&fee_cents) {
            return Err(format!(
                "fee must be between 0 and {OVERDRAFT_CENTS_MAX} cents, got {fee_cents}"
            ));
        }
        Ok(Self::Fee(fee_cents))
    }
}

/// When an acknowledged operation is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledge at once; sled flushes in the background every 500 ms.
    None,
    /// Acknowledge only after a flush that covers the operation (group commit).
    Sync,
}

/// The order in which mutex mode takes a transfer's two locks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockOrder {
    /// One global order (by account id): crossed transfers cannot deadlock.
    #[default]
    Ordered,
    /// Request order (from, then to): crossed transfers deadlock, and the lock
    /// wait bound detects it.
    Naive,
}

/// Where mutex mode's per-account locks live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockScope {
    /// In this process: right for one ledger, nothing across replicas.
    #[default]
    Process,
    /// In the database (PostgreSQL advisory locks, held by a transaction):
    /// every replica sees them.
    Database,
}

/// Whether an actor owner's writes carry its lease's fencing token
/// (actor mode across replicas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fencing {
    /// The store refuses a write whose token is older than the account's
    /// fence: a stale owner (paused past its lease) is turned away.
    #[default]
    On,
    /// An owner writes blind, trusting its lease as a mutex trusts its
    /// lock: a stale owner's write lands (Kleppmann's lost update).
    Off,
}

/// The isolation level of each operation's transaction, on a store that
/// has transactions (PostgreSQL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Each statement sees what was committed when it began.
    #[default]
    ReadCommitted,
    /// Snapshot isolation: one snapshot for the whole transaction; a write
    /// to a row changed since aborts (40001), but write skew passes.
    RepeatableRead,
    /// Serializable snapshot isolation: write skew aborts too (40001).
    Serializable,
}

impl Isolation {
    /// The statement that begins a transaction at this level.
    pub fn begin_sql(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// Whether a request_id makes a mutation apply at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Idempotency {
    /// A request_id applied once is replayed, never applied again.
    On,
    /// request_ids are ignored: retries double-apply (for demos).
    Off,
}

/// Where the ledger keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// sled on disk (`--data-dir`, or a temporary directory).
    Sled,
    /// Memory only: nothing survives a restart. For simulation and for
    /// measuring what storage costs.
    Memory,
    /// PostgreSQL (`--database-url`): several ledgers on one database are
    /// replicas of one ledger.
    Postgres,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A database URL, which may hold a password: `{:?}` prints it redacted, and
/// the start-up log's configuration leaves it out.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl From<String> for DatabaseUrl {
    fn from(text: String) -> Self {
        Self(text)
    }
}

/// Longest owner lease (`--lease-ttl-ms`): a minute; a longer one only
/// keeps an account unserved longer after its owner dies.
pub const LEASE_TTL_MS_MAX: u64 = 60_000;

/// Most database connections a replica may keep (`--pool-size`).
pub const POOL_SIZE_LIMIT: u64 = 256;

/// Longest race window accepted: 10 s. Longer only makes demos hang.
pub const RACE_WINDOW_MS_MAX: u64 = 10_000;

/// Longest lock wait accepted: 60 s.
pub const LOCK_WAIT_MS_MAX: u64 = 60_000;

/// Most CAS retries accepted on the command line.
pub const CAS_RETRIES_MAX_LIMIT: u32 = 1_000;

/// `ledger`: the overdraft ledger service.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "ledger", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:50051", env = "OVERDRAFT_LISTEN")]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks one, printed at start).
    #[arg(long, env = "OVERDRAFT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Consistency mode operations start in; switch later with Admin.SetMode.
    #[arg(long, value_enum, default_value_t = Mode::Mutex)]
    pub mode: Mode,

    /// Directory of the sled database. Omit for a temporary one removed at exit.
    #[arg(long, env = "OVERDRAFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// `sled` (on disk), `memory` (nothing survives a restart) or `postgres` (`--database-url`; shared by replicas).
    #[arg(long, value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,

    /// With `--store postgres`: the database, as a URL or key=value string
    /// (postgresql://USER:PASSWORD@HOST:5432/DB, or host=/run/postgresql dbname=ledger).
    #[arg(long, env = "OVERDRAFT_DATABASE_URL")]
    #[serde(skip)]
    pub database_url: Option<DatabaseUrl>,

    /// With `--store postgres`: this replica's name in the journal rows it writes (default: host name and port).
    #[arg(long, env = "OVERDRAFT_REPLICA")]
    pub replica: Option<String>,

    /// With `--store postgres`: the isolation level of each operation's
    /// transaction; aborted ones (40001, 40P01) are retried from the reads, a few times.
    #[arg(long, value_enum, default_value_t = Isolation::ReadCommitted)]
    pub isolation: Isolation,

    /// With `--store postgres`: connections this replica keeps to the database.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=POOL_SIZE_LIMIT))]
    pub pool_size: u64,

    /// With `--store postgres`: where the other replicas reach this one, to
    /// forward calls for the accounts it owns in actor mode
    /// (default: http://LISTEN when it names one address, else http://HOSTNAME:PORT).
    #[arg(long, env = "OVERDRAFT_ADVERTISE")]
    pub advertise: Option<String>,

    /// With `--store postgres`: how long an actor owner's lease on an account runs
    /// unrenewed; a paused owner loses its accounts after this.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=LEASE_TTL_MS_MAX))]
    pub lease_ttl_ms: u64,

    /// With `--store postgres`: `on` has the database refuse a stale actor
    /// owner's write (fencing tokens); `off` lets it land.
    #[arg(long, value_enum, default_value_t = Fencing::On)]
    pub fencing: Fencing,

    /// `sync`: acknowledge only after the operation is flushed (group commit).
    #[arg(long, value_enum, default_value_t = Durability::None)]
    pub durability: Durability,

    /// Smallest delay, in ms, injected at the race hook (at most --race-window-ms).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=RACE_WINDOW_MS_MAX))]
    pub race_window_ms_min: u64,

    /// Largest delay, in ms, injected at the race hook (uniform from --race-window-ms-min).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=RACE_WINDOW_MS_MAX))]
    pub race_window_ms: u64,

    /// Seed of every random choice the server makes (race delays, backoff jitter).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// `reject` refuses debits beyond the balance; `fee=CENTS` allows them, charging a fee.
    #[arg(long, default_value = "reject", value_parser = OverdraftArg::from_str)]
    #[serde(skip)]
    pub overdraft: OverdraftArg,

    /// With `--overdraft fee=CENTS`: how far below zero a balance may go.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(i64).range(0..=OVERDRAFT_CENTS_MAX))]
    pub overdraft_limit_cents: i64,

    /// `on`: a request_id is applied at most once; `off`: retries double-apply.
    #[arg(long, value_enum, default_value_t = Idempotency::On)]
    pub idempotency: Idempotency,

    /// Order in which mutex mode takes a transfer's locks.
    #[arg(long, value_enum, default_value_t = LockOrder::Ordered)]
    pub lock_order: LockOrder,

    /// Where mutex mode's locks live: `process`, or `database` (with --store postgres: across replicas).
    #[arg(long, value_enum, default_value_t = LockScope::Process)]
    pub lock_scope: LockScope,

    /// Longest wait for a lock in mutex mode before the operation is aborted as a deadlock.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=LOCK_WAIT_MS_MAX))]
    pub lock_wait_ms: u64,

    /// Most compare-and-swap retries in cas mode before the operation is aborted.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=i64::from(CAS_RETRIES_MAX_LIMIT)))]
    pub cas_retries_max: u32,

    /// Runtime threads serving calls. Unset: one per core (tokio's
    /// multi-threaded runtime). 1: every call on one thread, with the
    /// store's writer and checkpointer threads beside it; on a machine the
    /// ATMs share (a laptop demo, two cores) that costs the ledger about a
    /// third less CPU per call and answers more calls, since a reply is
    /// not handed between threads (BENCHMARKS.md). With one thread,
    /// unprotected operations interleave only where they wait (the race
    /// window), never truly in parallel.
    #[arg(long, env = "OVERDRAFT_THREADS", value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::runtime::THREADS_MAX)))]
    pub threads: Option<u16>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Token Admin and Chaos require (`authorization: Bearer TOKEN`) when
    /// listening beyond loopback. Without it they refuse every call there.
    #[arg(long, env = "OVERDRAFT_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
}

/// The settings that Admin.Configure may change while serving. Each
/// operation reads them once, at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// What a debit beyond the balance does.
    pub policy: OverdraftPolicy,
    /// Whether request_ids are honoured.
    pub idempotency: Idempotency,
    /// Mutex mode's lock order.
    pub lock_order: LockOrder,
}

/// Checks a race window: both ends within [`RACE_WINDOW_MS_MAX`], min <= max.
pub fn check_race_window(min_ms: u64, max_ms: u64) -> Result<(), String> {
    if max_ms > RACE_WINDOW_MS_MAX {
        return Err(format!(
            "race_window_ms_max must be at most {RACE_WINDOW_MS_MAX} (got {max_ms})"
        ));
    }
    if min_ms > max_ms {
        return Err(format!(
            "race_window_ms_min ({min_ms}) must not exceed race_window_ms_max ({max_ms})"
        ));
    }
    Ok(())
}

/// Checks an overdraft fee and limit: each within 0 and [`OVERDRAFT_CENTS_MAX`].
pub fn check_overdraft(fee_cents: i64, limit_cents: i64) -> Result<(), String> {
    for (field, value) in [("fee_cents", fee_cents), ("limit_cents", limit_cents)] {
        if !(0..=OVERDRAFT_CENTS_MAX).contains(&value) {
            return Err(format!(
                "overdraft.{field} must be between 0 and {OVERDRAFT_CENTS_MAX} (got {value})"
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Checks what clap cannot: rules between flags.
    pub fn validate(&self) -> Result<(), String> {
        check_race_window(self.race_window_ms_min, self.race_window_ms)
            .map_err(|e| format!("--race-window-ms-min must not exceed --race-window-ms: {e}"))?;
        match (self.store, &self.database_url, &self.data_dir) {
            (StoreKind::Postgres, None, _) => Err(
                "--store postgres needs --database-url (or OVERDRAFT_DATABASE_URL), e.g. postgresql://postgres@127.0.0.1:5432/ledger".into(),
            ),
            (StoreKind::Postgres, Some(_), Some(_)) => {
                Err("--data-dir has no effect with --store postgres; drop one of them".into())
            }
            (StoreKind::Sled | StoreKind::Memory, Some(_), _) => {
                Err("--database-url needs --store postgres".into())
            }
            (StoreKind::Memory, None, Some(_)) => {
                Err("--data-dir has no effect with --store memory; drop one of them".into())
            }
            _ if self.lock_scope == LockScope::Database && self.store != StoreKind::Postgres => {
                Err("--lock-scope database needs --store postgres (the locks live there)".into())
            }
            _ if self.fencing == Fencing::Off && self.store != StoreKind::Postgres => Err(
                "--fencing needs --store postgres (fencing tokens guard writes across replicas)"
                    .into(),
            ),
            _ if self.advertise.is_some() && self.store != StoreKind::Postgres => {
                Err("--advertise needs --store postgres (only replicas forward calls)".into())
            }
            _ if self.isolation != Isolation::ReadCommitted && self.store != StoreKind::Postgres => {
                Err("--isolation needs --store postgres (sled and memory have no transactions)".into())
            }
            _ => Ok(()),
        }
    }

    /// The run-time settings the flags describe.
    pub fn settings(&self) -> Settings {
        Settings {
            policy: self.overdraft_policy(),
            idempotency: self.idempotency,
            lock_order: self.lock_order,
        }
    }

    /// The overdraft policy the flags describe.
    pub fn overdraft_policy(&self) -> OverdraftPolicy {
        match self.overdraft {
            OverdraftArg::Reject => OverdraftPolicy::Reject,
            OverdraftArg::Fee(fee_cents) => OverdraftPolicy::Fee {
                fee_cents,
                limit_cents: self.overdraft_limit_cents,
            },
        }
    }

    /// The defaults, as `ledger` with no flags would run, for embedding and tests (environment variables still apply).
    pub fn defaults() -> Self {
        // Parsing an empty command line only applies the defaults above, which
        // are all valid, so this cannot fail.
        Self::parse_from(["ledger"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<(), String> {
        let config = Config::try_parse_from(std::iter::once("ledger").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        config.validate()
    }

    /// The store flags: each wrong combination is refused naming the flags
    /// and what to do; the right ones pass.
    #[test]
    fn store_flags_are_checked_together() {
        let config = Config::try_parse_from([
            "ledger",
            "--store",
            "postgres",
            "--database-url",
            "postgresql://u:secret@h/db",
        ])
        .unwrap();
        assert!(
            !format!("{config:?}").contains("secret"),
            "Debug redacts the URL"
        );
        assert!(!serde_json::to_string(&config).unwrap().contains("secret"));
        let refused = |args: &[&str], words: &[&str]| {
            let error = parsed(args).expect_err("refused");
            for word in words {
                assert!(error.contains(word), "{args:?}: {error}");
            }
        };
        refused(
            &["--store", "postgres"],
            &["--database-url", "postgresql://"],
        );
        refused(&["--database-url", "host=/tmp"], &["--store postgres"]);
        refused(
            &[
                "--store",
                "postgres",
                "--database-url",
                "host=/tmp",
                "--data-dir",
                "/tmp/x",
            ],
            &["--data-dir"],
        );
        refused(
            &["--lock-scope", "database"],
            &["--lock-scope database", "--store postgres"],
        );
        refused(
            &["--store", "memory", "--data-dir", "/tmp/x"],
            &["--data-dir"],
        );
        refused(&["--fencing", "off"], &["--fencing", "--store postgres"]);
        refused(
            &["--advertise", "http://a:1"],
            &["--advertise", "--store postgres"],
        );
        refused(
            &["--isolation", "serializable"],
            &["--isolation", "--store postgres"],
        );
        assert!(
            parsed(&[
                "--store",
                "postgres",
                "--pool-size",
                "0",
                "--database-url",
                "x"
            ])
            .is_err()
        );
        parsed(&[
            "--store",
            "postgres",
            "--database-url",
            "host=/tmp",
            "--lock-scope",
            "database",
        ])
        .unwrap();
        parsed(&[
            "--store",
            "postgres",
            "--database-url",
            "host=/tmp",
            "--mode",
            "actor",
            "--fencing",
            "off",
        ])
        .unwrap();
        parsed(&[]).unwrap();
    }
}
