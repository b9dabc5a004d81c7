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
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::{IsolationLevel, NoTls, error::SqlState, types::ToSql};

use super::{
    Commit, Guard, LockWait, Rejected, Store, StoreError, StoreLocks, decode_record, encode_record,
    now_unix_ns,
};
use crate::{
    bank::{Account, AccountId, RequestId},
    journal::{JournalEntry, RequestRecord},
};

/// Connections each replica keeps to the database. Every operation holds one
/// for its commit's few statements; more only queue in PostgreSQL.
pub const POOL_SIZE_DEFAULT: usize = 16;

/// Longest wait for a pooled connection before the operation fails.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Tries of a commit that PostgreSQL aborted as a serialization failure
/// (40001) or a deadlock (40P01). The commit's guards are checked again at
/// each try, so a retry writes only what is still true.
const COMMIT_TRIES_MAX: u32 = 8;

/// The schema, in order. Each step runs once per database, in a transaction
/// that holds an advisory lock, so replicas starting together apply it once.
/// (refinery and sqlx's migrators do not serialise concurrent runners.)
const MIGRATIONS: &[(i32, &str, &str)] = &[(
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
)];

/// The advisory lock key the migrations run under ("overdraft" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f76_6572_6472_6166;

/// A ledger's state in PostgreSQL.
pub struct PostgresStore {
    pool: Pool,
    /// Names this process in the journal rows it writes.
    replica: String,
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
    StoreError::Postgres(describe(&error))
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
        other => StoreError::Postgres(format!("no database connection: {other}")),
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

fn entry_from(row: &tokio_postgres::Row) -> Result<JournalEntry, StoreError> {
    let seq: i64 = row.try_get(0).map_err(pg)?;
    let bytes: &[u8] = row.try_get(1).map_err(pg)?;
    let mut entry: JournalEntry = decode_record("journal entry", bytes)?;
    entry.seq = to_u64(seq, "journal seq")?;
    Ok(entry)
}

impl PostgresStore {
    /// Connects to `url` (a libpq URL or key=value string), runs the
    /// migrations not yet applied, and names this process `replica` in the
    /// journal. Must run inside a tokio runtime.
    pub async fn connect(url: &str, replica: &str, pool_size: usize) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("--database-url is not usable: {e}")))?;
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
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot build the pool: {e}")))?;
        let store = Self {
            pool,
            replica: replica.to_owned(),
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

    /// One try at `commit`: Ok(Err) when it wrote nothing, Err on a database error.
    async fn try_commit(
        &self,
        commit: &Commit,
    ) -> Result<Result<Result<u64, Rejected>, StoreError>, tokio_postgres::Error> {
        let mut client = match self.pool.get().await {
            Ok(client) => client,
            Err(deadpool_postgres::PoolError::Backend(error)) => return Err(error),
            Err(other) => return Ok(Err(pool_error(other))),
        };
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        if let Some((id, record)) = &commit.request {
            let bytes = encode_record(record);
            let sql = if commit.replace_request {
                "INSERT INTO requests (id, record) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record"
            } else {
                "INSERT INTO requests (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
            };
            let inserted = tx.execute(sql, &[&id.as_str(), &bytes]).await?;
            if inserted == 0 {
                // The conflicting row is committed (the insert waited for
                // it), so this statement's snapshot sees it.
                let row = tx
                    .query_one("SELECT record FROM requests WHERE id = $1", &[&id.as_str()])
                    .await?;
                let bytes: &[u8] = row.try_get(0)?;
                return Ok(decode_record("request record", bytes)
                    .map(|record| Err(Rejected::Duplicate(record))));
            }
        }
        for write in &commit.writes {
            let id = write.account.as_str();
            let balance = write.new.balance_cents;
            let Ok(version) = to_i64(write.new.version, "account version") else {
                return Ok(Err(StoreError::Corrupt {
                    what: "commit",
                    detail: format!("version {} does not fit a BIGINT", write.new.version),
                }));
            };
            let written = match write.guard {
                Guard::Blind => {
                    // Whatever is there, or nothing: the store contract's
                    // blind write creates a missing row, as the others do.
                    tx.execute(
                        "INSERT INTO accounts (id, balance_cents, version) VALUES ($1, $2, $3)
                         ON CONFLICT (id) DO UPDATE
                         SET balance_cents = EXCLUDED.balance_cents, version = EXCLUDED.version",
                        &[&id, &balance, &version],
                    )
                    .await?
                }
                Guard::Version(expected) => {
                    let expected = i64::try_from(expected).unwrap_or(i64::MAX);
                    tx.execute(
                        "UPDATE accounts SET balance_cents = $2, version = $3
                         WHERE id = $1 AND version = $4",
                        &[&id, &balance, &version, &expected],
                    )
                    .await?
                }
                Guard::Absent => {
                    tx.execute(
                        "INSERT INTO accounts (id, balance_cents, version) VALUES ($1, $2, $3)
                         ON CONFLICT (id) DO NOTHING",
                        &[&id, &balance, &version],
                    )
                    .await?
                }
            };
            if written == 0 {
                let found = tx
                    .query_opt(
                        "SELECT balance_cents, version FROM accounts WHERE id = $1",
                        &[&id],
                    )
                    .await?
                    .map(|row| account_from(&row))
                    .transpose();
                return Ok(found.map(|found| {
                    Err(Rejected::Conflict {
                        account: write.account.clone(),
                        found,
                    })
                }));
            }
        }
        let mut entry = commit.entry.clone();
        entry.time_unix_ns = now_unix_ns();
        let bytes = encode_record(&entry);
        let kind = format!("{:?}", entry.kind);
        let request_id = entry.request_id.as_ref().map(RequestId::as_str);
        let params: [&(dyn ToSql + Sync); 4] = [&self.replica, &kind, &request_id, &bytes];
        let row = tx
            .query_one(
                "INSERT INTO journal (replica, kind, request_id, entry)
                 VALUES ($1, $2, $3, $4) RETURNING seq",
                &params,
            )
            .await?;
        let seq: i64 = row.try_get(0)?;
        tx.commit().await?;
        Ok(to_u64(seq, "journal seq").map(Ok))
    }
}

/// Advisory locks held by one transaction on a connection of their own:
/// `pg_advisory_xact_lock` on a hash of the account id, waited for under
/// `lock_timeout`; PostgreSQL's deadlock detector watches these waits too.
/// Dropping the set rolls the transaction back, which releases them.
struct AdvisoryLocks {
    client: Option<deadpool_postgres::Object>,
    in_transaction: bool,
}

#[async_trait::async_trait]
impl StoreLocks for AdvisoryLocks {
    async fn lock(&mut self, account: &AccountId, wait: Duration) -> Result<(), LockWait> {
        let client = self.client.as_ref().ok_or_else(|| {
            LockWait::Failed(StoreError::Postgres("the lock connection is gone".into()))
        })?;
        if !self.in_transaction {
            // SET takes no parameters; the number is ours, not a caller's text.
            let begin = format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                wait.as_millis().max(1)
            );
            client
                .batch_execute(&begin)
                .await
                .map_err(|e| LockWait::Failed(pg(e)))?;
            self.in_transaction = true;
        }
        let statement = client
            .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .await
            .map_err(|e| LockWait::Failed(pg(e)))?;
        match client.execute(&statement, &[&account.as_str()]).await {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                Err(LockWait::TimedOut)
            }
            Err(error) if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                Err(LockWait::Deadlock)
            }
            Err(error) => Err(LockWait::Failed(pg(error))),
        }
    }
}

impl Drop for AdvisoryLocks {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if !self.in_transaction {
            return;
        }
        // The rollback needs a round trip; the operation does not wait for it.
        // A connection that cannot roll back is closed, which also releases.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    drop(deadpool_postgres::Object::take(client));
                }
            });
        } else {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn locks(&self) -> Result<Option<Box<dyn StoreLocks>>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        Ok(Some(Box::new(AdvisoryLocks {
            client: Some(client),
            in_transaction: false,
        })))
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
            match self.try_commit(commit).await {
                Ok(outcome) => return outcome,
                Err(error) if retryable(&error) && tries < COMMIT_TRIES_MAX => {
                    tracing::debug!(error = %describe(&error), tries, "commit retried");
                }
                Err(error) => return Err(pg(error)),
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
                    let id =
                        AccountId::parse("account_id", id).map_err(|e| StoreError::Corrupt {
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
        })
    }

    fn scan_journal(
        &self,
        visit: &mut dyn FnMut(JournalEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.block(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            // Rows arrive as PostgreSQL sends them: memory per row, not per journal.
            let rows = client
                .query_raw(
                    "SELECT seq, entry FROM journal ORDER BY seq",
                    std::iter::empty::<i64>(),
                )
                .await
                .map_err(pg)?;
            pin_mut!(rows);
            while let Some(row) = rows.next().await {
                if visit(entry_from(&row.map_err(pg)?)?).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A commit returns once PostgreSQL has made it durable
        // (synchronous_commit, on by default): there is nothing to flush.
        Ok(())
    }
}
