//! The built-in scenarios, compiled into the binary from `client/scenarios/`.

/// Name and TOML text of every built-in, in the order `--list` prints them.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "double-withdrawal",
        include_str!("../../scenarios/double-withdrawal.toml"),
    ),
    (
        "spouse-atm",
        include_str!("../../scenarios/spouse-atm.toml"),
    ),
    (
        "lost-deposit",
        include_str!("../../scenarios/lost-deposit.toml"),
    ),
    (
        "crossed-transfers",
        include_str!("../../scenarios/crossed-transfers.toml"),
    ),
    (
        "crossed-transfers-naive",
        include_str!("../../scenarios/crossed-transfers-naive.toml"),
    ),
    (
        "hot-account",
        include_str!("../../scenarios/hot-account.toml"),
    ),
    (
        "snowball-transfers",
        include_str!("../../scenarios/snowball-transfers.toml"),
    ),
    (
        "blind-auditor",
        include_str!("../../scenarios/blind-auditor.toml"),
    ),
    (
        "double-transfer",
        include_str!("../../scenarios/double-transfer.toml"),
    ),
    ("counter", include_str!("../../scenarios/counter.toml")),
    (
        "retry-double-charge",
        include_str!("../../scenarios/retry-double-charge.toml"),
    ),
    (
        "slow-actor",
        include_str!("../../scenarios/slow-actor.toml"),
    ),
    (
        "half-applied-transfer",
        include_str!("../../scenarios/half-applied-transfer.toml"),
    ),
    (
        "scaled-out-mutex",
        include_str!("../../scenarios/scaled-out-mutex.toml"),
    ),
    (
        "paused-owner",
        include_str!("../../scenarios/paused-owner.toml"),
    ),
    (
        "write-skew",
        include_str!("../../scenarios/write-skew.toml"),
    ),
];

/// The TOML of the built-in named `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}
