//! Reading histories back: one or more files (ATMs on several machines)
//! merged into one [`Run`] on one clock, each line validated with the file,
//! the line and the field named when it is wrong.
//!
//! Operations are kept compact (80 bytes each, strings in one arena)
//! because a run of ten million operations must be checked in under 2 GB.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::Path,
};

use serde::Deserialize;

use crate::format::{Header, KIND, Operation, Outcome, Policy, SCHEMA};

/// Longest line accepted: a history line is a few hundred bytes; a line
/// this long is not a history and must not be buffered whole.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// Most distinct `code` values: gRPC has 17 codes; room for other names.
const CODES_MAX: usize = 256;

/// Most files merged into one run.
pub const FILES_MAX: usize = 4_096;

/// Why a history could not be read: the file, the line and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {field}{rule}")]
pub struct ReadError {
    /// The file.
    pub file: String,
    /// 1-based line number (0: the file as a whole).
    pub line: u64,
    /// The field at fault, as `field `name`: `, or empty.
    pub field: String,
    /// What is wrong.
    pub rule: String,
}

impl ReadError {
    fn new(file: &str, line: u64, field: Option<&str>, rule: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            field: field.map_or_else(String::new, |f| format!("field `{f}`: ")),
            rule: rule.into(),
        }
    }
}

/// Strings stored once, end to end, and named by index.
#[derive(Debug, Default, Clone)]
pub struct Strings {
    bytes: String,
    /// Where each string ends in `bytes`: u32, which bounds the arena at
    /// 4 GiB (a history that needs more is refused when read).
    ends: Vec<u32>,
}

/// An index into [`Strings`].
pub type Sym = u32;

/// The sentinel for "no string".
pub const NO_SYM: Sym = u32::MAX;

impl Strings {
    /// Stores `text`, returning its index, or None when the arena is full.
    pub fn push(&mut self, text: &str) -> Option<Sym> {
        let end = u32::try_from(self.bytes.len() + text.len()).ok()?;
        let sym = u32::try_from(self.ends.len())
            .ok()
            .filter(|&s| s < NO_SYM)?;
        self.bytes.push_str(text);
        self.ends.push(end);
        Some(sym)
    }

    /// The string at `sym` ("" for [`NO_SYM`]).
    pub fn get(&self, sym: Sym) -> &str {
        let Ok(index) = usize::try_from(sym) else {
            return "";
        };
        if sym == NO_SYM || index >= self.ends.len() {
            return "";
        }
        let at = |i: usize| usize::try_from(self.ends[i]).unwrap_or(usize::MAX);
        let start = if index == 0 { 0 } else { at(index - 1) };
        self.bytes.get(start..at(index)).unwrap_or("")
    }
}

/// An account's index in [`Run::accounts`].
pub type AccountIx = u32;

/// No value (the history line did not carry it).
const ABSENT_I64: i64 = i64::MIN;
const ABSENT_U64: u64 = u64::MAX;

/// One operation of the merged run. Absent values are sentinels inside and
/// `Option`s through the accessors.
#[derive(Clone, Debug)]
pub struct Op {
    /// The ATM that sent it (index into [`Run::atms`]), or None for a final read.
    atm: u32,
    /// What it asked.
    pub operation: Operation,
    /// What the ATM knows of its fate.
    pub outcome: Outcome,
    /// The account (a transfer's `from`).
    pub account: AccountIx,
    /// A transfer's `to` account, or a joint withdrawal's household account.
    second: AccountIx,
    /// The amount (0 for a balance read).
    pub amount_cents: i64,
    /// When it started, ns on the run's clock.
    pub invoke_ns: u64,
    /// When its reply came, ns on the run's clock.
    pub complete_ns: u64,
    balance_cents: i64,
    version: u64,
    /// A transfer's reply for its `to` account: an index into
    /// [`Run::to_replies`] (NONE otherwise), so that the 85% of operations
    /// that are not transfers do not carry 16 empty bytes each.
    to_reply: u32,
    /// The overdraft fee a debit paid; i32 because fees are bounded far
    /// below it (a longer one is refused when read).
    fee_cents: i32,
    request_id: Sym,
    intent: Sym,
    /// Index into [`Run::codes`] (u16::MAX: none).
    code: u16,
    /// The reply was the replay of an earlier application.
    pub replayed: bool,
    /// A read taken after every ATM stopped.
    pub final_read: bool,
    /// Which file it came from (index into [`Run::files`]).
    pub file: u16,
    /// Its line in that file.
    pub line: u32,
}

impl Op {
    /// The ATM (index into [`Run::atms`]); None for a final read.
    pub fn atm(&self) -> Option<u32> {
        (self.atm != u32::MAX).then_some(self.atm)
    }

    /// A transfer's destination.
    pub fn to_account(&self) -> Option<AccountIx> {
        (self.operation == Operation::Transfer && self.second != u32::MAX).then_some(self.second)
    }

    /// A joint withdrawal's household account: the withdrawal may take its
    /// own account below the floor as long as the two together stay above.
    pub fn joint_account(&self) -> Option<AccountIx> {
        (self.operation == Operation::Withdraw && self.second != u32::MAX).then_some(self.second)
    }

    /// The balance returned (a transfer's `from`).
    pub fn balance_cents(&self) -> Option<i64> {
        (self.balance_cents != ABSENT_I64).then_some(self.balance_cents)
    }

    /// The version returned (a transfer's `from`).
    pub fn version(&self) -> Option<u64> {
        (self.version != ABSENT_U64).then_some(self.version)
    }

    /// The request_id symbol, if it carried one.
    pub fn request_id(&self) -> Option<Sym> {
        (self.request_id != NO_SYM).then_some(self.request_id)
    }

    /// The intent symbol, if any.
    pub fn intent(&self) -> Option<Sym> {
        (self.intent != NO_SYM).then_some(self.intent)
    }

    /// The overdraft fee a debit (withdrawal, transfer) paid (0 when none or not reported).
    pub fn fee_cents(&self) -> i64 {
        i64::from(self.fee_cents)
    }

    /// The accounts it touches with the change it means to make to each:
    /// its legs. A withdrawal's fee is part of its debit.
    pub fn legs(&self) -> impl Iterator<Item = (AccountIx, i64)> + '_ {
        let amount = self.amount_cents;
        let first = match self.operation {
            Operation::Deposit => Some((self.account, amount)),
            Operation::Withdraw | Operation::Transfer => {
                Some((self.account, -amount.saturating_add(self.fee_cents())))
            }
            Operation::Balance => None,
        };
        let second = self.to_account().map(|to| (to, amount));
        first.into_iter().chain(second)
    }
}

/// A merged run: every file's operations on one clock.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The files read, in order.
    pub files: Vec<String>,
    /// Each format-2 file's header.
    pub headers: Vec<Header>,
    /// The mode, when a header stated it.
    pub mode: Option<String>,
    /// The overdraft policy (reject when no header says otherwise).
    pub policy: Policy,
    /// The seed, when a header stated it.
    pub seed: Option<u64>,
    /// Wall clock at the run's time zero, ns since the Unix epoch.
    pub wall_unix_ns_at_zero: Option<u64>,
    /// Account names, by index.
    pub accounts: Vec<String>,
    /// Opening balance per account, when an `open` line gave it.
    pub openings: Vec<Option<i64>>,
    /// ATM names, by index.
    pub atms: Vec<String>,
    /// The operations, in file then line order.
    pub ops: Vec<Op>,
    /// Request ids, intents and codes.
    pub strings: Strings,
    /// Transfers' replies for their `to` account: (balance, version), absent as sentinels.
    to_replies: Vec<(i64, u64)>,
    /// The gRPC code names seen, by index.
    codes: Vec<String>,
    account_index: HashMap<String, AccountIx>,
}

impl Run {
    /// The gRPC code name of a failed operation.
    pub fn code(&self, op: &Op) -> Option<&str> {
        self.codes.get(usize::from(op.code)).map(String::as_str)
    }

    /// A transfer's `to` balance.
    pub fn to_balance_cents(&self, op: &Op) -> Option<i64> {
        self.to_reply(op)
            .map(|(balance, _)| balance)
            .filter(|&b| b != ABSENT_I64)
    }

    /// A transfer's `to` version.
    pub fn to_version(&self, op: &Op) -> Option<u64> {
        self.to_reply(op)
            .map(|(_, version)| version)
            .filter(|&v| v != ABSENT_U64)
    }

    fn to_reply(&self, op: &Op) -> Option<(i64, u64)> {
        usize::try_from(op.to_reply)
            .ok()
            .and_then(|index| self.to_replies.get(index))
            .copied()
    }

    /// The state `op`'s reply reported for `account` (balance, version).
    pub fn returned(&self, op: &Op, account: AccountIx) -> Option<(i64, Option<u64>)> {
        if op.to_account() == Some(account) {
            self.to_balance_cents(op).map(|b| (b, self.to_version(op)))
        } else if op.account == account {
            op.balance_cents().map(|b| (b, op.version()))
        } else {
            None
        }
    }

    /// The account's name.
    pub fn account_name(&self, account: AccountIx) -> &str {
        usize::try_from(account)
            .ok()
            .and_then(|index| self.accounts.get(index))
            .map_or("?", String::as_str)
    }

    /// The ATM's name ("final read" for the reads after the run).
    pub fn atm_name(&self, op: &Op) -> &str {
        op.atm()
            .and_then(|atm| usize::try_from(atm).ok())
            .and_then(|index| self.atms.get(index))
            .map_or("final read", String::as_str)
    }

    /// The op's request_id, or "".
    pub fn request_id(&self, op: &Op) -> &str {
        op.request_id().map_or("", |sym| self.strings.get(sym))
    }

    /// A name for the op in findings: its request_id, or `FILE:LINE` (the
    /// file's name without its folder).
    pub fn label(&self, op: &Op) -> String {
        match op.request_id() {
            Some(sym) => self.strings.get(sym).to_owned(),
            None => {
                let file = self
                    .files
                    .get(usize::from(op.file))
                    .map_or("?", String::as_str);
                let name = Path::new(file)
                    .file_name()
                    .map_or_else(|| file.into(), |n| n.to_string_lossy());
                format!("{name}:{}", op.line)
            }
        }
    }

    fn account(&mut self, name: &str) -> AccountIx {
        if let Some(index) = self.account_index.get(name) {
            return *index;
        }
        let index = u32::try_from(self.accounts.len()).unwrap_or(u32::MAX - 1);
        self.accounts.push(name.to_owned());
        self.openings.push(None);
        self.account_index.insert(name.to_owned(), index);
        index
    }
}

/// Every field any line may carry; which ones a line has says what it is.
#[derive(Deserialize)]
struct RawLine<'a> {
    schema: Option<u32>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    atm: Option<u32>,
    #[serde(borrow)]
    atm_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    from_account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to_account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    joint_account_id: Option<Cow<'a, str>>,
    amount_cents: Option<i64>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    intent: Option<Cow<'a, str>>,
    invoke_ns: Option<u64>,
    complete_ns: Option<u64>,
    outcome: Option<Outcome>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    balance_cents: Option<i64>,
    version: Option<u64>,
    to_balance_cents: Option<i64>,
    to_version: Option<u64>,
    fee_cents: Option<i64>,
    #[serde(default)]
    replayed: bool,
    #[serde(default, rename = "final")]
    final_read: bool,
}

/// Reads and merges `paths` into one run.
pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<Run, ReadError> {
    if paths.is_empty() {
        return Err(ReadError::new("", 0, None, "no history file given"));
    }
    if paths.len() > FILES_MAX {
        return Err(ReadError::new(
            "",
            0,
            None,
            format!(
                "{} files given; at most {FILES_MAX} merge into one run",
                paths.len()
            ),
        ));
    }
    let mut run = Run::default();
    let mut offsets = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let name = path.as_ref().display().to_string();
        let file = File::open(path.as_ref())
            .map_err(|e| ReadError::new(&name, 0, None, format!("cannot open: {e}")))?;
        let file_index = u16::try_from(index).unwrap_or(u16::MAX);
        run.files.push(name.clone());
        read_one(
            &mut run,
            &name,
            file_index,
            BufReader::new(file),
            &mut offsets,
        )?;
    }
    shift_to_one_clock(&mut run, &offsets);
    Ok(run)
}

/// Reads one history from `reader` (named `name` in errors).
pub fn read_reader(name: &str, reader: impl Read) -> Result<Run, ReadError> {
    let mut run = Run::default();
    let mut offsets = Vec::new();
    run.files.push(name.to_owned());
    read_one(&mut run, name, 0, BufReader::new(reader), &mut offsets)?;
    shift_to_one_clock(&mut run, &offsets);
    Ok(run)
}

/// Each file's ops carry its own time zero; the merged clock starts at the
/// earliest file's, so every file is shifted by how much later it started.
fn shift_to_one_clock(run: &mut Run, offsets: &[(u16, u64)]) {
    let Some(base) = offsets.iter().map(|(_, zero)| *zero).min() else {
        return;
    };
    run.wall_unix_ns_at_zero = Some(base);
    if offsets.iter().all(|(_, zero)| *zero == base) {
        return;
    }
    let shift: HashMap<u16, u64> = offsets.iter().map(|(f, zero)| (*f, zero - base)).collect();
    for op in &mut run.ops {
        if let Some(by) = shift.get(&op.file) {
            op.invoke_ns = op.invoke_ns.saturating_add(*by);
            op.complete_ns = op.complete_ns.saturating_add(*by);
        }
    }
}

fn read_one(
    run: &mut Run,
    name: &str,
    file: u16,
    mut reader: impl BufRead,
    offsets: &mut Vec<(u16, u64)>,
) -> Result<(), ReadError> {
    let mut buffer = Vec::new();
    let mut line_number = 0u64;
    let mut atms: HashMap<u32, u32> = HashMap::new();
    loop {
        buffer.clear();
        let read = reader
            .by_ref()
            .take(u64::try_from(LINE_BYTES_MAX + 1).unwrap_or(u64::MAX))
            .read_until(b'\n', &mut buffer)
            .map_err(|e| {
                ReadError::new(name, line_number + 1, None, format!("read failed: {e}"))
            })?;
        if read == 0 {
            return Ok(());
        }
        line_number += 1;
        if buffer.len() > LINE_BYTES_MAX {
            return Err(ReadError::new(
                name,
                line_number,
                None,
                format!("line longer than {LINE_BYTES_MAX} bytes"),
            ));
        }
        let text = trim(&buffer);
        if text.is_empty() {
            continue;
        }
        let raw: RawLine<'_> = serde_json::from_slice(text).map_err(|e| {
            ReadError::new(name, line_number, None, format!("not a history line: {e}"))
        })?;
        let at = Place {
            name,
            file,
            line: line_number,
        };
        if raw.schema.is_some() {
            if offsets.iter().any(|(f, _)| *f == file) {
                return Err(at.error(Some("schema"), "one header per file, on its first line"));
            }
            let header = read_header(text, &at)?;
            offsets.push((file, header.wall_unix_ns_at_zero));
            merge_header(run, header, &at)?;
            continue;
        }
        match raw.op.as_deref() {
            Some("open") => read_open(run, &raw, &at)?,
            Some(_) => {
                let op = read_op(run, raw, &at, &mut atms)?;
                run.ops.push(op);
            }
            None => return Err(at.error(Some("op"), "missing")),
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &bytes[..end]
}

struct Place<'a> {
    name: &'a str,
    file: u16,
    line: u64,
}

impl Place<'_> {
    fn error(&self, field: Option<&str>, rule: impl Into<String>) -> ReadError {
        ReadError::new(self.name, self.line, field, rule)
    }
}

fn read_header(text: &[u8], at: &Place<'_>) -> Result<Header, ReadError> {
    let header: Header = serde_json::from_slice(text)
        .map_err(|e| at.error(None, format!("not a history header: {e}")))?;
    if header.schema != SCHEMA {
        return Err(at.error(
            Some("schema"),
            format!(
                "{} is not a schema this checker reads (1 or {SCHEMA})",
                header.schema
            ),
        ));
    }
    if header.kind != KIND {
        return Err(at.error(Some("kind"), format!("must be \"{KIND}\"")));
    }
    if let Policy::Fee {
        fee_cents,
        floor_cents,
    } = header.overdraft
        && (fee_cents < 0 || floor_cents > 0)
    {
        return Err(at.error(
            Some("overdraft"),
            "fee_cents must be zero or more and floor_cents zero or less",
        ));
    }
    Ok(header)
}

fn merge_header(run: &mut Run, header: Header, at: &Place<'_>) -> Result<(), ReadError> {
    if let Some(first) = run.headers.first() {
        if first.overdraft != header.overdraft {
            return Err(at.error(
                Some("overdraft"),
                format!(
                    "differs from {}'s: files of one run share one ledger policy",
                    run.files[0]
                ),
            ));
        }
        if first.mode != header.mode {
            return Err(at.error(
                Some("mode"),
                format!(
                    "{} differs from {}'s {}: files of one run share one ledger mode",
                    header.mode, run.files[0], first.mode
                ),
            ));
        }
    } else {
        run.policy = header.overdraft;
        run.mode = Some(header.mode.clone()).filter(|m| m != "unknown");
        run.seed = Some(header.seed);
    }
    run.headers.push(header);
    Ok(())
}

fn read_open(run: &mut Run, raw: &RawLine<'_>, at: &Place<'_>) -> Result<(), ReadError> {
    let account = raw
        .account_id
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| at.error(Some("account_id"), "an open line names its account"))?;
    let balance = raw
        .balance_cents
        .ok_or_else(|| at.error(Some("balance_cents"), "an open line gives the balance"))?;
    if raw.version.is_some_and(|v| v != 0) {
        return Err(at.error(
            Some("version"),
            "must be 0: a run starts from accounts as opened (Reset or OpenAccount)",
        ));
    }
    let index = run.account(account);
    let slot = &mut run.openings[usize::try_from(index).unwrap_or(usize::MAX)];
    match slot {
        Some(previous) if *previous != balance => Err(at.error(
            Some("balance_cents"),
            format!("{account} was opened before with {previous} cents"),
        )),
        _ => {
            *slot = Some(balance);
            Ok(())
        }
    }
}

fn read_op(
    run: &mut Run,
    raw: RawLine<'_>,
    at: &Place<'_>,
    atms: &mut HashMap<u32, u32>,
) -> Result<Op, ReadError> {
    let op_name = raw.op.as_deref().unwrap_or_default();
    let operation = Operation::parse(op_name).ok_or_else(|| {
        at.error(
            Some("op"),
            format!("{op_name:?} is not open, deposit, withdraw, transfer or balance"),
        )
    })?;
    let outcome = raw
        .outcome
        .ok_or_else(|| at.error(Some("outcome"), "missing (ok, fail or unknown)"))?;
    let (account, second) = read_accounts(run, &raw, operation, at)?;
    let amount_cents = match operation {
        Operation::Balance => 0,
        _ => match raw.amount_cents {
            Some(amount) if amount > 0 => amount,
            Some(_) => return Err(at.error(Some("amount_cents"), "must be positive")),
            None => return Err(at.error(Some("amount_cents"), "missing")),
        },
    };
    let (invoke_ns, complete_ns) = match (raw.invoke_ns, raw.complete_ns) {
        (Some(invoke), Some(complete)) if complete >= invoke => (invoke, complete),
        (Some(_), Some(_)) => {
            return Err(at.error(Some("complete_ns"), "must not be before invoke_ns"));
        }
        (None, _) => return Err(at.error(Some("invoke_ns"), "missing")),
        (_, None) => return Err(at.error(Some("complete_ns"), "missing")),
    };
    if outcome == Outcome::Ok && raw.version.is_some() && raw.balance_cents.is_none() {
        return Err(at.error(Some("balance_cents"), "a version comes with its balance"));
    }
    let atm = if raw.final_read {
        u32::MAX
    } else {
        let atm = raw
            .atm
            .ok_or_else(|| at.error(Some("atm"), "missing (only final reads have none)"))?;
        let next = u32::try_from(run.atms.len()).unwrap_or(u32::MAX - 1);
        *atms.entry(atm).or_insert_with(|| {
            let label = raw.atm_name.as_deref().map_or_else(
                || {
                    if at.file == 0 {
                        format!("atm {atm}")
                    } else {
                        format!("atm {atm} ({})", at.name)
                    }
                },
                str::to_owned,
            );
            run.atms.push(label);
            next
        })
    };
    let fee = raw.fee_cents.unwrap_or(0);
    if fee < 0 {
        return Err(at.error(Some("fee_cents"), "must be zero or more"));
    }
    let fee_cents = i32::try_from(fee)
        .map_err(|_| at.error(Some("fee_cents"), "larger than any fee the ledger charges"))?;
    let code = match raw.code.as_deref().filter(|c| !c.is_empty()) {
        None => u16::MAX,
        Some(name) => match run.codes.iter().position(|c| c == name) {
            Some(index) => u16::try_from(index).unwrap_or(u16::MAX),
            None if run.codes.len() < CODES_MAX => {
                run.codes.push(name.to_owned());
                u16::try_from(run.codes.len() - 1).unwrap_or(u16::MAX)
            }
            None => {
                return Err(at.error(
                    Some("code"),
                    format!("more than {CODES_MAX} distinct codes: not gRPC code names"),
                ));
            }
        },
    };
    let to_reply = if raw.to_balance_cents.is_some() || raw.to_version.is_some() {
        run.to_replies.push((
            raw.to_balance_cents.unwrap_or(ABSENT_I64),
            raw.to_version.unwrap_or(ABSENT_U64),
        ));
        u32::try_from(run.to_replies.len() - 1).unwrap_or(u32::MAX)
    } else {
        u32::MAX
    };
    let mut sym = |field: &str, text: Option<Cow<'_, str>>| match text.as_deref() {
        Some(t) if !t.is_empty() => run.strings.push(t).ok_or_else(|| {
            at.error(
                Some(field),
                "the run's request ids and intents pass 4 GiB: split it",
            )
        }),
        _ => Ok(NO_SYM),
    };
    let request_id = sym("request_id", raw.request_id)?;
    let intent = sym("intent", raw.intent)?;
    Ok(Op {
        atm,
        operation,
        outcome,
        account,
        second: second.unwrap_or(u32::MAX),
        amount_cents,
        invoke_ns,
        complete_ns,
        balance_cents: raw.balance_cents.unwrap_or(ABSENT_I64),
        version: raw.version.unwrap_or(ABSENT_U64),
        to_reply,
        fee_cents,
        request_id,
        intent,
        code,
        replayed: raw.replayed,
        final_read: raw.final_read,
        file: at.file,
        line: u32::try_from(at.line).unwrap_or(u32::MAX),
    })
}

fn read_accounts(
    run: &mut Run,
    raw: &RawLine<'_>,
    operation: Operation,
    at: &Place<'_>,
) -> Result<(AccountIx, Option<AccountIx>), ReadError> {
    let named = |field: &'static str, value: &Option<Cow<'_, str>>| {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| at.error(Some(field), format!("a {operation} names it")))
    };
    if operation == Operation::Transfer {
        if raw
            .joint_account_id
            .as_deref()
            .is_some_and(|v| !v.is_empty())
        {
            return Err(at.error(Some("joint_account_id"), "only a withdraw has one"));
        }
        let from = named("from_account_id", &raw.from_account_id)?;
        let to = named("to_account_id", &raw.to_account_id)?;
        if from == to {
            return Err(at.error(Some("to_account_id"), "must differ from from_account_id"));
        }
        Ok((run.account(&from), Some(run.account(&to))))
    } else {
        let account = named("account_id", &raw.account_id)?;
        let joint = match raw.joint_account_id.as_deref().filter(|v| !v.is_empty()) {
            None => None,
            Some(_) if operation != Operation::Withdraw => {
                return Err(at.error(Some("joint_account_id"), "only a withdraw has one"));
            }
            Some(joint) if joint == account => {
                return Err(at.error(Some("joint_account_id"), "must differ from account_id"));
            }
            Some(joint) => Some(joint),
        };
        let account = run.account(&account);
        Ok((account, joint.map(|joint| run.account(joint))))
    }
}
