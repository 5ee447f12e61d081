//! Every bad scenario is a clear error, never a panic: random overrides of the fields that
//! shape the world (counts, rates, shares, times, at their edges and past them) either
//! fail `Scenario::check` with a message or build and run a short simulation.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cocoon_simulator::{Scenario, World};
use proptest::prelude::*;

/// Fields and the edge values tried on each (TOML).
const FIELDS: &[(&str, &[&str])] = &[
    ("nodes", &["2", "3", "5", "20", "60"]),
    ("gossip.relays", &["0", "1", "2", "30", "100000"]),
    ("gossip.gateways", &["0", "1", "1000"]),
    ("workers.share", &["0.0", "0.5", "1.0"]),
    ("workers.price_tick_secs", &["0", "1", "100000"]),
    ("network.host_cores", &["0", "1", "4"]),
    (
        "network.processing_ms",
        &["-1.0", "0.0", "1e12", "nan", "inf"],
    ),
    ("network.advert_cpu_ms", &["-1.0", "nan", "1e12"]),
    ("network.jitter", &["nan", "inf", "5.0"]),
    ("network.bandwidth_mbps", &["inf", "1e-9", "nan"]),
    ("dht.rpc_timeout_ms", &["0", "1"]),
    ("dht.request_bytes", &["0", "4000000000"]),
    ("dht.probe_lookups_per_sec", &["-1.0", "nan", "1e9", "inf"]),
    ("gossip.heartbeat_ms", &["1", "100000000"]),
    ("gossip.advert_min_gap_secs", &["0", "100000"]),
    ("gossip.advert_bytes", &["0", "4000000000"]),
    ("gossip.market_rate_per_sec", &["0", "1"]),
    ("gossip.market_burst", &["0", "1"]),
    ("gossip.market_max_per_source", &["0", "1"]),
    ("gossip.market_max_adverts", &["0", "1"]),
    ("clients.jobs_per_hour", &["0.0", "nan", "inf", "1e12"]),
    ("clients.peak_hour", &["-5.0", "100.0", "nan"]),
    ("clients.price_slack", &["-1.0", "0.0", "nan", "inf"]),
    ("clients.open_timeout_ms", &["0"]),
    ("clients.stall_timeout_ms", &["0"]),
    ("clients.max_attempts", &["1", "100000"]),
    ("payments.credit_limit", &["0", "1"]),
    ("payments.deposit", &["1", "18446744073709551615"]),
    ("payments.pay_every", &["1", "4294967295"]),
    ("churn.enabled", &["true"]),
    ("sample_secs", &["1", "100000"]),
    ("duration_secs", &["1", "30", "600"]),
    ("network.loss", &["1.0", "0.999"]),
    ("network.nat_share", &["1.0"]),
];

/// A small world that runs in well under a second.
const BASE: &str = "nodes = 40\nduration_secs = 240\nsample_secs = 30\n\
    [dht]\nwarm_start = true\n[gossip]\nrelays = 4\ngateways = 2\n[clients]\njobs_per_hour = 120\n";

fn overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(
        (0..FIELDS.len(), 0usize..8).prop_map(|(f, v)| {
            let (field, values) = FIELDS[f];
            (field.to_string(), values[v % values.len()].to_string())
        }),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_bad_scenario_is_an_error_not_a_panic(sets in overrides()) {
        let base = Scenario::from_toml(BASE).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Ok(sc) = base.with_overrides(&sets) else {
                return;
            };
            let mut world = World::new(sc).expect("a checked scenario builds");
            world.run(|_, _| {});
            world.finish();
        }));
        prop_assert!(outcome.is_ok(), "panicked with {:?}", sets);
    }
}

/// The one the issue names: 20 nodes with the default relays.
#[test]
fn twenty_nodes_with_the_default_relays_is_a_clear_error() {
    let base = Scenario::from_toml("").unwrap();
    let e = base
        .with_overrides(&[("nodes".into(), "20".into())])
        .unwrap_err();
    assert!(e.to_string().contains("relays"), "{e}");
}
