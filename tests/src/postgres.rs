//! A PostgreSQL cluster of the test binary's own: `initdb` into a temporary
//! directory, `postgres` listening only on a unix socket there (no port to
//! clash with), `fsync=off` for speed; a database per test.
//!
//! The cluster outlives no test binary: `postgres` runs under a small shell
//! that holds a pipe from this process, and when the process ends, however
//! it ends, the pipe closes and the shell stops `postgres` and removes the
//! directory. `initdb` refuses to run as root, so as root both run as the
//! `postgres` user (Debian's postgresql-15 creates it).
//!
//! A test that needs PostgreSQL fails with what to install when it cannot
//! start one; it never skips.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// The port in the socket's name (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: u16 = 5432;

/// Longest wait for a fresh cluster to accept connections.
const READY_WAIT: Duration = Duration::from_secs(60);

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    /// The shell that owns `postgres`; its stdin is the pipe whose closing stops it.
    _keeper: Mutex<Child>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The test binary's cluster, started on first use.
///
/// # Panics
/// When no cluster can start, with what went wrong and what to install.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(why) => panic!(
            "this test needs PostgreSQL and none could start: {why}\n\
             install it with `apt-get install -y postgresql-15` (initdb, postgres on PATH \
             or in /usr/lib/postgresql/15/bin)"
        ),
    }
}

/// Where a PostgreSQL program is: on PATH, or where Debian puts it.
fn program(name: &str) -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .collect();
            dirs.sort();
            dirs.reverse();
            dirs
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(debian)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| format!("`{name}` is neither on PATH nor in /usr/lib/postgresql/*/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program args...`, as the `postgres` user when this process is root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Cluster {
    fn start() -> Result<Self, String> {
        let initdb = program("initdb")?;
        let postgres = program("postgres")?;
        let dir = std::env::temp_dir().join(format!("overdraft-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if is_root() {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !chown.success() {
                return Err(
                    "cannot give the cluster's directory to the postgres user (is there one?)"
                        .into(),
                );
            }
        }
        let data = dir.join("data");
        let out = as_owner(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", initdb.display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // `cat` returns when this process's end of the pipe closes: at exit.
        let keeper_script = r#"
            "$1" -D "$2/data" -k "$2" -p "$3" -c listen_addresses= -c fsync=off \
                -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 \
                -c log_min_messages=warning >"$2/postgres.log" 2>&1 &
            pg=$!
            cat >/dev/null
            kill -INT "$pg"
            wait "$pg"
            rm -rf "$2"
        "#;
        let keeper = as_owner(Path::new("/bin/sh"))
            .args(["-c", keeper_script, "keeper"])
            .arg(&postgres)
            .arg(&dir)
            .arg(PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let cluster = Self {
            dir,
            _keeper: Mutex::new(keeper),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&self) -> Result<(), String> {
        let socket = self.dir.join(format!(".s.PGSQL.{PORT}"));
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > READY_WAIT {
                let log =
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(format!(
                    "postgres did not open {} within {READY_WAIT:?}; its log:\n{log}",
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The connection string of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={name}",
            self.dir.display()
        )
    }

    /// Creates a fresh database for one test and returns its connection string.
    pub async fn database(&self, label: &str) -> String {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        let name: String = format!("{label}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let started = Instant::now();
        let client = loop {
            match tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    break client;
                }
                // The socket appears a moment before the server takes connections.
                Err(error) if started.elapsed() < READY_WAIT => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot connect to the test cluster: {error}"),
            }
        };
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url(&name)
    }
}
