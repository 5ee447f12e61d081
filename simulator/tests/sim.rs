//! The simulator end to end: the same seed gives the same bytes; every job ends completed
//! or failed and the money balances; adversaries leave their marks; every shipped scenario
//! runs and writes its outputs; sweeps write one row per grid point.

use std::path::Path;

use cocoon_simulator::scenario::Adversary;
use cocoon_simulator::{calibration, report, sweep, Scenario, World};
use serde_json::Value;

fn scenario(file: &str, sets: &[(&str, &str)]) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(file);
    let sc = Scenario::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sc.with_overrides(&sets).unwrap()
}

fn run(sc: Scenario, out: &Path, charts: bool) -> (World, Value) {
    let mut world = World::new(sc).unwrap();
    world.run(|_, _| {});
    world.finish();
    let summary = report::write(&world, out, charts).unwrap();
    (world, summary)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let small = [("nodes", "250"), ("duration_secs", "400")];
    run(scenario("churn.toml", &small), &dir.path().join("a"), true);
    run(scenario("churn.toml", &small), &dir.path().join("b"), true);
    let (a, b) = (files(&dir.path().join("a")), files(&dir.path().join("b")));
    assert!(a.len() >= 15, "CSV, JSON, PNG and SVG outputs: {}", a.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs between two runs of one seed");
    }
    let mut other = small.to_vec();
    other.push(("seed", "2"));
    run(scenario("churn.toml", &other), &dir.path().join("c"), false);
    let c = std::fs::read(dir.path().join("c/summary.json")).unwrap();
    let a = std::fs::read(dir.path().join("a/summary.json")).unwrap();
    assert_ne!(a, c, "another seed, another run");
}

#[test]
fn every_job_ends_and_the_money_balances_under_churn_and_attack() {
    let dir = tempfile::tempdir().unwrap();
    for (file, sets) in [
        (
            "churn.toml",
            vec![("nodes", "800"), ("duration_secs", "600")],
        ),
        (
            "attack.toml",
            vec![("nodes", "500"), ("duration_secs", "600")],
        ),
    ] {
        let (world, s) = run(scenario(file, &sets), &dir.path().join(file), false);
        let j = &s["jobs"];
        let created = j["created"].as_u64().unwrap();
        assert!(created > 100, "{file}: {created} jobs");
        assert_eq!(j["in_flight_at_end"], 0, "{file}: jobs left hanging");
        assert_eq!(
            created,
            j["completed"].as_u64().unwrap() + j["failed"].as_u64().unwrap(),
            "{file}: every job completed or failed"
        );
        let m = &s["money_nanoton"];
        assert!(m["paid"].as_u64().unwrap() > 0, "{file}: {m}");
        assert_eq!(
            m["paid"], m["billed"],
            "{file}: clients paid what workers billed"
        );
        assert_eq!(
            m["paid"].as_u64().unwrap(),
            m["earned"].as_u64().unwrap() + m["pending"].as_u64().unwrap(),
            "{file}: workers earned what clients paid (or hold it pending)"
        );
        let per_worker: u64 = world.earnings().iter().map(|e| e.2).sum();
        assert_eq!(per_worker, m["billed"].as_u64().unwrap(), "{file}");
    }
}

#[test]
fn adversaries_leave_their_marks() {
    let dir = tempfile::tempdir().unwrap();
    let size = [("nodes", "600"), ("duration_secs", "900")];
    let mut attack = scenario("attack.toml", &size);
    // Enough wrong-output workers that some are chosen despite the herd at the top.
    for a in &mut attack.adversaries {
        if let Adversary::WrongOutput { share, .. } = a {
            *share = 0.5;
        }
    }
    let (world, s) = run(attack, &dir.path().join("a"), false);
    let mut honest = size.to_vec();
    honest.push(("adversaries", "[]"));
    let (_, calm) = run(
        scenario("attack.toml", &honest),
        &dir.path().join("b"),
        false,
    );
    let j = &s["jobs"];
    assert!(
        j["stalled"].as_u64().unwrap() > 0,
        "no-serve workers stall jobs: {j}"
    );
    assert!(j["failovers"].as_u64().unwrap() > 0);
    let wrong = j["wrong_detected"].as_u64().unwrap() + j["wrong_accepted"].as_u64().unwrap();
    assert!(wrong > 0, "wrong answers are served: {j}");
    let g = &s["gossip"];
    assert!(g["forged_rejected"].as_u64().unwrap() > 0, "{g}");
    // Workers that never answer never earn; quotes above the price are refused by the
    // clients' sessions, so overcharging earns nothing either.
    for (_, behaviour, earned, _) in world.earnings() {
        if behaviour == "no_serve" || behaviour == "overcharge" {
            assert_eq!(earned, 0, "{behaviour}");
        }
    }
    let m = &s["money_nanoton"];
    assert!(m["quotes_refused"].as_u64().unwrap() > 0, "{m}");
    // Cheap sybils that never answer are ranked first by clients that have not met them:
    // the attack costs jobs, which the honest network does not lose.
    let rate = |s: &Value| s["jobs"]["success_rate"].as_f64().unwrap();
    assert!(rate(&calm) > 0.95, "{}", calm["jobs"]);
    assert!(rate(&s) < rate(&calm), "{j} vs {}", calm["jobs"]);
    assert_eq!(calm["jobs"]["stalled"], 0);
}

/// Payments are the sessions', so the simulator sees what they do: a credit smaller than
/// a round trip's worth of tokens stalls the stream and slows jobs down; a deposit smaller
/// than a job ends it with `PaymentRequired` (and the client opens a new channel).
#[test]
fn tight_credit_stalls_and_small_deposits_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let size = [("nodes", "300"), ("duration_secs", "600")];
    let (_, roomy) = run(
        scenario("baseline.toml", &size),
        &dir.path().join("a"),
        false,
    );
    let mut tight = size.to_vec();
    tight.push(("payments.credit_limit", "1"));
    let (_, stalled) = run(
        scenario("baseline.toml", &tight),
        &dir.path().join("b"),
        false,
    );
    let mut poor = size.to_vec();
    poor.push(("payments.deposit", "2000"));
    let (_, unpaid) = run(
        scenario("baseline.toml", &poor),
        &dir.path().join("c"),
        false,
    );
    let money = |s: &Value, k: &str| s["money_nanoton"][k].as_u64().unwrap();
    assert_eq!(
        money(&roomy, "credit_stalls"),
        0,
        "{}",
        roomy["money_nanoton"]
    );
    assert!(
        money(&stalled, "credit_stalls") > 0,
        "{}",
        stalled["money_nanoton"]
    );
    let p50 = |s: &Value| s["latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        p50(&stalled) > p50(&roomy),
        "{} vs {}",
        p50(&stalled),
        p50(&roomy)
    );
    assert!(
        money(&unpaid, "payment_required") > 0,
        "{}",
        unpaid["money_nanoton"]
    );
    assert!(money(&unpaid, "channels") > money(&roomy, "channels"));
}

#[test]
fn every_shipped_scenario_runs_and_writes_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&scenarios)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        // Shrunk to test size; the million-node run is the scale benchmark's.
        let sc = scenario(&name, &[("duration_secs", "90")]);
        let nodes = sc.nodes.min(600).to_string();
        let sc = sc.with_overrides(&[("nodes".into(), nodes)]).unwrap();
        let out = dir.path().join(&name);
        let (_, s) = run(sc, &out, true);
        assert!(s["events"].as_u64().unwrap() > 0, "{name}");
        for f in [
            "summary.json",
            "timeseries.csv",
            "price.png",
            "price.svg",
            "latency_cdf.svg",
            "hops.png",
            "earnings.svg",
        ] {
            let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 100, "{name}: {f} missing or empty");
        }
        let csv = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
        assert!(
            csv.lines().count() >= 2,
            "{name}: a header and at least one sample"
        );
    }
}

#[test]
fn a_sweep_writes_one_row_per_grid_point() {
    let dir = tempfile::tempdir().unwrap();
    let base = scenario(
        "baseline.toml",
        &[("nodes", "300"), ("duration_secs", "300")],
    );
    let sets = vec!["dht.alpha=1,3".to_string(), "seed=1,2".to_string()];
    let results = sweep::run(&base, &sets, dir.path(), 2, false, |_, _| {}).unwrap();
    assert_eq!(results.len(), 4);
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[0].starts_with("run,dht.alpha,seed,success_rate"));
    assert!(lines[1].starts_with("000,1,1,"));
    assert!(dir.path().join("run-003/summary.json").exists());
}

#[test]
fn calibration_matches_the_real_loopback_network() {
    // Figures measured on 41 real nodes by bench/calibrate.sh; calibration.toml holds the
    // two costs it fitted. Every other measure must agree within the stated tolerance.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let measured: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("calibration.measured.json")).unwrap(),
    )
    .unwrap();
    let sc = scenario("calibration.toml", &[]);
    let fitted = &measured["fitted"];
    assert_eq!(
        sc.network.processing_ms,
        fitted["processing_ms"].as_f64().unwrap()
    );
    assert_eq!(
        sc.network.advert_cpu_ms,
        fitted["advert_cpu_ms"].as_f64().unwrap()
    );
    let sim =
        calibration::simulate(&sc, sc.network.processing_ms, sc.network.advert_cpu_ms).unwrap();
    let rows = calibration::compare(&measured["real"], &sim);
    let table = calibration::table(&rows, 41);
    for row in &rows {
        assert!(
            row.within(),
            "{} outside its tolerance:\n{table}",
            row.label
        );
        if row.tolerance.is_none() {
            // The fitted medians come back (to the fit's precision).
            assert!(
                (row.sim - row.real).abs() <= 0.1 * row.real.abs().max(1.0),
                "{}: fitted value drifted:\n{table}",
                row.label
            );
        }
    }
    assert!(sim["lookups"].as_f64().unwrap() >= 100.0);
    assert!(sim["deliveries"].as_f64().unwrap() >= 1000.0);
}
