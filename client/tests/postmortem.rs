//! `atm postmortem` and `atm scenario --postmortem`: the report names the
//! right operations and the right money, and its page renders.

mod common;

use overdraft_client::scenario::{Scenario, run::run_mode};
use overdraft_server::config::Mode;

async fn history(url: &str, name: &str, mode: Mode, dir: &std::path::Path) -> std::path::PathBuf {
    let scenario = Scenario::load(name).unwrap();
    let path = dir.join(format!("{name}-{mode}.jsonl"));
    let outcome = run_mode(url, &scenario, mode, Some(&path)).await.unwrap();
    assert!(outcome.passed, "{:?}", outcome.failures);
    path
}

/// Pixels of a PNG that are not (near) white.
fn inked_pixels(png_path: &std::path::Path) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    buffer[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| px.iter().take(3).any(|&c| c < 200))
        .count()
}

/// Goal: the postmortem of double-withdrawal in unsafe mode names both
/// withdrawals, the $600 created and the $200 overdraft, shows the
/// interleaving one column per ATM, and its page renders in Chromium with
/// the swimlanes drawn and the two culprits outlined. Method: the scenario's
/// history from an embedded ledger, `atm postmortem` (the binary), then
/// headless Chromium's DOM and a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_withdrawal_postmortem_names_the_culprits_and_renders() {
    let ledger = common::ledger().await;
    let dir = tempfile::tempdir().unwrap();
    let path = history(&ledger.url(), "double-withdrawal", Mode::Unsafe, dir.path()).await;
    ledger.stop().await.unwrap();
    let report = dir.path().join("report.md");
    let page = dir.path().join("report.html");
    let output = common::atm(&[
        "postmortem",
        path.to_str().unwrap(),
        "-o",
        report.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "anomalies: exit 1");
    let text = std::fs::read_to_string(&report).unwrap();
    for heading in [
        "## Summary",
        "## Impact",
        "## Root cause",
        "## Trigger",
        "## Detection",
        "## Resolution",
        "## Timeline (UTC)",
        "## Action items",
        "## Lessons learned",
    ] {
        assert!(text.contains(heading), "{heading} missing:\n{text}");
    }
    assert!(text.contains("**Money:** $600.00 created"), "{text}");
    assert!(
        text.contains("**Overdrafts:** 1, the deepest $200.00 below the floor"),
        "{text}"
    );
    assert!(
        text.contains("| t (ms) | atm#"),
        "the interleaving table:\n{text}"
    );
    assert_eq!(
        text.matches("reads $1000.00 at v0").count(),
        2,
        "both read the same state:\n{text}"
    );
    let history = std::fs::read_to_string(&path).unwrap();
    let withdrawals: Vec<String> = history
        .lines()
        .filter(|l| l.contains("\"withdraw\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(withdrawals.len(), 2);
    for id in &withdrawals {
        assert!(text.contains(id.as_str()), "{id} named:\n{text}");
    }

    let dom = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .await
        .expect("Debian's chromium is installed (.ci/run installs it)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("<svg id=\"swimlanes\""), "swimlanes rendered");
    assert_eq!(
        dom.matches(" witness\"").count(),
        2,
        "the two culprits outlined"
    );
    assert!(
        !dom.contains("http://")
            || dom
                .matches("http://")
                .all(|_| dom.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    );
    let shot = dir.path().join("report.png");
    let status = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--window-size=1200,900",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .await
        .unwrap()
        .status;
    assert!(status.success());
    let inked = inked_pixels(&shot);
    assert!(
        inked > 10_000,
        "the screenshot is not blank: {inked} inked pixels"
    );
}

/// Goal: `atm scenario retry-double-charge --postmortem DIR` writes one
/// report per mode that showed the anomaly (all four: the keyless retry is
/// charged twice whatever the mode), each naming the $100 charged twice and
/// the ATM without a key. Method: the binary, against its embedded ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_double_charge_postmortems_name_the_double_charge_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::atm(&[
        "scenario",
        "retry-double-charge",
        "--postmortem",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for mode in Mode::ALL {
        let path = dir.path().join(format!("retry-double-charge-{mode}.md"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains("Customer charged twice on no-key"), "{text}");
        assert!(
            text.contains("**Customers charged twice:** 1, $100.00"),
            "{text}"
        );
        assert!(text.contains("atm-without-key"), "{text}");
        assert!(text.contains("Locks do not help"), "{text}");
        assert!(
            dir.path()
                .join(format!("retry-double-charge-{mode}.html"))
                .exists()
        );
    }
}
