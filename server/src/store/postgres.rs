//! PostgreSQL: the store several ledger processes share. Every `ledger
//! --store postgres` on one database is a replica of one ledger: the
//! accounts, the journal and the idempotency table are rows there, and a
//! commit is one transaction.
//!
//! The guards become SQL a reader recognises: a blind write sets the balance
//! whatever the row holds (an upsert), a version guard adds `AND version = $v` and counts the rows,
//! an opening is `INSERT ... ON CONFLICT DO NOTHING`. A request id is the
//! primary key of `requests`, so a retry that reaches another replica finds
//! the first reply (or waits for the transaction writing it, then finds it).
//!
//! The journal's `seq` is an identity column assigned inside the commit,
//! after the account rows are locked by their UPDATE: two commits on one
//! account therefore take seqs in the order they commit, which is the order
//! the audit reads them in.

use std::{ops::ControlFlow, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, error::SqlState};

use super::{
    Commit, Guard, Lease, Leases, LockWait, Rejected, Store, StoreError, StoreTx, Write,
    decode_record, encode_record, now_unix_ns,
};
use crate::{
    bank::{Account, AccountId, RequestId},
    config::Isolation,
    journal::{JournalEntry, RequestRecord},
};

/// Connections each replica keeps to the database. Every operation holds one
/// for its commit's few statements; more only queue in PostgreSQL.
pub const POOL_SIZE_DEFAULT: usize = 16;

/// Longest wait for a new connection to the database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a row lock in a commit (a database mutex's own wait,
/// `--lock-wait-ms`, overrides it inside its transaction).
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a transaction may sit idle before PostgreSQL ends it and its
/// session: a paused or vanished replica's locks are freed after this.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a pooled connection before the operation fails.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Tries of a commit that PostgreSQL aborted as a serialization failure
/// (40001) or a deadlock (40P01). The commit's guards are checked again at
/// each try, so a retry writes only what is still true.
const COMMIT_TRIES_MAX: u32 = 8;

/// The schema, in order. Each step runs once per database, in a transaction
/// that holds an advisory lock, so replicas starting together apply it once.
/// (refinery and sqlx's migrators do not serialise concurrent runners.)
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "accounts, journal, requests",
        "CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        balance_cents BIGINT NOT NULL,
        version BIGINT NOT NULL,
        fence BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE journal (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        replica TEXT NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT,
        entry BYTEA NOT NULL
    );
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        record BYTEA NOT NULL
    );",
    ),
    (
        2,
        "owner leases",
        // Survives Reset: ownership is about replicas, not balances, and a
        // lease cleared under an owner would let a second owner in unfenced.
        "CREATE SEQUENCE lease_tokens;
    CREATE TABLE leases (
        account_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        address TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );",
    ),
];

/// Journal rows read per page by a whole-journal scan: the memory a scan holds.
const SCAN_PAGE_ROWS: i64 = 2_000;

/// The advisory lock key the migrations run under ("overdraft" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f76_6572_6472_6166;

/// A ledger's state in PostgreSQL.
pub struct PostgresStore {
    pool: Pool,
    /// Names this process in the journal rows it writes.
    replica: std::sync::Arc<str>,
    /// How each transaction begins (its isolation level).
    begin: &'static str,
    /// The runtime the pool's connections run on, for the whole-ledger reads
    /// that run on blocking threads.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("replica", &self.replica)
            .field("pool", &self.pool.status())
            .finish()
    }
}

fn pg(error: tokio_postgres::Error) -> StoreError {
    // A broken or closed connection is the database being away, not a
    // refusal: UNAVAILABLE, which a client may retry with its request_id.
    let broken = error.is_closed()
        || std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>());
    if broken {
        StoreError::Unavailable(describe(&error))
    } else {
        StoreError::Postgres(describe(&error))
    }
}

/// The server's own message when there is one: "duplicate key ..." rather
/// than "db error".
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            if let Some(source) = std::error::Error::source(error) {
                text.push_str(": ");
                text.push_str(&source.to_string());
            }
            text
        }
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg(error),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

/// Whether PostgreSQL aborted the transaction for a reason a retry may not meet.
fn retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
}

fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{value} does not fit a BIGINT"),
    })
}

fn to_u64(value: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{value} is negative"),
    })
}

fn account_from(row: &tokio_postgres::Row) -> Result<Account, StoreError> {
    Ok(Account {
        balance_cents: row.try_get(0).map_err(pg)?,
        version: to_u64(row.try_get(1).map_err(pg)?, "account version")?,
    })
}

/// A journal row (seq, entry, replica): the entry and who wrote it.
fn entry_from(row: &tokio_postgres::Row) -> Result<(JournalEntry, String), StoreError> {
    let seq: i64 = row.try_get(0).map_err(pg)?;
    let bytes: &[u8] = row.try_get(1).map_err(pg)?;
    let mut entry: JournalEntry = decode_record("journal entry", bytes)?;
    entry.seq = to_u64(seq, "journal seq")?;
    Ok((entry, row.try_get(2).map_err(pg)?))
}

impl PostgresStore {
    /// Connects to `url` (a libpq URL or key=value string), runs the
    /// migrations not yet applied, and names this process `replica` in the
    /// journal. Must run inside a tokio runtime.
    pub async fn connect(
        url: &str,
        replica: &str,
        pool_size: usize,
        isolation: Isolation,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("--database-url is not usable: {e}")))?;
        // Bounds on the database's side too: a replica stopped mid-transaction
        // (chaos pause, a frozen VM) must not hold its row locks for ever, and
        // a commit must not wait for ever on a row another holds.
        let options = format!(
            "{} -c lock_timeout={}ms -c idle_in_transaction_session_timeout={}ms",
            config.get_options().unwrap_or_default(),
            LOCK_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        config
            .options(options.trim())
            .connect_timeout(CONNECT_TIMEOUT);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot build the pool: {e}")))?;
        let store = Self {
            pool,
            replica: std::sync::Arc::from(replica),
            begin: isolation.begin_sql(),
            runtime: tokio::runtime::Handle::current(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations this database lacks, one transaction each,
    /// under an advisory lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg)?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await
            .map_err(pg)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(pg)?;
            tracing::info!(version, name, "applied a migration");
        }
        tx.commit().await.map_err(pg)
    }

    /// Runs `future` to completion on the pool's runtime. Only from a
    /// blocking thread: [`Store`]'s whole-ledger reads are called there
    /// (`spawn_blocking`), never on an async worker.
    fn block<T>(
        &self,
        future: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.runtime.block_on(future)
    }

    /// The journal (and, with `accounts`, every account after it) as of one
    /// moment: one read-only repeatable-read transaction, so that commits
    /// by other replicas meanwhile are neither half seen nor skipped (seqs
    /// are drawn before commit, so a later seq may commit first). A page at
    /// a time, the visitor outside the runtime: it may block (the export's
    /// bounded channel).
    fn snapshot_scan(
        &self,
        visit: &mut dyn FnMut(JournalEntry, &str) -> ControlFlow<()>,
        accounts: bool,
    ) -> Result<Vec<(AccountId, Account)>, StoreError> {
        let client = self.block(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg)?;
            Ok(client)
        })?;
        // Back to the pool only once COMMIT ended the transaction: any
        // other way out (an error, a visitor's panic) closes the connection.
        let held = Detached(Some(client));
        let connection = held.0.as_ref().expect("just set");
        let outcome = self.scan_pages(connection, visit, accounts);
        if outcome.is_ok() {
            self.block(async { connection.batch_execute("COMMIT").await.map_err(pg) })?;
            let mut held = held;
            drop(held.0.take());
        }
        outcome
    }

    fn scan_pages(
        &self,
        client: &deadpool_postgres::Object,
        visit: &mut dyn FnMut(JournalEntry, &str) -> ControlFlow<()>,
        accounts: bool,
    ) -> Result<Vec<(AccountId, Account)>, StoreError> {
        let mut after = 0_i64;
        loop {
            let page = self.block(async {
                let rows = client
                    .query(
                        "SELECT seq, entry, replica FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&after, &SCAN_PAGE_ROWS],
                    )
                    .await
                    .map_err(pg)?;
                rows.iter().map(entry_from).collect::<Result<Vec<_>, _>>()
            })?;
            let full = page.len() == usize::try_from(SCAN_PAGE_ROWS).unwrap_or(usize::MAX);
            if let Some((last, _)) = page.last() {
                after = i64::try_from(last.seq).unwrap_or(i64::MAX);
            }
            for (entry, replica) in page {
                if visit(entry, &replica).is_break() {
                    return Ok(Vec::new());
                }
            }
            if !full {
                break;
            }
        }
        if !accounts {
            return Ok(Vec::new());
        }
        self.block(all_accounts(client))
    }

    /// A connection with a transaction to be begun on it.
    async fn transaction(&self) -> Result<PgTx, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(PgTx {
            client: Some(client),
            replica: std::sync::Arc::clone(&self.replica),
            begin: self.begin,
            begun: false,
        })
    }
}

/// What a commit's pipelined statements said.
enum Written {
    /// Everything went in; the journal seq.
    Done(i64),
    /// The request id had a record: roll back, then read it.
    Duplicate,
    /// A guard did not hold for this write: roll back, then read the account.
    Conflict(AccountId),
}

/// The SQL for each guard: the lesson in one line each.
const SQL_BLIND: &str = "INSERT INTO accounts (id, balance_cents, version) VALUES ($1, $2, $3)
     ON CONFLICT (id) DO UPDATE SET balance_cents = EXCLUDED.balance_cents, version = EXCLUDED.version";
const SQL_VERSION: &str = "UPDATE accounts SET balance_cents = $2, version = $3
     WHERE id = $1 AND version = $4";
const SQL_FENCE: &str = "UPDATE accounts SET balance_cents = $2, version = $3, fence = $4
     WHERE id = $1 AND fence <= $4";
/// An account opened (by Reset, after a drop) starts fenced at its lease's
/// token, so a holder the lease passed from cannot write it either.
const SQL_ABSENT: &str = "INSERT INTO accounts (id, balance_cents, version, fence)
     VALUES ($1, $2, $3, coalesce((SELECT token FROM leases WHERE account_id = $1), 0))
     ON CONFLICT (id) DO NOTHING";
const SQL_REQUEST: &str =
    "INSERT INTO requests (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
const SQL_REQUEST_REPLACE: &str = "INSERT INTO requests (id, record) VALUES ($1, $2)
     ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record";
const SQL_JOURNAL: &str = "INSERT INTO journal (replica, kind, request_id, entry)
     VALUES ($1, $2, $3, $4) RETURNING seq";
const SQL_READ_GUARD: &str = "SELECT 1 FROM accounts WHERE id = $1 AND version = $2 FOR SHARE";
const SQL_ACCOUNT: &str = "SELECT balance_cents, version FROM accounts WHERE id = $1";
const SQL_RECORD: &str = "SELECT record FROM requests WHERE id = $1";

/// One operation's transaction, begun and ended by hand (BEGIN ... COMMIT)
/// on a pooled connection, so that it can be held across the engine's
/// awaits; `BEGIN` goes out with the first statement, in one round trip.
/// Dropped open, it rolls back in the background.
struct PgTx {
    client: Option<deadpool_postgres::Object>,
    replica: std::sync::Arc<str>,
    begin: &'static str,
    begun: bool,
}

impl PgTx {
    fn client(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client.as_ref().ok_or_else(ended)
    }

    /// Ends the transaction: COMMIT, or ROLLBACK.
    async fn end(&mut self, commit: bool) -> Result<(), tokio_postgres::Error> {
        if !std::mem::take(&mut self.begun) {
            return Ok(());
        }
        let client = self
            .client
            .as_ref()
            .expect("an open transaction has its client");
        client
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await
    }

    /// Sends every statement of `commit` at once (one round trip, BEGIN
    /// with them when the transaction has not begun), and sorts out what
    /// they did.
    async fn write(&mut self, commit: &Commit) -> Result<Written, tokio_postgres::Error> {
        let Self {
            client,
            replica,
            begin,
            begun,
        } = self;
        let client = client.as_ref().expect("checked by the caller");
        let mut entry = commit.entry.clone();
        entry.time_unix_ns = now_unix_ns();
        let entry_bytes = encode_record(&entry);
        let kind = format!("{:?}", entry.kind);
        let request_id = entry.request_id.as_ref().map(RequestId::as_str);
        let replica: &str = replica;
        let begin: &'static str = begin;
        let request_statement = client
            .prepare_cached(if commit.replace_request {
                SQL_REQUEST_REPLACE
            } else {
                SQL_REQUEST
            })
            .await?;
        let journal_statement = client.prepare_cached(SQL_JOURNAL).await?;
        // Rows are read-guarded and written in account order, whatever the
        // request's order: two transfers crossing the same accounts then
        // lock their rows in one order and never deadlock in PostgreSQL.
        let mut guarded: Vec<&(AccountId, u64)> = commit.reads.iter().collect();
        guarded.sort();
        let mut reads = Vec::with_capacity(guarded.len());
        for (account, version) in guarded {
            reads.push((
                account,
                *version,
                client.prepare_cached(SQL_READ_GUARD).await?,
            ));
        }
        let mut writes: Vec<&Write> = commit.writes.iter().collect();
        writes.sort_by(|a, b| a.account.cmp(&b.account));
        let mut statements = Vec::with_capacity(writes.len());
        for write in writes {
            let sql = match write.guard {
                Guard::Blind => SQL_BLIND,
                Guard::Version(_) => SQL_VERSION,
                Guard::Absent => SQL_ABSENT,
                Guard::Fence(_) => SQL_FENCE,
            };
            statements.push((write, client.prepare_cached(sql).await?));
        }
        // Sent in this order, read back in this order: tokio-postgres
        // pipelines statements issued before the first answer comes.
        let request = async {
            match &commit.request {
                Some((id, record)) => client
                    .execute(&request_statement, &[&id.as_str(), &encode_record(record)])
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        // Read guards: the row still at the version read, and share-locked
        // until the commit, so no one writes it under this transaction.
        let reads = futures_util::future::join_all(reads.iter().map(
            |(account, version, statement)| async move {
                // Versions are checked to fit a BIGINT before this (finish).
                let version = i64::try_from(*version).unwrap_or(i64::MAX);
                let row = client
                    .query_opt(statement, &[&account.as_str(), &version])
                    .await?;
                Ok::<_, tokio_postgres::Error>((*account, row.is_some()))
            },
        ));
        let writes = futures_util::future::join_all(statements.iter().map(
            |(write, statement)| async move {
                let id = write.account.as_str();
                let balance = write.new.balance_cents;
                let version = i64::try_from(write.new.version).unwrap_or(i64::MAX);
                let written = match write.guard {
                    Guard::Version(expected) | Guard::Fence(expected) => {
                        let expected = i64::try_from(expected).unwrap_or(i64::MAX);
                        client
                            .execute(statement, &[&id, &balance, &version, &expected])
                            .await
                    }
                    Guard::Blind | Guard::Absent => {
                        client.execute(statement, &[&id, &balance, &version]).await
                    }
                };
                written.map(|rows| (&write.account, rows))
            },
        ));
        let journal_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&replica, &kind, &request_id, &entry_bytes];
        let journal = client.query_one(&journal_statement, &journal_params);
        let (request, reads, writes, journal) = after_begin(client, begin, begun, async {
            Ok(tokio::join!(request, reads, writes, journal))
        })
        .await?;
        if request? == Some(0) {
            return Ok(Written::Duplicate);
        }
        for read in reads {
            let (account, held) = read?;
            if !held {
                return Ok(Written::Conflict(account.clone()));
            }
        }
        for written in writes {
            let (account, rows) = written?;
            if rows == 0 {
                return Ok(Written::Conflict(account.clone()));
            }
        }
        journal?.try_get(0).map(Written::Done)
    }

    /// Applies `commit` and ends the transaction.
    async fn finish(&mut self, commit: &Commit) -> Result<Result<u64, Rejected>, TryError> {
        // Versions are BIGINT columns; one past i64::MAX would be refused by
        // PostgreSQL only after the other statements ran, so check first.
        for write in &commit.writes {
            to_i64(write.new.version, "account version").map_err(TryError::Store)?;
            match write.guard {
                Guard::Version(expected) => {
                    to_i64(expected, "account version").map_err(TryError::Store)?;
                }
                Guard::Fence(token) => {
                    to_i64(token, "lease token").map_err(TryError::Store)?;
                }
                Guard::Blind | Guard::Absent => {}
            }
        }
        let written = self.write(commit).await;
        let committed = matches!(written, Ok(Written::Done(_)));
        // A failed statement aborted the transaction: ROLLBACK ends it.
        self.end(committed).await.map_err(TryError::Database)?;
        let client = self.client().map_err(TryError::Store)?;
        match written.map_err(TryError::Database)? {
            Written::Done(seq) => to_u64(seq, "journal seq").map(Ok).map_err(TryError::Store),
            Written::Duplicate => {
                let (id, _) = commit
                    .request
                    .as_ref()
                    .expect("only a keyed commit is a duplicate");
                let row = client
                    .query_one(SQL_RECORD, &[&id.as_str()])
                    .await
                    .map_err(TryError::Database)?;
                let bytes: &[u8] = row.try_get(0).map_err(TryError::Database)?;
                decode_record("request record", bytes)
                    .map(|record| Err(Rejected::Duplicate(record)))
                    .map_err(TryError::Store)
            }
            Written::Conflict(account) => {
                let found = client
                    .query_opt(SQL_ACCOUNT, &[&account.as_str()])
                    .await
                    .map_err(TryError::Database)?
                    .map(|row| account_from(&row))
                    .transpose()
                    .map_err(TryError::Store)?;
                Ok(Err(Rejected::Conflict { account, found }))
            }
        }
    }
}

/// A pooled connection that is closed, not returned to the pool, unless
/// taken out first: for a transaction that must not outlive its user.
struct Detached(Option<deadpool_postgres::Object>);

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Every account, in id order, as `client` sees them.
async fn all_accounts(
    client: &deadpool_postgres::Object,
) -> Result<Vec<(AccountId, Account)>, StoreError> {
    let rows = client
        .query(
            "SELECT id, balance_cents, version FROM accounts ORDER BY id",
            &[],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|row| {
            let id: &str = row.try_get(0).map_err(pg)?;
            let id = AccountId::parse("account_id", id).map_err(|e| StoreError::Corrupt {
                what: "account id",
                detail: e.to_string(),
            })?;
            let account = Account {
                balance_cents: row.try_get(1).map_err(pg)?,
                version: to_u64(row.try_get(2).map_err(pg)?, "account version")?,
            };
            Ok((id, account))
        })
        .collect()
}

/// Runs `statement`, sending BEGIN ahead of it (in the same round trip)
/// when the transaction has not begun.
async fn after_begin<T>(
    client: &deadpool_postgres::Object,
    begin: &'static str,
    begun: &mut bool,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    if *begun {
        return statement.await;
    }
    *begun = true;
    let (began, outcome) = tokio::join!(client.batch_execute(begin), statement);
    began?;
    outcome
}

/// Why a try at a commit failed: the database (maybe worth another try), or the store.
enum TryError {
    Database(tokio_postgres::Error),
    Store(StoreError),
}

fn ended() -> StoreError {
    StoreError::Postgres("the transaction has ended".into())
}

/// A database error as the store reports it: an abort a retry may get
/// past (40001, 40P01) apart from the rest.
fn aborted_or_pg(error: tokio_postgres::Error) -> StoreError {
    if retryable(&error) {
        StoreError::Serialization(describe(&error))
    } else {
        pg(error)
    }
}

#[async_trait::async_trait]
impl StoreTx for PgTx {
    async fn lock(&mut self, account: &AccountId, wait: Duration) -> Result<(), LockWait> {
        let failed = |e| LockWait::Failed(pg(e));
        let Self {
            client,
            begin,
            begun,
            ..
        } = self;
        let client = client.as_ref().ok_or_else(|| LockWait::Failed(ended()))?;
        // SET takes no parameters; the number is ours, not a caller's text.
        let timeout = format!("SET LOCAL lock_timeout = {}", wait.as_millis().max(1));
        after_begin(client, begin, begun, client.batch_execute(&timeout))
            .await
            .map_err(failed)?;
        let statement = client
            .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .await
            .map_err(failed)?;
        match client.execute(&statement, &[&account.as_str()]).await {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                Err(LockWait::TimedOut)
            }
            Err(error) if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                Err(LockWait::Deadlock)
            }
            Err(error) => Err(failed(error)),
        }
    }

    async fn account(&mut self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let Self {
            client,
            begin,
            begun,
            ..
        } = self;
        let client = client.as_ref().ok_or_else(ended)?;
        let statement = client.prepare_cached(SQL_ACCOUNT).await.map_err(pg)?;
        let id = id.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        after_begin(client, begin, begun, client.query_opt(&statement, &params))
            .await
            .map_err(aborted_or_pg)?
            .map(|row| account_from(&row))
            .transpose()
    }

    async fn commit(
        mut self: Box<Self>,
        commit: &Commit,
    ) -> Result<Result<u64, Rejected>, StoreError> {
        self.client()?;
        match self.finish(commit).await {
            Ok(outcome) => Ok(outcome),
            Err(TryError::Database(error)) => Err(aborted_or_pg(error)),
            Err(TryError::Store(error)) => Err(error),
        }
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if !self.begun {
            return;
        }
        // The rollback needs a round trip; the operation does not wait for
        // it. A connection that cannot roll back is closed, which also
        // releases its locks.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// Grants the lease when it is free, ran out, or is the holder's already
/// (keeping the token while it runs: a renewal fences nothing). Times are
/// the database's, so the replicas' clocks need not agree. A grant raises
/// the account's fence to the new token: from that moment no older holder's
/// write lands, even one that comes before the new owner has written.
const SQL_TAKE_LEASE: &str = "WITH taken AS (
         INSERT INTO leases (account_id, holder, address, token, expires_at)
         VALUES ($1, $2, $3, nextval('lease_tokens'), now() + $4::bigint * interval '1 millisecond')
         ON CONFLICT (account_id) DO UPDATE SET
             holder = EXCLUDED.holder,
             address = EXCLUDED.address,
             token = CASE WHEN leases.holder = EXCLUDED.holder AND leases.expires_at > now()
                          THEN leases.token ELSE EXCLUDED.token END,
             expires_at = EXCLUDED.expires_at
         WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= now()
         RETURNING token, expires_at
     ), raised AS (
         UPDATE accounts SET fence = taken.token FROM taken
         WHERE accounts.id = $1 AND accounts.fence < taken.token
     )
     SELECT token, (extract(epoch FROM expires_at - now()) * 1000)::bigint FROM taken";
/// Tries to take a lease that keeps vanishing under the taker.
const LEASE_TRIES_MAX: usize = 3;
const SQL_LEASE_HOLDER: &str = "SELECT holder, address,
         greatest((extract(epoch FROM expires_at - now()) * 1000)::bigint, 0)
     FROM leases WHERE account_id = $1";

#[async_trait::async_trait]
impl Leases for PostgresStore {
    async fn take_lease(
        &self,
        account: &AccountId,
        holder: &str,
        address: &str,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let ttl_ms = to_i64(ttl_ms, "lease ttl")?;
        let take = client.prepare_cached(SQL_TAKE_LEASE).await.map_err(pg)?;
        let held = client.prepare_cached(SQL_LEASE_HOLDER).await.map_err(pg)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&account.as_str(), &holder, &address, &ttl_ms];
        // Held by another, the row can still go between the two statements
        // (its holder stopped and released it): then the lease is free, and
        // the next try takes it.
        for _ in 0..LEASE_TRIES_MAX {
            if let Some(row) = client.query_opt(&take, &params).await.map_err(pg)? {
                let token: i64 = row.try_get(0).map_err(pg)?;
                let valid_ms: i64 = row.try_get(1).map_err(pg)?;
                return Ok(Lease::Mine {
                    token: to_u64(token, "lease token")?,
                    valid_ms: u64::try_from(valid_ms).unwrap_or(0),
                });
            }
            if let Some(row) = client
                .query_opt(&held, &[&account.as_str()])
                .await
                .map_err(pg)?
            {
                let valid_ms: i64 = row.try_get(2).map_err(pg)?;
                return Ok(Lease::Theirs {
                    holder: row.try_get(0).map_err(pg)?,
                    address: row.try_get(1).map_err(pg)?,
                    valid_ms: u64::try_from(valid_ms).unwrap_or(0),
                });
            }
        }
        Err(StoreError::Postgres(format!(
            "the lease on {account} changed hands {LEASE_TRIES_MAX} times while it was being taken"
        )))
    }

    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute("DELETE FROM leases WHERE holder = $1", &[&holder])
            .await
            .map_err(pg)
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    fn replica(&self) -> Option<&str> {
        Some(&self.replica)
    }

    async fn begin(&self) -> Result<Option<Box<dyn StoreTx>>, StoreError> {
        Ok(Some(Box::new(self.transaction().await?)))
    }

    async fn account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client
            .prepare_cached("SELECT balance_cents, version FROM accounts WHERE id = $1")
            .await
            .map_err(pg)?;
        client
            .query_opt(&statement, &[&id.as_str()])
            .await
            .map_err(pg)?
            .map(|row| account_from(&row))
            .transpose()
    }

    async fn commit(&self, commit: &Commit) -> Result<Result<u64, Rejected>, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = self.transaction().await?;
            match tx.finish(commit).await {
                Ok(outcome) => return Ok(outcome),
                Err(TryError::Database(error)) if retryable(&error) && tries < COMMIT_TRIES_MAX => {
                    tracing::debug!(error = %describe(&error), tries, "commit retried");
                }
                Err(TryError::Database(error)) => return Err(pg(error)),
                Err(TryError::Store(error)) => return Err(error),
            }
        }
    }

    async fn request(&self, id: &RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client
            .prepare_cached("SELECT record FROM requests WHERE id = $1")
            .await
            .map_err(pg)?;
        let Some(row) = client
            .query_opt(&statement, &[&id.as_str()])
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let bytes: &[u8] = row.try_get(0).map_err(pg)?;
        decode_record("request record", bytes).map(Some)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .batch_execute("TRUNCATE accounts, journal, requests")
            .await
            .map_err(pg)
    }

    fn accounts(&self) -> Result<Vec<(AccountId, Account)>, StoreError> {
        self.block(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            all_accounts(&client).await
        })
    }

    fn scan_journal(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.snapshot_scan(&mut |entry, _| visit(entry), false)
            .map(drop)
    }

    fn scan_journal_by_writer(
        &self,
        visit: &mut dyn FnMut(JournalEntry, Option<&str>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.snapshot_scan(&mut |entry, replica| visit(entry, Some(replica)), false)
            .map(drop)
    }

    fn scan_then_accounts(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> ControlFlow<()>,
    ) -> Result<Vec<(AccountId, Account)>, StoreError> {
        self.snapshot_scan(&mut |entry, _| visit(entry), true)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A commit returns once PostgreSQL has made it durable
        // (synchronous_commit, on by default): there is nothing to flush.
        Ok(())
    }
}
