//! `atm drill`: a Wheel-of-Misfortune exercise. A scenario runs (one chosen
//! by the seed when none is named) in a mode the trainee is not told; the
//! trainee sees only the symptoms a support desk would (the complaint, the
//! reconciliation, the statuses, the faults set up) and answers three
//! questions: which mode ran, which operations caused it, how much money
//! moved wrongly. Each answer is graded, then the checker's answer and the
//! postmortem are revealed.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
};

use clap::Args;
use overdraft_history::{Report, Run, Verdict, check::Evidence, format::Outcome};
use overdraft_server::config::Mode;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::{
    connect::ClientError,
    embedded,
    postmortem::{self, Incident, dollars},
    scenario::{BUILTIN, Scenario, run::run_mode},
};

/// The report's schema.
pub const DRILL_SCHEMA: u32 = 1;

/// Times a question is asked before the drill gives up on the trainee.
const ASKS_MAX: usize = 3;

/// The checker's search budget in a drill: scenarios are small.
const CHECK_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// `atm drill` arguments.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// A scenario (built-in name or TOML file); default: one chosen by the seed.
    pub scenario: Option<String>,
    /// Chooses the scenario and the mode; the same seed gives the same drill.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Answers from this TOML file (`mode`, `operations`, `cents`) instead of asking.
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// Run against this ledger instead of one embedded in this process.
    #[arg(long)]
    pub target: Option<String>,
    /// Print the graded result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A trainee's answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    /// The mode the ledger ran in.
    pub mode: String,
    /// The request_ids of the operations behind the incident (empty: none).
    #[serde(default)]
    pub operations: Vec<String>,
    /// The money that moved wrongly, in cents (0: none).
    #[serde(default)]
    pub cents: i64,
}

/// One graded question.
#[derive(Clone, Debug, Serialize)]
pub struct Grade {
    /// The question.
    pub question: &'static str,
    /// What the trainee said.
    pub given: String,
    /// The right answer.
    pub expected: String,
    /// 0.0 to 1.0.
    pub score: f64,
}

/// `atm drill --json`.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    /// [`DRILL_SCHEMA`].
    pub schema: u32,
    /// The scenario run.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The right answers.
    pub expected: Answers,
    /// Each question graded.
    pub grades: Vec<Grade>,
    /// Sum of the grades.
    pub score: f64,
    /// Out of.
    pub out_of: f64,
    /// The checker's verdict on the run.
    pub verdict: Verdict,
}

/// Runs the drill; Ok(true) when every answer was right.
pub async fn run(args: &DrillArgs) -> Result<bool, ClientError> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let name = match &args.scenario {
        Some(name) => name.clone(),
        None => {
            // Scenarios that crash the ledger need a ledger process of
            // their own, and those over replicas a PostgreSQL database.
            let candidates: Vec<&str> = BUILTIN
                .iter()
                .filter(|(name, text)| {
                    Scenario::parse(name, text)
                        .is_ok_and(|s| s.crash.is_none() && s.replicas.is_none())
                })
                .map(|(name, _)| *name)
                .collect();
            candidates[rng.random_range(0..candidates.len())].to_owned()
        }
    };
    let scenario = Scenario::load(&name).map_err(|e| ClientError::Usage(e.to_string()))?;
    if scenario.crash.is_some() || scenario.replicas.is_some() {
        return Err(ClientError::Usage(format!(
            "scenario {name} crashes the ledger or starts replicas of its own; drills run scenarios on one ledger (see atm scenario --list)"
        )));
    }
    let modes = scenario.modes();
    let mode = modes[rng.random_range(0..modes.len())];
    let ledger = embedded::Ledger::target_or_embedded(args.target.clone(), args.seed).await?;
    let dir = tempfile::tempdir().map_err(|e| ClientError::Internal(e.to_string()))?;
    let path = dir.path().join("drill.jsonl");
    run_mode(&ledger.url, &scenario, mode, Some(&path)).await?;
    ledger.stop().await?;
    let history = overdraft_history::read_files(&[&path])
        .map_err(|e| ClientError::Internal(e.to_string()))?;
    let report = overdraft_history::check(&history, &Evidence::default(), CHECK_BUDGET);
    let expected = expected_answers(&report, mode);
    let answers = match &args.answers {
        Some(file) => read_answers(file)?,
        None => {
            print!("{}", symptoms(&scenario, &history, &report));
            ask()?
        }
    };
    if args.answers.is_some() && !args.json {
        print!("{}", symptoms(&scenario, &history, &report));
    }
    let grades = grade(&answers, &expected);
    let score: f64 = grades.iter().map(|g| g.score).sum();
    let out_of = grades.len() as f64;
    let drill = DrillReport {
        schema: DRILL_SCHEMA,
        scenario: scenario.name.clone(),
        seed: args.seed,
        expected,
        grades,
        score,
        out_of,
        verdict: report.verdict,
    };
    if args.json {
        println!("{}", crate::report::to_json(&drill));
    } else {
        print!("{}", reveal(&drill, &history, &report));
    }
    Ok((score - out_of).abs() < f64::EPSILON)
}

/// The right answers, from the checker.
pub fn expected_answers(report: &Report, mode: Mode) -> Answers {
    let lead = report
        .anomalies
        .iter()
        .find(|a| {
            a.kind != overdraft_history::AnomalyKind::MoneyCreated
                && a.kind != overdraft_history::AnomalyKind::MoneyDestroyed
        })
        .or(report.anomalies.first());
    let mut operations: Vec<String> = lead
        .map(|a| a.operations.iter().map(|w| w.label.clone()).collect())
        .unwrap_or_default();
    operations.sort();
    operations.dedup();
    let cents = if report.money.delta_cents != 0 {
        i64::try_from(report.money.delta_cents.abs()).unwrap_or(i64::MAX)
    } else {
        lead.map_or(0, |a| a.cents.abs())
    };
    Answers {
        mode: mode.as_str().to_owned(),
        operations,
        cents,
    }
}

fn read_answers(path: &std::path::Path) -> Result<Answers, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Usage(format!("cannot read --answers {}: {e}", path.display()))
    })?;
    let answers: Answers = toml::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("--answers {}: {e}", path.display())))?;
    if Mode::ALL.iter().all(|m| m.as_str() != answers.mode) {
        return Err(ClientError::Usage(format!(
            "--answers {}: mode {:?} is not unsafe, mutex, cas or actor",
            path.display(),
            answers.mode
        )));
    }
    Ok(answers)
}

/// Asks the three questions on the terminal.
fn ask() -> Result<Answers, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "no terminal to ask the questions on: pass --answers FILE (TOML: mode, operations, cents)".into(),
        ));
    }
    let line = |question: &str| -> Result<String, ClientError> {
        print!("{question} ");
        std::io::stdout()
            .flush()
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        Ok(answer.trim().to_owned())
    };
    // Each question is asked again until its answer fits, a few times at most.
    let until_valid =
        |question: &str, valid: &dyn Fn(&str) -> bool| -> Result<String, ClientError> {
            for _ in 0..ASKS_MAX {
                let answer = line(question)?;
                if valid(&answer) {
                    return Ok(answer);
                }
                println!("   (that does not fit the question; try again)");
            }
            Err(ClientError::Usage(format!(
                "no usable answer after {ASKS_MAX} tries"
            )))
        };
    let mode = until_valid(
        "\n1. Which mode was the ledger running (unsafe, mutex, cas, actor)?",
        &|answer| {
            Mode::ALL
                .iter()
                .any(|m| m.as_str() == answer.to_ascii_lowercase())
        },
    )?;
    let operations = line(
        "2. Which operations caused it? request_ids, comma-separated (none if nothing went wrong):",
    )?;
    let cents = until_valid(
        "3. How much money moved wrongly, in cents (0 if none)?",
        &|answer| answer.parse::<u64>().is_ok(),
    )?;
    Ok(Answers {
        mode: mode.to_ascii_lowercase(),
        operations: operations
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(str::to_owned)
            .collect(),
        cents: cents.parse().unwrap_or(0),
    })
}

/// What the support desk sees: no audit, no checker; the complaint is what
/// the customers lived through, in their words.
pub fn symptoms(scenario: &Scenario, run: &Run, report: &Report) -> String {
    let mut out = format!("DRILL: {}\n\n", scenario.story);
    // Reconciliation: each account's opening plus what its customers were told, against the final read.
    let mut told: BTreeMap<u32, i128> = BTreeMap::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for op in &run.ops {
        if op.final_read {
            continue;
        }
        let status = match op.outcome {
            Outcome::Ok => "OK".to_owned(),
            _ => run
                .code(op)
                .map_or_else(|| op.outcome.as_str().to_owned(), str::to_owned),
        };
        *statuses.entry(status).or_default() += 1;
        if op.outcome == Outcome::Ok {
            for (account, delta) in op.legs() {
                *told.entry(account).or_default() += i128::from(delta);
            }
        }
    }
    out.push_str("Reconciliation (opening + acknowledged changes vs the balance read after):\n");
    for op in run.ops.iter().filter(|o| o.final_read) {
        let opening = run
            .openings
            .get(op.account as usize)
            .copied()
            .flatten()
            .unwrap_or(0);
        let expected = i128::from(opening) + told.get(&op.account).copied().unwrap_or(0);
        let actual = i128::from(op.balance_cents().unwrap_or(0));
        let note = if expected == actual {
            "matches".to_owned()
        } else {
            format!("OFF BY {}", dollars(actual - expected))
        };
        out.push_str(&format!(
            "  {:<12} opened {:>12}  told {:>12}  holds {:>12}  {note}\n",
            run.account_name(op.account),
            dollars(i128::from(opening)),
            dollars(expected),
            dollars(actual),
        ));
    }
    out.push_str("Statuses the ATMs got:\n");
    for (status, count) in &statuses {
        out.push_str(&format!("  {status}: {count}\n"));
    }
    out.push_str("Faults set up for the run:\n");
    out.push_str(&format!(
        "  race window {}-{} ms; start barrier {}; lost replies {}; slow owner {} ms; idempotency {}\n",
        scenario.race_window_ms[0],
        scenario.race_window_ms[1],
        if scenario.barrier { "yes" } else { "no" },
        scenario.lost_acks,
        scenario.slow_owner_ms,
        if scenario.idempotency { "on" } else { "off" },
    ));
    out.push_str("The complaint:\n");
    out.push_str(&format!("  \"{}\"\n", complaint(report)));
    out
}

fn complaint(report: &Report) -> &'static str {
    use overdraft_history::AnomalyKind as Kind;
    if report.count(Kind::DoubleApplication) > 0 {
        "My card was charged twice for one withdrawal. My receipts add up; my money does not."
    } else if report.count(Kind::Overdraft) > 0 {
        "The bank paid out more than the account ever held, and every ATM said OK."
    } else if report.money.delta_cents < 0 {
        "A deposit I have a receipt for is not in my balance."
    } else if report.money.delta_cents > 0 {
        "Treasury says the bank is short: balances hold more than the flows explain."
    } else if !report.anomalies.is_empty() {
        "The balance the ATM showed me was not the one the teller saw."
    } else {
        "Nobody has complained. The risk team asks whether this ledger is safe to scale."
    }
}

/// Grades each answer. When nothing went wrong the symptoms cannot tell
/// the safe modes apart, so any safe mode is right.
pub fn grade(answers: &Answers, expected: &Answers) -> Vec<Grade> {
    let clean = expected.operations.is_empty() && expected.cents == 0;
    let safe = |mode: &str| ["mutex", "cas", "actor"].contains(&mode.to_ascii_lowercase().as_str());
    let mode_right = answers.mode.eq_ignore_ascii_case(&expected.mode)
        || (clean && safe(&answers.mode) && safe(&expected.mode));
    let mode_score = if mode_right { 1.0 } else { 0.0 };
    let given: std::collections::BTreeSet<&str> =
        answers.operations.iter().map(String::as_str).collect();
    let wanted: std::collections::BTreeSet<&str> =
        expected.operations.iter().map(String::as_str).collect();
    // Credit for each culprit named, less for each innocent accused.
    let ops_score = if wanted.is_empty() {
        if given.is_empty() { 1.0 } else { 0.0 }
    } else {
        let hits = given.intersection(&wanted).count() as f64;
        let misses = given.difference(&wanted).count() as f64;
        ((hits - misses) / wanted.len() as f64).clamp(0.0, 1.0)
    };
    let cents_score = if answers.cents == expected.cents {
        1.0
    } else {
        0.0
    };
    vec![
        Grade {
            question: "Which mode was the ledger running?",
            given: answers.mode.clone(),
            expected: if clean && safe(&expected.mode) {
                format!("{} (any safe mode: nothing went wrong)", expected.mode)
            } else {
                expected.mode.clone()
            },
            score: mode_score,
        },
        Grade {
            question: "Which operations caused it?",
            given: answers.operations.join(", "),
            expected: if expected.operations.is_empty() {
                "none".to_owned()
            } else {
                expected.operations.join(", ")
            },
            score: ops_score,
        },
        Grade {
            question: "How much money moved wrongly (cents)?",
            given: answers.cents.to_string(),
            expected: expected.cents.to_string(),
            score: cents_score,
        },
    ]
}

fn reveal(drill: &DrillReport, run: &Run, report: &Report) -> String {
    let mut out = String::from("\nGRADES\n");
    for g in &drill.grades {
        out.push_str(&format!(
            "  {:.2}  {}  you said: {}; the answer: {}\n",
            g.score, g.question, g.given, g.expected
        ));
    }
    out.push_str(&format!(
        "  score {:.2} / {:.0}\n\nWHAT THE CHECKER FOUND\n",
        drill.score, drill.out_of
    ));
    out.push_str(&crate::check::text(report, 3));
    let incident = Incident {
        run,
        report,
        journal: None,
        faults: None,
        resolutions: Vec::new(),
    };
    out.push_str("\nTHE POSTMORTEM\n\n");
    out.push_str(&postmortem::markdown(&incident));
    out
}
