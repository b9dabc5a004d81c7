//! `atm drill` driven by an answers file: right answers score full marks,
//! wrong ones do not.

mod common;

use serde_json::Value;

async fn drill(seed: u64, answers: &std::path::Path) -> (Option<i32>, Value) {
    let output = common::atm(&[
        "drill",
        "double-withdrawal",
        "--seed",
        &seed.to_string(),
        "--answers",
        answers.to_str().unwrap(),
        "--json",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code(), report)
}

/// Goal: in a double-withdrawal drill that ran in unsafe mode, wrong answers
/// (a safe mode, an innocent operation, no money) score below full marks,
/// and the right answers (unsafe, both withdrawals, $600) score 3 of 3.
/// Method: the binary with answers files; seeds tried until one draws the
/// unsafe mode (the seed chooses the mode), then the same seed replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_grades_right_answers_full_and_wrong_ones_less() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "mode = \"mutex\"\noperations = [\"nobody\"]\ncents = 1\n",
    )
    .unwrap();
    let mut found = None;
    for seed in 1..=16 {
        let (code, report) = drill(seed, &wrong).await;
        if report["expected"]["mode"] == "unsafe" {
            assert_eq!(code, Some(1), "wrong answers exit 1");
            assert_eq!(report["score"], 0.0, "{report}");
            found = Some((seed, report));
            break;
        }
    }
    let (seed, report) = found.expect("one of 16 seeds draws unsafe mode of four");
    let expected = &report["expected"];
    assert_eq!(expected["cents"], 60_000, "{report}");
    let operations: Vec<String> = expected["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(operations.len(), 2, "both withdrawals: {report}");

    let right = dir.path().join("right.toml");
    std::fs::write(
        &right,
        format!("mode = \"unsafe\"\noperations = {operations:?}\ncents = 60000\n"),
    )
    .unwrap();
    let (code, report) = drill(seed, &right).await;
    assert_eq!(report["score"], 3.0, "{report}");
    assert_eq!(code, Some(0));

    let half = dir.path().join("half.toml");
    std::fs::write(
        &half,
        format!(
            "mode = \"unsafe\"\noperations = [{:?}]\ncents = 60000\n",
            operations[0]
        ),
    )
    .unwrap();
    let (code, report) = drill(seed, &half).await;
    assert_eq!(report["score"], 2.5, "one of two culprits named: {report}");
    assert_eq!(code, Some(1));
}
