//! The ATM's exit codes and error lines: 0 when expectations hold, 1 when
//! not, 2 on usage or connection errors, never a panic or a stack trace.

mod common;

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_one_clean_line(stderr: &str) {
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
}

/// Goal: an unreachable or refused target gives exit 2 and one line saying
/// what to do. Operation: a port nothing listens on, and a malformed URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_exits_2_with_one_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let target = format!("127.0.0.1:{port}");
    for args in [
        vec!["load", "--target", target.as_str(), "--ops", "10"],
        vec!["scenario", "counter", "--target", target.as_str()],
        vec!["demo", "--target", target.as_str()],
    ] {
        let output = common::atm(&args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output);
        assert_one_clean_line(&stderr);
        assert!(
            stderr.contains("cannot reach the ledger") && stderr.contains("is `ledger` running"),
            "{stderr}"
        );
    }
    let output = common::atm(&["load", "--target", "http://[::1", "--ops", "1"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("not a valid URL"),
        "{}",
        text(&output)
    );
}

/// Goal: bad flags and ranges exit 2 naming the flag and the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_2_naming_the_rule() {
    for (args, words) in [
        (
            vec!["load", "--target", "x:1", "--amount-cents", "9..5"],
            "MIN <= MAX",
        ),
        (
            vec!["load", "--target", "x:1", "--mix", "teleport=5"],
            "unknown method",
        ),
        (
            vec!["load", "--target", "x:1", "--skew", "hot:3"],
            "hot probability",
        ),
        (
            vec!["load", "--target", "x:1", "--duration", "5s", "--ops", "3"],
            "cannot be used with",
        ),
        (vec!["load", "--target", "x:1", "--atms", "0"], "--atms"),
        (
            vec!["load", "--target", "x:1", "--threads", "0"],
            "--threads",
        ),
        (
            vec!["compare", "--target", "x:1", "--threads", "999"],
            "--threads",
        ),
        (
            vec!["compare", "--target", "x:1", "--modes", "unsafe,quantum"],
            "quantum",
        ),
        (vec!["scenario", "write-skew"], "give --database-url"),
        (
            vec![
                "scenario",
                "write-skew",
                "--target",
                "x:1",
                "--database-url",
                "postgresql://x@127.0.0.1:1/x",
            ],
            "drop --target",
        ),
        (
            vec![
                "scenario",
                "paused-owner",
                "--database-url",
                "postgresql://x@127.0.0.1:1/x",
                "--mode",
                "cas",
            ],
            "runs actor/unfenced, actor/fenced; none is in the mode",
        ),
    ] {
        let output = common::atm(&args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(text(&output).contains(words), "{args:?}: {}", text(&output));
    }
}

/// Goal: a malformed scenario file is refused with exit 2 and the file,
/// line and field; an unknown scenario name says how to list them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_scenario_file_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "name = \"broken\"\naccounts = [{ id = \"a\", opening_cents = 100 }]\n\n[[atms]]\nname = \"atm\"\nscript = [{ op = \"withdraw\", acount = \"a\", amount_cents = 5 }]\n",
    )
    .unwrap();
    let output = common::atm(&["scenario", path.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output);
    assert_one_clean_line(&stderr);
    assert!(stderr.contains("broken.toml:6:"), "{stderr}");
    assert!(stderr.contains("acount"), "{stderr}");
    assert!(
        !stderr.contains("internal"),
        "a user's mistake is not an internal error: {stderr}"
    );

    let output = common::atm(&["scenario", "no-such-incident"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("atm scenario --list"),
        "{}",
        text(&output)
    );
}

/// Goal: a scenario whose expectation does not hold exits 1 and says which.
/// Operation: the double withdrawal expecting the wrong balance in mutex mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_expectation_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.toml");
    let text_in = overdraft_client::scenario::builtin("double-withdrawal")
        .unwrap()
        .replace(
            "balances = { joint = [40000] }",
            "balances = { joint = [12345] }",
        );
    std::fs::write(&path, text_in).unwrap();
    let output = common::atm(&["scenario", path.to_str().unwrap(), "--mode", "mutex"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("expected joint to hold one of [12345] cents; it holds 40000"),
        "{stdout}"
    );
    assert!(stdout.contains("replay: atm scenario"), "{stdout}");
}
