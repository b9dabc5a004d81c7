//! What the load generator sends: the operation mix, the amount range, the
//! account skew, and the seeded choice among them.

use std::str::FromStr;

use overdraft_history::format::Operation;
use overdraft_server::bank::AMOUNT_CENTS_MAX;
use rand::{Rng, rngs::StdRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

/// `--mix deposit=40,withdraw=40,transfer=15,balance=5`: relative weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mix {
    weights: Vec<(Operation, u32)>,
    total: u32,
}

impl Default for Mix {
    fn default() -> Self {
        "deposit=40,withdraw=40,transfer=15,balance=5"
            .parse()
            .unwrap_or(Self {
                weights: vec![(Operation::Deposit, 1)],
                total: 1,
            })
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("expected METHOD=WEIGHT, got `{part}`"))?;
            let method = Operation::ALL
                .into_iter()
                .find(|m| m.as_str() == name.trim())
                .ok_or_else(|| {
                    format!("unknown method `{name}`; use deposit, withdraw, transfer or balance")
                })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("weight of {name} must be a whole number 0..=1000, got `{weight}`")
            })?;
            if weight > 1_000 {
                return Err(format!(
                    "weight of {name} must be at most 1000, got {weight}"
                ));
            }
            if weights.iter().any(|(m, _)| *m == method) {
                return Err(format!("{name} is listed twice"));
            }
            weights.push((method, weight));
        }
        let total = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err("the weights must not all be zero".into());
        }
        Ok(Self { weights, total })
    }
}

impl Mix {
    /// Draws a method.
    pub fn pick(&self, rng: &mut StdRng) -> Operation {
        let mut roll = rng.random_range(0..self.total);
        for (method, weight) in &self.weights {
            if roll < *weight {
                return *method;
            }
            roll -= weight;
        }
        Operation::Deposit
    }

    /// True when transfers can be drawn (they need two accounts).
    pub fn has_transfers(&self) -> bool {
        self.weights
            .iter()
            .any(|(m, w)| *m == Operation::Transfer && *w > 0)
    }
}

/// `--amount-cents MIN..MAX`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AmountRange {
    /// Smallest amount.
    pub min: i64,
    /// Largest amount.
    pub max: i64,
}

impl FromStr for AmountRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (min, max) = text
            .split_once("..")
            .ok_or_else(|| format!("expected MIN..MAX in cents (e.g. 100..10000), got `{text}`"))?;
        let parse = |s: &str| {
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("`{s}` is not a whole number of cents"))
        };
        let (min, max) = (parse(min)?, parse(max)?);
        if min < 1 || max < min || max > AMOUNT_CENTS_MAX {
            return Err(format!(
                "need 1 <= MIN <= MAX <= {AMOUNT_CENTS_MAX}, got {min}..{max}"
            ));
        }
        Ok(Self { min, max })
    }
}

impl AmountRange {
    /// Draws an amount.
    pub fn pick(&self, rng: &mut StdRng) -> i64 {
        rng.random_range(self.min..=self.max)
    }
}

/// `--skew uniform|zipf:S|hot:P`: how accounts are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Skew {
    /// Every account equally likely.
    Uniform,
    /// Zipf with exponent `s`: account 0 is the most popular.
    Zipf {
        /// The exponent (> 0).
        s: f64,
    },
    /// Account 0 with probability `p`, otherwise uniform.
    Hot {
        /// Probability of the hot account, 0..=1.
        p: f64,
    },
}

impl FromStr for Skew {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "uniform" {
            return Ok(Self::Uniform);
        }
        let number = |prefix: &str, raw: &str| -> Result<f64, String> {
            raw.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("{prefix}: `{raw}` is not a number"))
        };
        if let Some(raw) = text.strip_prefix("zipf:") {
            let s = number("zipf", raw)?;
            if !(s > 0.0 && s <= 10.0) {
                return Err(format!("zipf exponent must be in (0, 10], got {s}"));
            }
            return Ok(Self::Zipf { s });
        }
        if let Some(raw) = text.strip_prefix("hot:") {
            let p = number("hot", raw)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("hot probability must be in [0, 1], got {p}"));
            }
            return Ok(Self::Hot { p });
        }
        Err(format!("expected uniform, zipf:S or hot:P, got `{text}`"))
    }
}

/// Picks account indexes under a skew.
#[derive(Clone, Debug)]
pub struct AccountPicker {
    accounts: u32,
    skew: Skew,
    zipf: Option<Zipf<f64>>,
}

impl AccountPicker {
    /// A picker over `accounts` accounts.
    pub fn new(accounts: u32, skew: Skew) -> Self {
        let zipf = match skew {
            Skew::Zipf { s } => Zipf::new(f64::from(accounts.max(1)), s).ok(),
            _ => None,
        };
        Self {
            accounts: accounts.max(1),
            skew,
            zipf,
        }
    }

    /// Draws an account index.
    pub fn pick(&self, rng: &mut StdRng) -> u32 {
        match (self.skew, &self.zipf) {
            (Skew::Hot { p }, _) if rng.random_bool(p) => 0,
            (Skew::Zipf { .. }, Some(zipf)) => rank_to_index(zipf.sample(rng), self.accounts),
            _ => rng.random_range(0..self.accounts),
        }
    }

    /// Draws a second account different from `first` (needs two or more accounts).
    pub fn pick_other(&self, rng: &mut StdRng, first: u32) -> u32 {
        if self.accounts < 2 {
            return first;
        }
        loop {
            let other = self.pick(rng);
            if other != first {
                return other;
            }
            // With a very hot account the skewed draw can repeat; fall back to uniform.
            let other = rng.random_range(0..self.accounts);
            if other != first {
                return other;
            }
        }
    }
}

/// Zipf draws a rank in 1..=n as a float; clamped to that range first, the
/// cast cannot truncate or lose a sign.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn rank_to_index(rank: f64, accounts: u32) -> u32 {
    let rank = rank.clamp(1.0, f64::from(accounts)) as u32;
    rank - 1
}

/// The account id of index `n`.
pub fn account_id(n: u32) -> String {
    let mut id = String::new();
    account_id_into(&mut id, n);
    id
}

/// Writes the account id of index `n` into `id`, reusing its allocation.
pub fn account_id_into(id: &mut String, n: u32) {
    use std::fmt::Write as _;
    id.clear();
    let _ = write!(id, "acct-{n}");
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Flags parse, and bad ones say what is wrong.
    #[test]
    fn flags_parse_and_refuse_with_reasons() {
        let mix: Mix = "deposit=1,transfer=3".parse().unwrap();
        assert!(mix.has_transfers());
        assert!(
            "deposit=x"
                .parse::<Mix>()
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            "teleport=1"
                .parse::<Mix>()
                .unwrap_err()
                .contains("unknown method")
        );
        assert_eq!(
            "5..9".parse::<AmountRange>().unwrap(),
            AmountRange { min: 5, max: 9 }
        );
        assert!("9..5".parse::<AmountRange>().is_err());
        assert!("0..5".parse::<AmountRange>().is_err());
        assert_eq!("hot:0.9".parse::<Skew>().unwrap(), Skew::Hot { p: 0.9 });
        assert!("hot:2".parse::<Skew>().is_err());
        assert!("zipf:0".parse::<Skew>().is_err());
    }

    /// A hot skew sends about P of the picks to account 0; zipf favours low ranks.
    #[test]
    fn skews_shape_the_picks() {
        let mut rng = StdRng::seed_from_u64(7);
        let hot = AccountPicker::new(100, Skew::Hot { p: 0.9 });
        let zeros = (0..10_000).filter(|_| hot.pick(&mut rng) == 0).count();
        assert!((8_900..=9_200).contains(&zeros), "{zeros}");
        let zipf = AccountPicker::new(100, Skew::Zipf { s: 1.2 });
        let low = (0..10_000).filter(|_| zipf.pick(&mut rng) < 10).count();
        assert!(low > 5_000, "{low}");
        assert!((0..1_000).all(|_| zipf.pick(&mut rng) < 100));
        assert_ne!(hot.pick_other(&mut rng, 0), 0);
    }
}
