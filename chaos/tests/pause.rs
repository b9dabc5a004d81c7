//! The pause fault on a real process: `chaos pause --pid` and a schedule's
//! pause phase stop a running process (SIGSTOP) for the time asked and let
//! it go on (SIGCONT), writing both to the fault log; bad input is refused
//! before any process is touched.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

fn chaos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .expect("the chaos binary runs")
}

/// A process that prints a line every 20 ms, and the times the lines arrive.
fn ticker() -> (Child, mpsc::Receiver<Instant>) {
    let mut child = Command::new("sh")
        .args(["-c", "while :; do echo tick; sleep 0.02; done"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let stdout = child.stdout.take().expect("piped");
    let (sender, ticks) = mpsc::channel();
    std::thread::spawn(move || {
        for _line in BufReader::new(stdout).lines() {
            if sender.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    (child, ticks)
}

/// The longest silence between ticks over `watch`, and whether ticks came after it.
fn longest_gap(ticks: &mpsc::Receiver<Instant>, watch: Duration) -> (Duration, bool) {
    let until = Instant::now() + watch;
    let mut last = ticks
        .recv_timeout(Duration::from_secs(5))
        .expect("a first tick");
    let (mut gap, mut gap_ended_at) = (Duration::ZERO, last);
    while Instant::now() < until {
        if let Ok(tick) = ticks.recv_timeout(Duration::from_millis(50)) {
            if tick - last > gap {
                gap = tick - last;
                gap_ended_at = tick;
            }
            last = tick;
        }
    }
    (gap, last > gap_ended_at)
}

/// Goal: `chaos pause --pid P --for 600ms` stops P for about that long and
/// then it goes on; the fault log holds the pause and the resume. Method: a
/// shell printing every 20 ms; the longest silence is measured from outside.
#[test]
fn chaos_pause_stops_a_process_for_the_time_asked() {
    let (mut child, ticks) = ticker();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("faults.jsonl");
    let pid = child.id().to_string();
    let pausing = std::thread::spawn({
        let log = log.clone();
        move || {
            std::thread::sleep(Duration::from_millis(200));
            chaos(&[
                "pause",
                "--pid",
                &pid,
                "--for",
                "600ms",
                "--fault-log",
                log.to_str().unwrap(),
            ])
        }
    });
    let (gap, went_on) = longest_gap(&ticks, Duration::from_millis(1_500));
    let output = pausing.join().unwrap();
    child.kill().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(gap >= Duration::from_millis(550), "longest silence {gap:?}");
    assert!(
        gap < Duration::from_millis(1_200),
        "longest silence {gap:?}"
    );
    assert!(went_on, "the process went on after the pause");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["action"], "apply");
    assert_eq!(lines[1]["action"], "remove");
    assert_eq!(lines[0]["fault"]["kind"], "pause");
}

/// Goal: a schedule's pause phase pauses for the phase's length. Method: a
/// 500 ms phase starting at 200 ms against the ticking shell.
#[test]
fn a_schedule_pause_phase_stops_the_process_for_its_length() {
    let (mut child, ticks) = ticker();
    let dir = tempfile::tempdir().unwrap();
    let schedule = dir.path().join("pause.toml");
    std::fs::write(
        &schedule,
        format!(
            "name = \"stall\"\n[[phase]]\nname = \"stall\"\nstart_ms = 200\nduration_ms = 500\n\
             [[phase.fault]]\nkind = \"pause\"\npid = {}\n",
            child.id()
        ),
    )
    .unwrap();
    let log = dir.path().join("faults.jsonl");
    let running = std::thread::spawn({
        let (schedule, log) = (schedule.clone(), log.clone());
        move || {
            chaos(&[
                "run",
                schedule.to_str().unwrap(),
                "--fault-log",
                log.to_str().unwrap(),
            ])
        }
    });
    let (gap, went_on) = longest_gap(&ticks, Duration::from_millis(1_400));
    let output = running.join().unwrap();
    child.kill().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(gap >= Duration::from_millis(450), "longest silence {gap:?}");
    assert!(went_on);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
}

/// Goal: bad pauses are refused with the field and the rule, exit code 2
/// from clap or 1 from the check, and nothing is paused. Method: both
/// targets, neither, pid 1, a zero and an overlong duration, a bad
/// container name.
#[test]
fn bad_pauses_are_refused_naming_the_field() {
    let refused = |args: &[&str], words: &[&str]| {
        let output = chaos(args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in words {
            assert!(stderr.contains(word), "{args:?}: {stderr}");
        }
    };
    refused(
        &["pause", "--pid", "99", "--container", "x", "--for", "1s"],
        &["--container"],
    );
    refused(&["pause", "--for", "1s"], &["--pid"]);
    refused(&["pause", "--pid", "1", "--for", "1s"], &["pid", "init"]);
    refused(
        &["pause", "--pid", "99", "--for", "0s"],
        &["--for", "above 0"],
    );
    refused(&["pause", "--pid", "99", "--for", "2h"], &["--for", "10m"]);
    refused(
        &["pause", "--container", "a b", "--for", "1s"],
        &["container", "A-Z"],
    );
    refused(
        &["pause", "--container=-q", "--for", "1s"],
        &["container", "starting with"],
    );
}
