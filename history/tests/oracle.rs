//! The fast checker against the brute-force oracle on thousands of small
//! random histories, correct and corrupted.

use std::time::Duration;

use overdraft_history::{
    Verdict,
    check::{Evidence, check},
    format::Policy,
    generate::{self, Config, Corruption},
    oracle::{self, Answer},
    read::read_reader,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn small(seed: u64, rng: &mut StdRng) -> Config {
    Config {
        seed,
        accounts: rng.random_range(1..=3),
        atms: rng.random_range(2..=4),
        operations: rng.random_range(2..=8),
        policy: if rng.random_bool(0.3) {
            Policy::Fee {
                fee_cents: 25,
                floor_cents: -100,
            }
        } else {
            Policy::Reject
        },
        opening_cents: rng.random_range(0..=300),
        amount_cents_max: 200,
        mix: [30, 35, 20, 15],
        unknown_probability: 0.2,
        latency_ns_max: 1_000,
        think_ns_max: 300,
        mode: "mutex".to_owned(),
    }
}

/// Goal: the fast checker says valid exactly when some order of the
/// operations (and some fate of each unknown outcome) fits the bank model.
/// Method: 40,000 seeded histories from a simulated correct ledger, half of
/// them corrupted one of seven ways; each judged by both checkers.
#[test]
fn fast_checker_agrees_with_brute_force_on_small_histories() {
    let mut rng = StdRng::seed_from_u64(20261201);
    let (mut valid, mut invalid, mut corrupted) = (0u32, 0u32, 0u32);
    let mut disagreements = Vec::new();
    for seed in 0..40_000u64 {
        let config = small(seed, &mut rng);
        let mut lines = generate::lines(&config);
        let mut applied = None;
        if seed % 2 == 1 {
            let corruption = Corruption::ALL[rng.random_range(0..Corruption::ALL.len())];
            if generate::corrupt(&mut lines, corruption, &mut rng) {
                applied = Some(corruption);
                corrupted += 1;
            }
        }
        let text = lines.join("\n");
        let run = read_reader("generated", text.as_bytes()).expect("generated histories read");
        let expected = oracle::judge(&run);
        assert_ne!(
            expected,
            Answer::TooLarge,
            "seed {seed}: small histories fit the oracle"
        );
        let report = check(&run, &Evidence::default(), Duration::from_secs(5));
        let fast_valid = report.verdict == Verdict::Valid;
        match expected {
            Answer::Valid => valid += 1,
            _ => invalid += 1,
        }
        if fast_valid != (expected == Answer::Valid) {
            disagreements.push(format!(
                "seed {seed} ({applied:?}): oracle {expected:?}, checker {:?} {:?}\n{text}",
                report.verdict,
                report
                    .anomalies
                    .iter()
                    .map(|a| (&a.kind, &a.detail))
                    .collect::<Vec<_>>()
            ));
        }
    }
    eprintln!("{valid} valid, {invalid} invalid ({corrupted} corrupted)");
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s); first:\n{}",
        disagreements.len(),
        disagreements.first().map_or("", String::as_str)
    );
    assert!(valid > 1_000 && invalid > 500, "both halves are exercised");
}

/// Goal: histories whose replies carry no versions (so the checker must
/// search for an order) get the oracle's verdict too. Method: 4,000 small
/// histories without transfers (the search judges each account alone, the
/// oracle transfers at one instant), versions stripped, half corrupted.
#[test]
fn the_search_agrees_with_brute_force_on_histories_without_versions() {
    let mut rng = StdRng::seed_from_u64(20261202);
    let (mut valid, mut invalid) = (0u32, 0u32);
    let mut disagreements = Vec::new();
    for seed in 0..4_000u64 {
        let mut config = small(seed, &mut rng);
        config.mix = [35, 40, 0, 25];
        let mut lines = generate::lines(&config);
        if seed % 2 == 1 {
            let corruption = [
                Corruption::Balance,
                Corruption::Refusal,
                Corruption::WrongRefusal,
                Corruption::Time,
            ][rng.random_range(0..4)];
            generate::corrupt(&mut lines, corruption, &mut rng);
        }
        let stripped: Vec<String> = lines
            .iter()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                if value["op"] != "open"
                    && value.get("schema").is_none()
                    && let Some(object) = value.as_object_mut()
                {
                    object.remove("version");
                }
                value.to_string()
            })
            .collect();
        let text = stripped.join("\n");
        let run = read_reader("generated", text.as_bytes()).unwrap();
        let expected = oracle::judge(&run);
        let report = check(&run, &Evidence::default(), Duration::from_secs(5));
        assert_ne!(
            report.verdict,
            Verdict::Unknown,
            "seed {seed}: small searches finish"
        );
        match expected {
            Answer::Valid => valid += 1,
            _ => invalid += 1,
        }
        if (report.verdict == Verdict::Valid) != (expected == Answer::Valid) {
            disagreements.push(format!(
                "seed {seed}: oracle {expected:?}, checker {:?}\n{text}",
                report.verdict
            ));
        }
    }
    eprintln!("{valid} valid, {invalid} invalid");
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s); first:\n{}",
        disagreements.len(),
        disagreements[0]
    );
    assert!(valid > 1_000 && invalid > 300, "both halves are exercised");
}
