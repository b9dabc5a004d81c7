//! The `atm` command line: `demo`, `scenario`, `load` and `compare`, and what
//! each prints (a human table, or JSON with `--json`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use overdraft_server::{config::Mode, runtime::THREADS_MAX};
use serde::Serialize;

use crate::{
    check::{self, CheckArgs},
    compare,
    connect::ClientError,
    demo, embedded,
    journal::{self, JournalArgs},
    load::{self, LoadArgs},
    report::{self, to_json},
    scenario::{
        BUILTIN, Run, Scenario, file_stem,
        run::{ModeOutcome, run_mode, run_mode_crashing, run_replicated},
    },
};

/// The overdraft ATM: race demos, incident scenarios and load tests against a ledger.
#[derive(Debug, Parser)]
#[command(name = "atm", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Runtime threads the command asks for: `load` and `compare` say
    /// (`--threads`, default 1); every other command (some embed a ledger)
    /// leaves it to tokio, one per core.
    pub fn runtime_threads(&self) -> Option<u16> {
        match &self.command {
            Command::Load { threads, .. } | Command::Compare { threads, .. } => Some(*threads),
            _ => None,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the flagship scenarios in every mode and print one table.
    ///
    /// Without --target it starts a ledger in this process (temporary
    /// storage, a loopback port). Exit 0 when every mode behaved as expected:
    /// unsafe shows anomalies, the safe modes none.
    Demo {
        /// Run against this ledger instead (e.g. http://127.0.0.1:50051).
        #[arg(long)]
        target: Option<String>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Seed of the embedded ledger's race hook.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write each scenario and mode's history into this directory
        /// (SCENARIO-MODE.jsonl, format 2) for `atm check`.
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Run a named incident scenario (or a TOML file) and give the verdict per mode.
    Scenario {
        /// A built-in name (see --list) or a path to a TOML scenario file.
        #[arg(required_unless_present = "list")]
        scenario: Option<String>,
        /// List the built-in scenarios.
        #[arg(long)]
        list: bool,
        /// The ledger (default: one embedded in this process).
        #[arg(long)]
        target: Option<String>,
        /// For a scenario over replicas (scaled-out-mutex, paused-owner,
        /// write-skew): the PostgreSQL database its replicas share, which
        /// it resets (e.g. postgresql://USER:PASSWORD@HOST:5432/ledger).
        #[arg(long, env = "OVERDRAFT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Modes to run (repeat or comma-separate); default: the scenario's.
        #[arg(long, value_enum, value_delimiter = ',')]
        mode: Vec<Mode>,
        /// Seed of the embedded ledger's race hook.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Write what the ATMs saw (format 2) for `atm check`: this file when
        /// one mode runs, else a directory of SCENARIO-MODE.jsonl files.
        #[arg(long)]
        history: Option<PathBuf>,
        /// Write a postmortem (SCENARIO-MODE.md and .html) into this
        /// directory for each mode whose history shows an anomaly, with the
        /// other modes' runs as its resolution; the histories go there too.
        #[arg(long, conflicts_with = "history")]
        postmortem: Option<PathBuf>,
    },
    /// Send a seeded load and report latency, throughput, anomalies and reconciliation.
    Load {
        /// The ledger (e.g. http://127.0.0.1:50051), or its replicas as
        /// URL1,URL2,URL3: ATM i keeps to replica i mod 3; Reset goes to the
        /// first (they share their state), SetMode to each.
        #[arg(long)]
        target: String,
        /// Switch the ledger to this mode first.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// The workload.
        #[command(flatten)]
        load: LoadArgs,
        /// Alone, or one member of a crowd.
        #[command(flatten)]
        crowd: load::CrowdArgs,
        /// Runtime threads of this process (see `atm compare --help`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(THREADS_MAX)))]
        threads: u16,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The same seeded load in each mode, side by side, with the transport ceiling.
    Compare {
        /// The ledger (e.g. http://127.0.0.1:50051), or its replicas as
        /// URL1,URL2,URL3: ATM i keeps to replica i mod 3; Reset goes to the
        /// first (they share their state), SetMode to each.
        #[arg(long)]
        target: String,
        /// Modes to compare.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "unsafe,mutex,cas,actor"
        )]
        modes: Vec<Mode>,
        /// The workload.
        #[command(flatten)]
        load: LoadArgs,
        /// Runtime threads of this process. One, as `h2load -t 1`, costs
        /// about a third less CPU per call than tokio's multi-threaded
        /// runtime (no cross-thread wake-ups), which leaves more of a shared
        /// machine to the ledger; raise it to drive a remote ledger past
        /// what one core can send.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(THREADS_MAX)))]
        threads: u16,
        /// Print JSON (schema 1).
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML page with charts here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Check histories against the bank model: name each anomaly, the
    /// operations behind it and the money.
    ///
    /// Exit 0 valid, 1 anomalies, 2 usage or unreadable input (the file,
    /// line and field named), 3 unknown (a search ran out of time).
    Check(CheckArgs),
    /// Write a checked run up as an incident postmortem (Markdown, and an
    /// HTML page with swimlanes): summary, impact, root cause, trigger,
    /// detection, resolution, timeline, action items, lessons.
    ///
    /// Exit codes as for `atm check`.
    Postmortem(crate::postmortem::PostmortemArgs),
    /// A Wheel-of-Misfortune exercise: a scenario runs in a mode you are not
    /// told; you see only the symptoms, answer three questions (the mode,
    /// the operations behind it, the money), are graded, then see the
    /// checker's answer and the postmortem.
    ///
    /// Interactive on a terminal; --answers FILE for scripts. Exit 0 when
    /// every answer is right, 1 otherwise.
    Drill(crate::drill::DrillArgs),
    /// Write the ledger's journal (what each applied operation read and
    /// wrote) as JSON lines, streamed: for `atm check --journal`.
    Journal(JournalArgs),
    /// Open the accounts of a crowd's run: a Reset to acct-0 .. acct-(K-1),
    /// each with the opening balance, and the mode when given. The members
    /// then `atm load --join` with the same --accounts and --opening-cents.
    Reset(crate::referee::ResetArgs),
    /// Judge a crowd of `atm load --join` members once all have finished:
    /// final reads, the journal, `atm check` over every history with the
    /// journal and the fault log, every acknowledged operation looked up in
    /// the journal, a postmortem. Exit 0 when the run showed what its mode
    /// should (unsafe: anomalies; mutex, cas, actor: none), 1 otherwise.
    Referee(crate::referee::RefereeArgs),
    /// Serve the live page for a projector: the mode, operations per second
    /// by method, the busiest accounts' balances, the faults active, the
    /// audit's anomalies with the operations behind them, and a swimlane of
    /// each ATM's recent operations, pushed twice a second (server-sent
    /// events). Runs until stopped.
    View(crate::view::ViewArgs),
    /// Ask a ledger for its health (the standard gRPC health service):
    /// prints SERVING and exits 0, or exits 1 (another status) or 2 (no
    /// answer in time). For container health checks.
    Health(crate::health::HealthArgs),
    /// Serve a ledger, exactly as the `ledger` binary does (same flags).
    /// Scenarios that crash the ledger run it as a child process this way.
    #[command(hide = true)]
    ServeLedger {
        /// The ledger's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// How a command ended, as the exit code says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Expectations held (exit 0).
    Held,
    /// They did not: anomalies, or a mode that misbehaved (exit 1).
    Broken,
    /// The check could not decide (exit 3).
    Undecided,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Held => 0,
            Exit::Broken => 1,
            Exit::Undecided => 3,
        }
    }
}

impl From<overdraft_history::Verdict> for Exit {
    fn from(verdict: overdraft_history::Verdict) -> Self {
        match verdict {
            overdraft_history::Verdict::Valid => Exit::Held,
            overdraft_history::Verdict::Anomalies => Exit::Broken,
            overdraft_history::Verdict::Unknown => Exit::Undecided,
        }
    }
}

impl From<bool> for Exit {
    fn from(held: bool) -> Self {
        if held { Exit::Held } else { Exit::Broken }
    }
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<Exit, ClientError> {
    let verdict = match &cli.command {
        Command::Check(args) => Some(check::run(args)?),
        Command::Postmortem(args) => {
            let verdict = crate::postmortem::run(args)?;
            eprintln!("atm postmortem: wrote {}", args.output.display());
            Some(verdict)
        }
        _ => None,
    };
    if let Some(verdict) = verdict {
        return Ok(Exit::from(verdict));
    }
    run_held(cli).await.map(Exit::from)
}

async fn run_held(cli: Cli) -> Result<bool, ClientError> {
    match cli.command {
        Command::Check(_) | Command::Postmortem(_) => Ok(true),
        Command::Drill(args) => crate::drill::run(&args).await,
        Command::Health(args) => crate::health::check(&args).await,
        Command::Referee(args) => crate::referee::run(&args).await,
        Command::View(args) => crate::view::run(&args).await,
        Command::Reset(args) => crate::referee::reset(&args).await,
        Command::Journal(args) => {
            let written = journal::export(&args.target, &args.output).await?;
            eprintln!(
                "atm journal: {written} entries from {} written to {}",
                args.target,
                args.output.display()
            );
            Ok(true)
        }
        Command::Demo {
            target,
            json,
            seed,
            history,
        } => run_demo(target, json, seed, history).await,
        Command::ServeLedger { args } => {
            let config = overdraft_server::Config::try_parse_from(
                std::iter::once("ledger".to_owned()).chain(args),
            )
            .map_err(|e| ClientError::Usage(e.to_string()))?;
            overdraft_server::telemetry::init(config.log_format);
            overdraft_server::serve(config)
                .await
                .map_err(|e| ClientError::Internal(format!("{e:#}")))?;
            Ok(true)
        }
        Command::Scenario { list: true, .. } => {
            list();
            Ok(true)
        }
        Command::Scenario {
            scenario,
            target,
            database_url,
            mode,
            seed,
            json,
            history,
            postmortem,
            ..
        } => {
            let name = scenario.unwrap_or_default();
            let scenario = Scenario::load(&name).map_err(|e| ClientError::Usage(e.to_string()))?;
            let outputs = Outputs {
                json,
                history,
                postmortem,
            };
            let place = Place {
                target,
                database_url,
            };
            run_scenario(&name, scenario, place, mode, seed, outputs).await
        }
        Command::Load {
            target,
            mode,
            load,
            crowd,
            json,
            threads: _,
        } => {
            let report = match crowd.member().map_err(ClientError::Usage)? {
                Some(member) => load::join(&target, &load, &member, !json).await?,
                None => load::run(&target, &load, mode, !json).await?,
            };
            print_load(&report, json);
            let reconciled = report.reconciliation.mismatched.is_empty();
            // A member's verdict is the referee's, over the whole crowd.
            Ok(report.member.is_some()
                || report.mode == "unsafe"
                || (reconciled && report.audit.as_ref().is_some_and(|a| a.clean)))
        }
        Command::Compare {
            target,
            modes,
            load,
            json,
            html,
            threads: _,
        } => {
            let report = compare::run(&target, &modes, &load, !json).await?;
            if let Some(path) = html {
                std::fs::write(&path, compare::html(&report)).map_err(|e| {
                    ClientError::Usage(format!("cannot write --html {}: {e}", path.display()))
                })?;
            }
            if json {
                println!("{}", to_json(&report));
            } else {
                print!("{}", compare::table(&report));
            }
            Ok(report
                .runs
                .iter()
                .all(|r| r.mode == "unsafe" || r.reconcile_mismatches == 0))
        }
    }
}

async fn run_demo(
    target: Option<String>,
    json: bool,
    seed: u64,
    history: Option<PathBuf>,
) -> Result<bool, ClientError> {
    if let Some(dir) = &history {
        crate::history::create_dir(dir)?;
    }
    let ledger = embedded::Ledger::target_or_embedded(target, seed).await?;
    let (url, label) = (ledger.url.clone(), ledger.label.clone());
    // Fail on an unreachable target before printing anything else.
    crate::connect::channel(&url).await?;
    if !json {
        eprintln!(
            "atm demo: ledger {label} ({url}), seed {seed}; running {} scenarios in every mode",
            demo::DEMO_SCENARIOS.len()
        );
    }
    let report = demo::run(&url, &label, seed, history.as_deref(), |row| {
        if !json {
            eprintln!(
                "  {:<20} {:<7} {}",
                row.scenario,
                row.mode.as_str(),
                if row.passed { "ok" } else { "UNEXPECTED" }
            );
        }
    })
    .await?;
    ledger.stop().await?;
    if json {
        println!("{}", to_json(&report));
    } else {
        println!();
        print!("{}", report::table(&report.runs));
        println!();
        println!("{}", demo::summary(&report));
        for row in report.runs.iter().filter(|r| !r.passed) {
            print!("{}", report::verdict(row));
        }
    }
    Ok(report.passed)
}

fn list() {
    println!("{:<24} story", "scenario");
    for (name, text) in BUILTIN {
        let story = Scenario::parse(name, text)
            .map(|s| s.story)
            .unwrap_or_default();
        let first = story.split(". ").next().unwrap_or_default();
        println!("{name:<24} {first}.");
    }
}

/// `atm scenario --json`.
#[derive(Debug, Serialize)]
struct ScenarioReport<'a> {
    schema: u32,
    scenario: &'a str,
    story: &'a str,
    seed: u64,
    target: &'a str,
    passed: bool,
    runs: &'a [ModeOutcome],
}

/// Where `atm scenario` writes, besides its verdict.
struct Outputs {
    json: bool,
    history: Option<PathBuf>,
    postmortem: Option<PathBuf>,
}

async fn run_scenario(
    name: &str,
    scenario: Scenario,
    place: Place,
    modes: Vec<Mode>,
    seed: u64,
    outputs: Outputs,
) -> Result<bool, ClientError> {
    let json = outputs.json;
    let postmortem = outputs.postmortem.clone();
    let history = outputs.history.or_else(|| postmortem.clone());
    let has_target = place.target.is_some();
    if scenario.crash.is_some() && has_target {
        return Err(ClientError::Usage(format!(
            "scenario {name} crashes the ledger and restarts it, so it starts a ledger of its own: drop --target"
        )));
    }
    let database_url = match (&scenario.replicas, place.database_url) {
        (Some(_), _) if has_target => {
            return Err(ClientError::Usage(format!(
                "scenario {name} starts ledger replicas of its own on PostgreSQL: drop --target and give --database-url"
            )));
        }
        (Some(replicas), None) => {
            return Err(ClientError::Usage(format!(
                "scenario {name} runs {} ledger replicas on one PostgreSQL database: give --database-url postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or OVERDRAFT_DATABASE_URL); the scenario resets that database's ledger tables",
                replicas.count
            )));
        }
        (Some(_), Some(url)) => Some(url),
        (None, _) => None,
    };
    // --mode picks the modes of one ledger's scenario, and over replicas
    // the listed runs in those modes.
    let runs_wanted: Vec<Run> = match (&scenario.replicas, modes.is_empty()) {
        (_, true) => scenario.runs(),
        (Some(_), false) => scenario
            .runs()
            .into_iter()
            .filter(|run| modes.contains(&run.mode))
            .collect(),
        (None, false) => modes.iter().map(|mode| Run::of(*mode)).collect(),
    };
    if runs_wanted.is_empty() {
        let listed: Vec<String> = scenario.runs().iter().map(|r| r.label()).collect();
        return Err(ClientError::Usage(format!(
            "--mode: scenario {name} runs {}; none is in the mode asked for",
            listed.join(", ")
        )));
    }
    // One run: the file itself (unless it names a directory); several: a
    // directory of SCENARIO-RUN.jsonl files.
    let in_directory = postmortem.is_some()
        || history
            .as_ref()
            .is_some_and(|path| runs_wanted.len() > 1 || path.is_dir());
    if let (true, Some(dir)) = (in_directory, &history) {
        if dir.extension().is_some_and(|e| e == "jsonl") && !dir.is_dir() {
            return Err(ClientError::Usage(format!(
                "--history {} names a file, but {} runs follow: give a directory (one SCENARIO-RUN.jsonl per run) or one --mode",
                dir.display(),
                runs_wanted.len()
            )));
        }
        crate::history::create_dir(dir)?;
    }
    let runner = match database_url {
        Some(url) => Runner::Replicas(url),
        None => Runner::Ledger(embedded::Ledger::target_or_embedded(place.target, seed).await?),
    };
    let mut runs = Vec::new();
    for run in &runs_wanted {
        let file = history.as_ref().map(|path| {
            if in_directory {
                crate::history::file_in(path, &scenario.name, &run.file_stem())
            } else {
                path.clone()
            }
        });
        let outcome = match &runner {
            Runner::Replicas(url) => {
                if !json {
                    eprintln!(
                        "atm scenario: {} over {} replicas ...",
                        run.label(),
                        scenario.replicas.as_ref().map_or(0, |r| r.count)
                    );
                }
                run_replicated(url, &scenario, *run, seed, file.as_deref()).await?
            }
            Runner::Ledger(_) if scenario.crash.is_some() => {
                run_mode_crashing(&scenario, run.mode, seed, None, file.as_deref()).await?
            }
            Runner::Ledger(ledger) => {
                run_mode(&ledger.url, &scenario, run.mode, file.as_deref()).await?
            }
        };
        runs.push(outcome);
    }
    let label = match runner {
        Runner::Ledger(ledger) => {
            let label = ledger.label.clone();
            ledger.stop().await?;
            label
        }
        Runner::Replicas(_) => "replicas on PostgreSQL".to_owned(),
    };
    if let Some(dir) = &postmortem {
        let written = write_postmortems(dir, &scenario.name, &runs)?;
        if !json {
            for path in written {
                eprintln!("atm scenario: postmortem {}", path.display());
            }
        }
    }
    let passed = runs.iter().all(|r| r.passed);
    if json {
        let report = ScenarioReport {
            schema: 1,
            scenario: &scenario.name,
            story: &scenario.story,
            seed,
            target: &label,
            passed,
            runs: &runs,
        };
        println!("{}", to_json(&report));
        return Ok(passed);
    }
    println!("{}: {}\n", scenario.name, scenario.story);
    for run in &runs {
        print!("{}", report::verdict(run));
    }
    let target_flag = if has_target {
        format!(" --target {label}")
    } else if scenario.replicas.is_some() {
        " --database-url URL".to_owned()
    } else {
        String::new()
    };
    let mut mode_flag: Vec<&str> = Vec::new();
    for run in &runs_wanted {
        if !mode_flag.contains(&run.mode.as_str()) {
            mode_flag.push(run.mode.as_str());
        }
    }
    println!(
        "\nseed {seed}; replay: atm scenario {name}{target_flag} --mode {} --seed {seed}",
        mode_flag.join(",")
    );
    Ok(passed)
}

/// Where a scenario runs, as the command line says: a ledger given, one
/// embedded, or replicas on a PostgreSQL database.
struct Place {
    target: Option<String>,
    database_url: Option<String>,
}

/// What runs a scenario's runs: a ledger (given or embedded), or replicas
/// each run starts on the PostgreSQL database at this URL.
enum Runner {
    Ledger(embedded::Ledger),
    Replicas(String),
}

/// One postmortem per run whose history shows an anomaly; the other
/// runs are its resolution. Returns the reports written.
fn write_postmortems(
    dir: &std::path::Path,
    scenario: &str,
    runs: &[ModeOutcome],
) -> Result<Vec<PathBuf>, ClientError> {
    let mut written = Vec::new();
    let checked: Vec<(&str, overdraft_history::Run, overdraft_history::Report)> = runs
        .iter()
        .map(|run| {
            let path = crate::history::file_in(dir, scenario, &file_stem(&run.run));
            let history = overdraft_history::read_files(&[&path])
                .map_err(|e| ClientError::Internal(e.to_string()))?;
            let report = overdraft_history::check(
                &history,
                &overdraft_history::check::Evidence::default(),
                std::time::Duration::from_secs(60),
            );
            Ok((run.run.as_str(), history, report))
        })
        .collect::<Result<_, ClientError>>()?;
    for (label, history, report) in &checked {
        if report.verdict != overdraft_history::Verdict::Anomalies {
            continue;
        }
        let resolutions = runs
            .iter()
            .zip(&checked)
            .filter(|(run, _)| run.run != *label)
            .map(|(run, (_, _, other))| crate::postmortem::Resolution {
                mode: run.run.clone(),
                verdict: format!(
                    "scenario expectations {}; atm check: {} ({} anomalies)",
                    if run.passed { "held" } else { "NOT met" },
                    serde_json::to_string(&other.verdict)
                        .unwrap_or_default()
                        .trim_matches('"'),
                    other.anomalies.len()
                ),
            })
            .collect();
        let incident = crate::postmortem::Incident {
            run: history,
            report,
            journal: None,
            faults: None,
            resolutions,
        };
        let base = dir.join(format!("{scenario}-{}", file_stem(label)));
        let markdown = base.with_extension("md");
        crate::postmortem::write(&incident, &markdown, Some(&base.with_extension("html")))?;
        written.push(markdown);
    }
    Ok(written)
}

fn print_load(report: &load::LoadReport, json: bool) {
    if json {
        println!("{}", to_json(report));
        return;
    }
    println!(
        "mode {}, {} model, {} ATMs, {} accounts, seed {}: {} ops in {:.1} s = {:.0} ops/s",
        report.mode,
        report.model,
        report.atms,
        report.accounts,
        report.seed,
        report.operations,
        report.duration_secs,
        report.ops_per_sec,
    );
    println!(
        "cpu per operation: ledger {:.1} µs, atm {:.1} µs (atm {:.0}% of a core); ledger resident {} MiB",
        report.cpu_per_op.ledger_us,
        report.cpu_per_op.atm_us,
        report.client_cpu_percent,
        report.ledger_rss_bytes / (1024 * 1024),
    );
    if let Some(f) = &report.flushes {
        println!(
            "durable flushes: {} ({:.0}/s), {:.1} operations each, {:.2} ms mean, {:.2} ms max, a flush in progress {:.0}% of the time",
            f.flushes,
            f.flushes_per_sec,
            f.operations_per_flush,
            f.flush_us_mean / 1e3,
            f.flush_us_max as f64 / 1e3,
            100.0 * f.busy_fraction
        );
    }
    let mut table = report::grid(
        [
            "method", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
        ],
        1,
    );
    for (method, l) in &report.latency_us {
        table.add_row([
            method.clone(),
            l.count.to_string(),
            report::ms(l.p50),
            report::ms(l.p90),
            report::ms(l.p99),
            report::ms(l.p999),
            report::ms(l.max),
        ]);
    }
    println!("{table}");
    let statuses: Vec<String> = report
        .status_counts
        .iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    println!("statuses: {}", statuses.join(" "));
    println!(
        "server: {} CAS retries, {} aborts, {} deadlocks detected",
        report.retries, report.aborts, report.deadlocks
    );
    let r = &report.reconciliation;
    let Some(audit) = &report.audit else {
        println!(
            "audit and reconciliation: left to `atm referee` ({} joined a crowd); {} operations with unknown outcome",
            report.member.as_deref().unwrap_or("this member"),
            r.unknown_outcomes
        );
        return;
    };
    println!(
        "audit: {} ({} overdrafts, {} lost updates, money {} cents, {} findings)",
        if audit.clean { "clean" } else { "ANOMALIES" },
        audit.overdrafts,
        audit.lost_updates,
        report::signed(audit.money_delta_cents),
        audit.findings
    );
    println!(
        "reconciliation: {}/{} accounts match the client's model; {} operations with unknown outcome",
        r.matched, r.accounts, r.unknown_outcomes
    );
    for m in r.mismatched.iter().take(10) {
        println!(
            "  {}: expected {} cents, holds {} ({})",
            m.account,
            m.expected_cents,
            m.actual_cents,
            report::signed(m.actual_cents - m.expected_cents)
        );
    }
}
