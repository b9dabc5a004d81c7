//! The `chaos` command line, as a user runs it: the shipped schedules plan
//! the same way for the same seed, and bad input is refused with the field
//! named and exit code 2, before anything is contacted.

use std::process::{Command, Output};

fn chaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the chaos binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Goal: `--dry-run` prints the seed, every phase and the plan, identically
/// for one seed and differently for another (the jitter is seeded).
/// Method: the shipped network-storm schedule, seeds 7, 7 and 8.
#[test]
fn dry_run_prints_the_same_plan_for_the_same_seed() {
    let run = |seed: &str| {
        let output = chaos(&[
            "run",
            "schedules/network-storm.toml",
            "--seed",
            seed,
            "--dry-run",
        ]);
        assert!(output.status.success(), "{output:?}");
        stdout(&output)
    };
    let first = run("7");
    assert!(first.contains("seed 7"), "{first}");
    assert!(first.contains("phase \"slow-network\""), "{first}");
    assert!(
        first.contains("retry-storm.0.duplicate_request.0"),
        "{first}"
    );
    assert_eq!(first, run("7"));
    assert_ne!(
        first.replace("seed 8", "seed 7"),
        run("8").replace("seed 8", "seed 7")
    );
}

/// Goal: a bad fault or schedule is refused naming the field and the rule,
/// with exit code 2. Method: an out-of-bounds latency, an unknown key, a
/// ledger fault without --target.
#[test]
fn bad_input_names_the_field_and_exits_2() {
    let output = chaos(&["fault", "add", "latency", "latency_ms=99999999"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("latency_ms: must be at most 60000"),
        "{stderr}"
    );

    let output = chaos(&["fault", "add", "latency", "latncy_ms=5"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("latncy_ms"));

    let output = chaos(&[
        "run",
        "schedules/network-storm.toml",
        "--proxy",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pass --target"), "{stderr}");
}
