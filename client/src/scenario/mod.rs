//! Scenarios: small named incidents in TOML. Opening balances, ATMs each with
//! a script, an optional start barrier, the race window, the policies, and
//! what must hold in each mode. Built-ins ship in `client/scenarios/`;
//! trainers write their own in the same format (see `docs/SCENARIOS.md`).

mod builtin;
pub mod run;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use overdraft_history::format::Operation;
use overdraft_proto::v1 as pb;
use overdraft_server::{
    bank::{AccountId, parse_amount, parse_opening_balance},
    config::{
        Fencing, Isolation, LEASE_TTL_MS_MAX, LockOrder, LockScope, Mode, OVERDRAFT_CENTS_MAX,
        OverdraftPolicy, RACE_WINDOW_MS_MAX,
    },
};
use serde::{Deserialize, Serialize};

pub use builtin::{BUILTIN, builtin};

/// Most ATMs one scenario may start: each gets its own connection.
pub const ATMS_MAX: u32 = 1_000;

/// Most operations one scenario may send in one mode.
pub const OPERATIONS_MAX: u64 = 1_000_000;

/// Most lost acknowledgements a scenario may arm (the ledger's bound).
pub const LOST_ACKS_MAX: u32 = 10_000;

/// Longest slow-owner delay (the ledger's bound).
pub const SLOW_OWNER_MS_MAX: u64 = 10_000;

/// Longest per-request deadline a step may set.
pub const STEP_TIMEOUT_MS_MAX: u64 = 60_000;

/// Most resends of one step.
pub const STEP_RETRIES_MAX: u32 = 10;

/// Most accounts one scenario may open (a Reset's bound).
pub const ACCOUNTS_MAX: usize = 10_000;

/// Most ledger replicas a scenario may start.
pub const REPLICAS_MAX: u32 = 8;

/// Longest an ATM may wait before its first step.
pub const START_MS_MAX: u64 = 60_000;

/// A scenario as written in TOML.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, e.g. `double-withdrawal`.
    pub name: String,
    /// The story, in dollars, for the trainee.
    #[serde(default)]
    pub story: String,
    /// Modes to run; all four when empty.
    #[serde(default)]
    pub modes: Vec<Mode>,
    /// Race window at the race hook: `[min, max]` ms.
    #[serde(default)]
    pub race_window_ms: [u64; 2],
    /// Hold every ATM until all are connected, then release them together.
    #[serde(default)]
    pub barrier: bool,
    /// `"reject"` or `{ fee_cents = .., limit_cents = .. }`.
    #[serde(default)]
    pub overdraft: Overdraft,
    /// Mutex mode's lock order.
    #[serde(default)]
    pub lock_order: LockOrder,
    /// Whether the server honours request_ids.
    #[serde(default = "yes")]
    pub idempotency: bool,
    /// Acknowledgements the ledger drops (after applying) for the first
    /// mutations of the run (Chaos.ArmLostAcks).
    #[serde(default)]
    pub lost_acks: u32,
    /// In actor mode, each owner waits this long before every message
    /// (Chaos.SetSlowOwner).
    #[serde(default)]
    pub slow_owner_ms: u64,
    /// Crash the ledger at this point (`journal-before-balances`,
    /// `between-transfer-legs`, `before-ack`), restart it on the same data,
    /// then audit. Such a scenario runs with a ledger process of its own.
    #[serde(default)]
    pub crash: Option<String>,
    /// Ledger replicas on one PostgreSQL database, which the scenario
    /// starts itself: how many, and the runs (a mode and a setting) to
    /// compare.
    #[serde(default)]
    pub replicas: Option<Replicas>,
    /// Accounts to open.
    pub accounts: Vec<AccountSpec>,
    /// The ATMs.
    pub atms: Vec<AtmSpec>,
    /// What must hold, by run (`mutex/database`), mode (`unsafe`, `mutex`,
    /// `cas`, `actor`), `safe` for the last three, or `all`.
    #[serde(default)]
    pub expect: BTreeMap<String, Expect>,
}

/// A scenario over ledger replicas sharing one PostgreSQL database.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replicas {
    /// How many replicas (2 to [`REPLICAS_MAX`]).
    pub count: u32,
    /// How long an actor owner's lease lasts unrenewed (`--lease-ttl-ms`).
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
    /// Race windows `[min, max]` ms by replica, first to last; replicas
    /// past the list use the scenario's `race_window_ms`.
    #[serde(default)]
    pub race_window_ms: Vec<[u64; 2]>,
    /// The runs, in order: `MODE` or `MODE/SETTING`, the setting one of
    /// `process`, `database` (mutex's lock scope), `fenced`, `unfenced`
    /// (actor), `read-committed`, `repeatable-read`, `serializable` (the
    /// transactions' isolation).
    pub runs: Vec<String>,
}

/// One run of a scenario: a mode, and for replicas a setting of theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The consistency mode.
    pub mode: Mode,
    /// The replicas' setting that distinguishes this run, if any.
    pub setting: Option<Setting>,
}

/// A replica setting a run can vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `--lock-scope`.
    LockScope(LockScope),
    /// `--fencing`.
    Fencing(Fencing),
    /// `--isolation`.
    Isolation(Isolation),
}

impl Setting {
    fn parse(text: &str) -> Option<Self> {
        use clap::ValueEnum;
        match text {
            "fenced" => Some(Setting::Fencing(Fencing::On)),
            "unfenced" => Some(Setting::Fencing(Fencing::Off)),
            _ => LockScope::from_str(text, false)
                .map(Setting::LockScope)
                .or_else(|_| Isolation::from_str(text, false).map(Setting::Isolation))
                .ok(),
        }
    }

    fn name(self) -> String {
        use clap::ValueEnum;
        let value = match self {
            Setting::Fencing(Fencing::On) => return "fenced".into(),
            Setting::Fencing(Fencing::Off) => return "unfenced".into(),
            Setting::LockScope(scope) => scope.to_possible_value(),
            Setting::Isolation(level) => level.to_possible_value(),
        };
        value.map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// A run's label as a file name's part: `mutex/database` -> `mutex-database`.
pub fn file_stem(label: &str) -> String {
    label.replace('/', "-")
}

impl Run {
    /// A run in `mode` with nothing else set.
    pub fn of(mode: Mode) -> Self {
        Self {
            mode,
            setting: None,
        }
    }

    /// `MODE` or `MODE/SETTING`.
    pub fn parse(text: &str) -> Result<Self, String> {
        use clap::ValueEnum;
        let (mode, setting) = match text.split_once('/') {
            Some((mode, setting)) => (mode, Some(setting)),
            None => (text, None),
        };
        let mode = Mode::from_str(mode, false)
            .map_err(|_| format!("run {text:?}: the mode must be unsafe, mutex, cas or actor"))?;
        let setting = setting
            .map(|name| {
                Setting::parse(name).ok_or_else(|| {
                    format!(
                        "run {text:?}: the setting must be process, database, fenced, unfenced, read-committed, repeatable-read or serializable"
                    )
                })
            })
            .transpose()?;
        match setting {
            Some(Setting::LockScope(_)) if mode != Mode::Mutex => {
                Err(format!("run {text:?}: a lock scope is mutex's setting"))
            }
            Some(Setting::Fencing(_)) if mode != Mode::Actor => {
                Err(format!("run {text:?}: fencing is actor's setting"))
            }
            _ => Ok(Self { mode, setting }),
        }
    }

    /// `mutex/database`, or the mode's name alone.
    pub fn label(self) -> String {
        match self.setting {
            Some(setting) => format!("{}/{}", self.mode.as_str(), setting.name()),
            None => self.mode.as_str().to_owned(),
        }
    }

    /// The label as a file name's part: `mutex-database`.
    pub fn file_stem(self) -> String {
        file_stem(&self.label())
    }
}

fn yes() -> bool {
    true
}

/// The wire value of a crash point's name (the server's names, one list).
pub fn crash_point(name: &str) -> Option<pb::CrashPoint> {
    overdraft_server::crash::CrashPoint::from_name(name).map(pb::CrashPoint::from)
}

/// Overdraft policy of a scenario.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Overdraft {
    /// `"reject"`.
    #[default]
    #[serde(with = "reject")]
    Reject,
    /// `{ fee_cents = 1000, limit_cents = 50000 }`.
    Fee {
        /// Fee per overdrawing debit.
        fee_cents: i64,
        /// How far below zero.
        limit_cents: i64,
    },
}

mod reject {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("reject")
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "reject" {
            Ok(())
        } else {
            Err(D::Error::custom(format!(
                "expected \"reject\" or {{ fee_cents = N, limit_cents = N }}, got {text:?}"
            )))
        }
    }
}

impl From<Overdraft> for OverdraftPolicy {
    fn from(overdraft: Overdraft) -> Self {
        match overdraft {
            Overdraft::Reject => OverdraftPolicy::Reject,
            Overdraft::Fee {
                fee_cents,
                limit_cents,
            } => OverdraftPolicy::Fee {
                fee_cents,
                limit_cents,
            },
        }
    }
}

/// An account to open.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// Account id.
    pub id: String,
    /// Opening balance.
    pub opening_cents: i64,
}

/// One ATM, or `count` identical ones.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AtmSpec {
    /// Name in reports.
    pub name: String,
    /// How many identical ATMs.
    #[serde(default = "one")]
    pub count: u32,
    /// How many times each runs its script.
    #[serde(default = "one")]
    pub repeat: u32,
    /// With replicas: which one (0-based) this ATM calls; by default ATM
    /// *i* calls replica *i* mod their count.
    #[serde(default)]
    pub replica: Option<u32>,
    /// Wait before the first step, ms (after the barrier, if any).
    #[serde(default)]
    pub start_ms: u64,
    /// The steps.
    pub script: Vec<Step>,
}

fn one() -> u32 {
    1
}

/// One operation in a script.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `deposit`, `withdraw`, `transfer` or `balance`.
    pub op: Operation,
    /// The account (deposit, withdraw, balance).
    #[serde(default)]
    pub account: Option<String>,
    /// Transfer source.
    #[serde(default)]
    pub from: Option<String>,
    /// Transfer destination.
    #[serde(default)]
    pub to: Option<String>,
    /// Amount (all but balance).
    #[serde(default)]
    pub amount_cents: Option<i64>,
    /// A withdrawal under the household rule: the account may go below
    /// zero as long as it and this joint account together do not.
    #[serde(default)]
    pub joint: Option<String>,
    /// `"auto"` (default: unique per operation), `"none"` (no idempotency
    /// key), or a fixed key shared by every ATM that sends this step.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Times to resend the same request (same request_id) when the reply is
    /// lost or late (UNAVAILABLE, DEADLINE_EXCEEDED) or the ledger aborted it
    /// (ABORTED: CAS contention or a detected deadlock), as a real ATM does.
    #[serde(default)]
    pub retries: u32,
    /// The ATM's deadline for this request (grpc-timeout), ms; none by default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What must hold after a mode's run. Unset fields are not checked.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `"none"`: the audit must be clean; `"some"`: it must find something.
    #[serde(default)]
    pub anomalies: Option<Presence>,
    /// Allowed final balances per account (any one of the listed values).
    #[serde(default)]
    pub balances: BTreeMap<String, Vec<i64>>,
    /// Exactly this many operations refused by the bank's rules.
    #[serde(default)]
    pub refusals: Option<u64>,
    /// `"none"` or `"some"` deadlocks detected (ABORTED with a deadlock).
    #[serde(default)]
    pub deadlocks: Option<Presence>,
    /// The sum of all final balances.
    #[serde(default)]
    pub total_cents: Option<i64>,
}

/// Whether something must be absent or present.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Must not happen.
    None,
    /// Must happen at least once.
    Some,
}

/// A scenario that does not parse or breaks a rule.
#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ScenarioError {
    /// File path or `builtin:NAME`.
    pub origin: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Scenario {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ScenarioError {
                origin: origin.to_owned(),
                line,
                column,
                message: error.message().trim().to_owned(),
            }
        })?;
        scenario.validate().map_err(|(field, message)| {
            let (line, column) = locate(text, field);
            ScenarioError {
                origin: origin.to_owned(),
                line,
                column,
                message: format!("{field}: {message}"),
            }
        })?;
        Ok(scenario)
    }

    /// Loads a built-in by name, or a file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some(text) = builtin(name_or_path) {
            return Self::parse(&format!("builtin:{name_or_path}"), text);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError {
            origin: name_or_path.to_owned(),
            line: 0,
            column: 0,
            message: format!(
                "not a built-in scenario and not a readable file ({error}); `atm scenario --list` shows the built-ins"
            ),
        })?;
        Self::parse(name_or_path, &text)
    }

    /// The modes to run: the scenario's, or all four.
    pub fn modes(&self) -> Vec<Mode> {
        if self.modes.is_empty() {
            Mode::ALL.to_vec()
        } else {
            self.modes.clone()
        }
    }

    /// The runs: the replicas' list, else one per mode to run.
    pub fn runs(&self) -> Vec<Run> {
        match &self.replicas {
            Some(replicas) => replicas
                .runs
                .iter()
                .filter_map(|text| Run::parse(text).ok())
                .collect(),
            None => self.modes().into_iter().map(Run::of).collect(),
        }
    }

    /// The expectation for `run`: its own section, else its mode's, else
    /// `safe` for the safe modes, else `all`.
    pub fn expectation(&self, run: Run) -> Option<&Expect> {
        let group = if run.mode == Mode::Unsafe {
            "unsafe"
        } else {
            "safe"
        };
        self.expect
            .get(&run.label())
            .or_else(|| self.expect.get(run.mode.as_str()))
            .or_else(|| self.expect.get(group))
            .or_else(|| self.expect.get("all"))
    }

    /// Operations one mode's run sends.
    pub fn operations(&self) -> u64 {
        self.atms
            .iter()
            .map(|atm| {
                u64::from(atm.count)
                    * u64::from(atm.repeat)
                    * u64::try_from(atm.script.len()).unwrap_or(u64::MAX)
            })
            .sum()
    }

    /// Every rule a scenario must keep, each error naming its field.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.validate_settings()?;
        let known = self.validate_accounts()?;
        self.validate_replicas()?;
        self.validate_atms(&known)?;
        self.validate_expectations(&known)
    }

    /// The ledger's settings and the faults, and the run's size.
    fn validate_settings(&self) -> Result<(), (&'static str, String)> {
        let [min, max] = self.race_window_ms;
        if max > RACE_WINDOW_MS_MAX || min > max {
            return Err((
                "race_window_ms",
                format!(
                    "must be [min, max] with min <= max <= {RACE_WINDOW_MS_MAX} (got [{min}, {max}])"
                ),
            ));
        }
        if let Overdraft::Fee {
            fee_cents,
            limit_cents,
        } = self.overdraft
            && (!(0..=OVERDRAFT_CENTS_MAX).contains(&fee_cents)
                || !(0..=OVERDRAFT_CENTS_MAX).contains(&limit_cents))
        {
            return Err((
                "overdraft",
                format!("fee_cents and limit_cents must be between 0 and {OVERDRAFT_CENTS_MAX}"),
            ));
        }
        if let Some(point) = &self.crash
            && crash_point(point).is_none()
        {
            return Err((
                "crash",
                format!(
                    "must be journal-before-balances, between-transfer-legs or before-ack (got {point:?})"
                ),
            ));
        }
        if self.slow_owner_ms > SLOW_OWNER_MS_MAX {
            return Err((
                "slow_owner_ms",
                format!("must be at most {SLOW_OWNER_MS_MAX}"),
            ));
        }
        if self.lost_acks > LOST_ACKS_MAX {
            return Err(("lost_acks", format!("must be at most {LOST_ACKS_MAX}")));
        }
        let atms: u64 = self.atms.iter().map(|atm| u64::from(atm.count)).sum();
        if atms == 0 || atms > u64::from(ATMS_MAX) {
            return Err((
                "atms",
                format!("must start 1 to {ATMS_MAX} ATMs in all (got {atms})"),
            ));
        }
        if self.operations() > OPERATIONS_MAX {
            return Err((
                "script",
                format!(
                    "sends {} operations per mode; at most {OPERATIONS_MAX}",
                    self.operations()
                ),
            ));
        }
        Ok(())
    }

    /// The accounts, each once and well formed; returns their ids.
    fn validate_accounts(&self) -> Result<BTreeSet<&str>, (&'static str, String)> {
        if self.accounts.is_empty() || self.accounts.len() > ACCOUNTS_MAX {
            return Err((
                "accounts",
                format!("must list 1 to {ACCOUNTS_MAX} accounts"),
            ));
        }
        let mut known = BTreeSet::new();
        for account in &self.accounts {
            AccountId::parse("id", &account.id).map_err(|e| ("accounts", e.to_string()))?;
            parse_opening_balance("opening_cents", account.opening_cents)
                .map_err(|e| ("accounts", e.to_string()))?;
            if !known.insert(account.id.as_str()) {
                return Err(("accounts", format!("lists {} twice", account.id)));
            }
        }
        Ok(known)
    }

    /// Each ATM's start, replica and steps.
    fn validate_atms(&self, known: &BTreeSet<&str>) -> Result<(), (&'static str, String)> {
        let replicas = self.replicas.as_ref().map_or(0, |r| r.count);
        for atm in &self.atms {
            if atm.start_ms > START_MS_MAX {
                return Err((
                    "start_ms",
                    format!("ATM {}: must be at most {START_MS_MAX}", atm.name),
                ));
            }
            match atm.replica {
                Some(_) if self.replicas.is_none() => {
                    return Err((
                        "replica",
                        format!(
                            "ATM {}: names a replica, but the scenario has no [replicas]",
                            atm.name
                        ),
                    ));
                }
                Some(n) if n >= replicas => {
                    return Err((
                        "replica",
                        format!(
                            "ATM {} calls replica {n}, but the scenario starts {replicas} (numbered from 0)",
                            atm.name
                        ),
                    ));
                }
                _ => {}
            }
            for step in &atm.script {
                step.validate(known)
                    .map_err(|message| ("script", format!("ATM {}: {message}", atm.name)))?;
            }
        }
        Ok(())
    }

    /// The expectations' sections and the accounts they name.
    fn validate_expectations(&self, known: &BTreeSet<&str>) -> Result<(), (&'static str, String)> {
        let runs = self.replicas.as_ref().map_or(&[][..], |r| &r.runs[..]);
        for (key, expect) in &self.expect {
            if !matches!(
                key.as_str(),
                "unsafe" | "mutex" | "cas" | "actor" | "safe" | "all"
            ) && !runs.contains(key)
            {
                return Err((
                    "expect",
                    format!(
                        "unknown section [expect.{key}]; use unsafe, mutex, cas, actor, safe, all or a run in replicas.runs"
                    ),
                ));
            }
            if let Some(account) = expect.balances.keys().find(|a| !known.contains(a.as_str())) {
                return Err((
                    "balances",
                    format!("[expect.{key}] names unknown account {account}"),
                ));
            }
        }
        Ok(())
    }
}

impl Scenario {
    fn validate_replicas(&self) -> Result<(), (&'static str, String)> {
        let Some(replicas) = &self.replicas else {
            return Ok(());
        };
        if !(2..=REPLICAS_MAX).contains(&replicas.count) {
            return Err((
                "count",
                format!(
                    "replicas.count must be 2 to {REPLICAS_MAX} (got {})",
                    replicas.count
                ),
            ));
        }
        if let Some(ttl) = replicas.lease_ttl_ms
            && !(10..=LEASE_TTL_MS_MAX).contains(&ttl)
        {
            return Err((
                "lease_ttl_ms",
                format!("must be 10 to {LEASE_TTL_MS_MAX} (got {ttl})"),
            ));
        }
        if replicas.race_window_ms.len() > replicas.count as usize {
            return Err((
                "race_window_ms",
                format!(
                    "replicas.race_window_ms lists {} windows for {} replicas",
                    replicas.race_window_ms.len(),
                    replicas.count
                ),
            ));
        }
        for [min, max] in &replicas.race_window_ms {
            overdraft_server::config::check_race_window(*min, *max)
                .map_err(|e| ("race_window_ms", e))?;
        }
        if replicas.runs.is_empty() {
            return Err(("runs", "replicas.runs must list at least one run".into()));
        }
        if !self.modes.is_empty() {
            return Err((
                "modes",
                "a scenario over replicas lists its runs in replicas.runs, not modes".into(),
            ));
        }
        if self.crash.is_some() || self.lost_acks > 0 || self.slow_owner_ms > 0 {
            return Err((
                "replicas",
                "replicas do not combine with crash, lost_acks or slow_owner_ms yet".into(),
            ));
        }
        for text in &replicas.runs {
            Run::parse(text).map_err(|e| ("runs", e))?;
        }
        Ok(())
    }
}

impl Step {
    fn validate(&self, known: &BTreeSet<&str>) -> Result<(), String> {
        let account = |field: &str, value: &Option<String>| -> Result<(), String> {
            match value {
                Some(id) if known.contains(id.as_str()) => Ok(()),
                Some(id) => Err(format!("{field} {id} is not in [[accounts]]")),
                None => Err(format!("a {:?} step needs {field}", self.op).to_lowercase()),
            }
        };
        match self.op {
            Operation::Deposit | Operation::Withdraw | Operation::Balance => {
                account("account", &self.account)?
            }
            Operation::Transfer => {
                account("from", &self.from)?;
                account("to", &self.to)?;
                if self.from == self.to {
                    return Err("a transfer's from and to must differ".into());
                }
            }
        }
        if let Some(joint) = &self.joint {
            if self.op != Operation::Withdraw {
                return Err("joint belongs to a withdraw step".into());
            }
            account("joint", &self.joint)?;
            if Some(joint) == self.account.as_ref() {
                return Err("a withdrawal's joint account must differ from its account".into());
            }
        }
        if self.op != Operation::Balance {
            let amount = self
                .amount_cents
                .ok_or_else(|| format!("a {:?} step needs amount_cents", self.op).to_lowercase())?;
            parse_amount("amount_cents", amount).map_err(|e| e.to_string())?;
        }
        if self
            .timeout_ms
            .is_some_and(|t| t == 0 || t > STEP_TIMEOUT_MS_MAX)
        {
            return Err(format!(
                "timeout_ms must be between 1 and {STEP_TIMEOUT_MS_MAX}"
            ));
        }
        if self.retries > STEP_RETRIES_MAX {
            return Err(format!("retries must be at most {STEP_RETRIES_MAX}"));
        }
        if let Some(id) = &self.request_id
            && id != "auto"
            && id != "none"
            && overdraft_server::bank::RequestId::parse_optional(id).is_err()
        {
            return Err(format!(
                "request_id {id:?} must be \"auto\", \"none\" or printable ASCII of at most 128 bytes"
            ));
        }
        Ok(())
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |newline| before.len() - newline - 1)
        + 1;
    (line, column)
}

/// Where `field` first appears as a key in `text`, for errors found after parsing.
fn locate(text: &str, field: &str) -> (usize, usize) {
    text.match_indices(field)
        .find(|(offset, _)| {
            let rest = &text[offset + field.len()..];
            let trimmed = rest.trim_start_matches([' ', '\t', ']']);
            trimmed.starts_with('=') || rest.starts_with(']')
        })
        .map_or((0, 0), |(offset, _)| line_column(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in parses and validates.
    #[test]
    fn every_builtin_parses() {
        for (name, text) in BUILTIN {
            let scenario = Scenario::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&scenario.name, name);
        }
    }

    /// A malformed file names the line and the field.
    #[test]
    fn malformed_file_names_line_and_field() {
        let text = "name = \"x\"\naccounts = [{ id = \"a\", opening_cents = 1 }]\n\n[[atms]]\nname = \"atm\"\nscript = [{ op = \"withdraw\", account = \"a\", amount_cent = 5 }]\n";
        let error = Scenario::parse("bad.toml", text).unwrap_err();
        assert_eq!(error.line, 6, "{error}");
        assert!(error.message.contains("amount_cent"), "{error}");

        let text = "name = \"x\"\nrace_window_ms = [9, 3]\naccounts = [{ id = \"a\", opening_cents = 1 }]\n[[atms]]\nname = \"atm\"\nscript = [{ op = \"deposit\", account = \"a\", amount_cents = 5 }]\n";
        let error = Scenario::parse("bad.toml", text).unwrap_err();
        assert_eq!(error.line, 2, "{error}");
        assert!(error.message.starts_with("race_window_ms"), "{error}");
    }

    /// A scenario over replicas that breaks a rule is refused, naming the
    /// field; the built-in it was made from passes.
    #[test]
    fn bad_replica_settings_name_the_field() {
        let good = "name = \"x\"\naccounts = [{ id = \"a\", opening_cents = 1 }, { id = \"b\", opening_cents = 1 }]\n[replicas]\ncount = 2\nruns = [\"mutex/database\", \"actor/fenced\", \"unsafe/serializable\"]\n[[atms]]\nname = \"atm\"\nreplica = 1\nscript = [{ op = \"withdraw\", account = \"a\", joint = \"b\", amount_cents = 5 }]\n";
        let scenario = Scenario::parse("good.toml", good).unwrap_or_else(|e| panic!("{e}"));
        let labels: Vec<String> = scenario.runs().iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            ["mutex/database", "actor/fenced", "unsafe/serializable"]
        );
        for (from, to, field) in [
            ("count = 2", "count = 1", "count"),
            ("count = 2", "count = 9", "count"),
            ("\"mutex/database\"", "\"mutex/global\"", "runs"),
            ("\"mutex/database\"", "\"cas/fenced\"", "runs"),
            ("\"actor/fenced\"", "\"actor/process\"", "runs"),
            ("\"mutex/database\"", "\"optimistic\"", "runs"),
            ("replica = 1", "replica = 2", "replica"),
            ("joint = \"b\"", "joint = \"a\"", "script"),
            ("joint = \"b\"", "joint = \"nobody\"", "script"),
            ("op = \"withdraw\"", "op = \"deposit\"", "script"),
            ("count = 2", "count = 2\nlease_ttl_ms = 5", "lease_ttl_ms"),
            (
                "count = 2",
                "count = 2\nrace_window_ms = [[1, 2], [3, 4], [5, 6]]",
                "race_window_ms",
            ),
            ("[replicas]", "modes = [\"cas\"]\n[replicas]", "modes"),
            (
                "[replicas]\ncount = 2\nruns = [\"mutex/database\", \"actor/fenced\", \"unsafe/serializable\"]\n",
                "",
                "replica",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let text = good.replacen(from, to, 1);
            let error = Scenario::parse("bad.toml", &text).unwrap_err();
            assert!(
                error.message.starts_with(field),
                "{to:?}: expected an error naming {field}, got {error}"
            );
        }
    }
}
