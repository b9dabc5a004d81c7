//! The checker against a corpus of histories under tests/histories/: each
//! known-bad one must raise exactly the anomalies it names, with the right
//! operations and money; each known-good one must come back valid.

use std::{path::PathBuf, time::Duration};

use overdraft_history::{
    Verdict,
    check::{Evidence, check},
    read_files,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Corpus {
    history: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    files: Vec<String>,
    #[serde(default)]
    journal: Option<String>,
    story: String,
    verdict: String,
    #[serde(default)]
    kinds: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    anomaly: Vec<Expected>,
}

#[derive(Deserialize)]
struct Expected {
    kind: String,
    request_ids: Vec<String>,
    cents: i64,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("histories")
}

/// Goal: every anomaly kind is caught with its witnesses and its money, and
/// correct histories (transfers, refusals, unknown outcomes, replays, fees,
/// format 1, several files) are not flagged. Method: the corpus and its
/// expectations file, checked one entry at a time.
#[test]
fn the_checker_names_each_known_anomaly_and_passes_each_correct_history() {
    let text = std::fs::read_to_string(corpus_dir().join("expectations.toml")).unwrap();
    let corpus: Corpus = toml::from_str(&text).unwrap();
    let mut kinds_covered = std::collections::BTreeSet::new();
    for entry in &corpus.history {
        let paths: Vec<PathBuf> = entry.files.iter().map(|f| corpus_dir().join(f)).collect();
        let run = read_files(&paths).unwrap_or_else(|e| panic!("{:?}: {e}", entry.files));
        let journal = entry
            .journal
            .as_ref()
            .map(|j| overdraft_history::evidence::Journal::read(&corpus_dir().join(j)).unwrap());
        let evidence = Evidence {
            journal: journal.as_ref(),
            faults: None,
        };
        let report = check(&run, &evidence, Duration::from_secs(5));
        let context = format!(
            "{:?} ({}): {:#?}",
            entry.files,
            entry.story,
            report
                .anomalies
                .iter()
                .map(|a| (&a.kind, &a.detail))
                .collect::<Vec<_>>()
        );
        let verdict = match report.verdict {
            Verdict::Valid => "valid",
            Verdict::Anomalies => "anomalies",
            Verdict::Unknown => "unknown",
        };
        assert_eq!(verdict, entry.verdict, "{context}");
        for (kind, count) in report.counts_by_kind.iter().filter(|(_, n)| *n > 0) {
            assert_eq!(
                entry.kinds.get(kind.as_str()),
                Some(count),
                "{context}: unexpected count of {kind}"
            );
        }
        for (kind, count) in &entry.kinds {
            let found = report
                .counts_by_kind
                .iter()
                .find(|(k, _)| k.as_str() == kind);
            assert_eq!(found.map(|(_, n)| n), Some(count), "{context}: {kind}");
            kinds_covered.insert(kind.clone());
        }
        for expected in &entry.anomaly {
            let anomaly = report
                .anomalies
                .iter()
                .find(|a| a.kind.as_str() == expected.kind)
                .unwrap_or_else(|| panic!("{context}: no {}", expected.kind));
            let mut named: Vec<&str> = anomaly
                .operations
                .iter()
                .map(|w| w.label.as_str())
                .collect();
            let mut wanted: Vec<&str> = expected.request_ids.iter().map(String::as_str).collect();
            named.sort_unstable();
            wanted.sort_unstable();
            assert_eq!(named, wanted, "{context}: operations of {}", expected.kind);
            assert_eq!(
                anomaly.cents, expected.cents,
                "{context}: cents of {}",
                expected.kind
            );
        }
    }
    assert_eq!(
        kinds_covered.len(),
        overdraft_history::AnomalyKind::ALL.len(),
        "every anomaly kind has a history in the corpus: {kinds_covered:?}"
    );
}

/// Goal: each anomaly lists the faults active while it happened, lined up
/// by wall clock, and only those. Method: double-withdrawal (its operations
/// 1-53 us after 2025-12-01T00:00:00Z) with a fault log holding a latency
/// fault applied 1 s before and removed 1 s after, and a drop_response
/// applied 100 s later.
#[test]
fn anomalies_name_the_faults_active_at_the_time() {
    let run = read_files(&[corpus_dir().join("bad/double-withdrawal.jsonl")]).unwrap();
    let log = overdraft_history::evidence::FaultLog::read(&corpus_dir().join("faults/storm.jsonl"))
        .unwrap();
    assert_eq!(log.spans.len(), 2);
    let evidence = Evidence {
        journal: None,
        faults: Some(&log),
    };
    let report = check(&run, &evidence, Duration::from_secs(5));
    assert_eq!(report.verdict, Verdict::Anomalies);
    for anomaly in &report.anomalies {
        let ids: Vec<&str> = anomaly.faults.iter().map(|f| f.fault_id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["latency-1"],
            "{:?}: {:?}",
            anomaly.kind,
            anomaly.faults
        );
        assert_eq!(anomaly.faults[0].phase.as_deref(), Some("storm"));
    }
}

/// Goal: a gap the search cannot settle in its budget makes the verdict
/// unknown: never valid, and never a false anomaly. Method: the history with
/// a lost reply that fills a gap, checked with a budget of zero and then
/// with one second (a negative control: valid).
#[test]
fn a_search_past_its_budget_is_unknown_never_valid_nor_an_anomaly() {
    let run = read_files(&[corpus_dir().join("good/unknown-outcomes.jsonl")]).unwrap();
    let starved = check(&run, &Evidence::default(), Duration::ZERO);
    assert_eq!(starved.verdict, Verdict::Unknown, "{:?}", starved.anomalies);
    assert!(starved.anomalies.is_empty());
    assert_eq!(starved.undecided.len(), 1, "{:?}", starved.undecided);
    assert_eq!(starved.verdict.exit_code(), 3);
    let fed = check(&run, &Evidence::default(), Duration::from_secs(1));
    assert_eq!(fed.verdict, Verdict::Valid);
}

/// Goal: a journal from another run is flagged, and this run's is not.
/// Method: keyed-retry with its own journal, then with the same entries
/// committed a day later.
#[test]
fn a_journal_outside_the_runs_time_is_flagged() {
    let run = read_files(&[corpus_dir().join("good/keyed-retry.jsonl")]).unwrap();
    let check_with = |name: &str| {
        let journal = overdraft_history::evidence::Journal::read(&corpus_dir().join(name)).unwrap();
        let evidence = Evidence {
            journal: Some(&journal),
            faults: None,
        };
        check(&run, &evidence, Duration::from_secs(5))
    };
    let own = check_with("journals/keyed-retry.jsonl");
    assert!(own.warnings.is_empty(), "{:?}", own.warnings);
    let other = check_with("journals/another-day.jsonl");
    assert_eq!(other.warnings.len(), 1, "{:?}", other.warnings);
    assert!(other.warnings[0].contains("is it this run's journal"));
}
