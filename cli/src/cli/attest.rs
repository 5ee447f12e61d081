//! `cocoon attest`: verify a TDX quote offline, check this machine's attestation.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use cocoon_client::trust;

use super::*;

#[derive(Debug, Subcommand)]
pub(crate) enum AttestCmd {
    /// Verify a TDX quote offline against DCAP collateral and a policy; exit status 0 only
    /// when the policy accepts it.
    Verify(VerifyArgs),
    /// Say whether this machine can produce TDX quotes (configfs-tsm).
    Status,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The raw quote.
    #[arg(long)]
    pub(crate) quote: PathBuf,
    /// DCAP collateral, JSON.
    #[arg(long)]
    pub(crate) collateral: PathBuf,
    /// Verify as of this time (Unix seconds) [default: now].
    #[arg(long)]
    pub(crate) now: Option<u64>,
    /// Policy file (TOML) [default: the default policy, which allowlists no image].
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// Also require this report data (128 hex digits).
    #[arg(long)]
    pub(crate) report_data: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn attest(cmd: AttestCmd) -> anyhow::Result<()> {
    match cmd {
        AttestCmd::Status => {
            match cocoon_p2p::attest::tsm::Tsm::detect(cocoon_p2p::attest::tsm::DEFAULT_ROOT) {
                Ok(_) => println!("tdx: this machine produces TDX quotes through configfs-tsm"),
                Err(e) => println!("dev-insecure only: {e}"),
            }
            Ok(())
        }
        AttestCmd::Verify(args) => {
            let report = verify_quote(&args)?;
            if args.json {
                print_json(&report)?;
            } else {
                println!(
                    "verdict      {}",
                    if report.accepted {
                        "ACCEPTED"
                    } else {
                        "REFUSED"
                    }
                );
                if let Some(reason) = &report.reason {
                    println!("reason       {reason}");
                }
                for (k, v) in [
                    ("tcb status", report.tcb_status.clone().unwrap_or_default()),
                    ("advisories", report.advisory_ids.join(", ")),
                    (
                        "debug",
                        report.debug.map(|d| d.to_string()).unwrap_or_default(),
                    ),
                    ("mrtd", report.mrtd.clone().unwrap_or_default()),
                    ("rtmr0", report.rtmrs.first().cloned().unwrap_or_default()),
                    ("rtmr1", report.rtmrs.get(1).cloned().unwrap_or_default()),
                    ("rtmr2", report.rtmrs.get(2).cloned().unwrap_or_default()),
                    ("rtmr3", report.rtmrs.get(3).cloned().unwrap_or_default()),
                    (
                        "report data",
                        report.report_data.clone().unwrap_or_default(),
                    ),
                ] {
                    println!("{k:<12} {v}");
                }
            }
            if !report.accepted {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `cocoon attest verify --json` output. Field names are stable.
#[derive(Debug, serde::Serialize)]
pub(crate) struct QuoteReport {
    pub(crate) accepted: bool,
    pub(crate) reason: Option<String>,
    pub(crate) tcb_status: Option<String>,
    pub(crate) advisory_ids: Vec<String>,
    pub(crate) debug: Option<bool>,
    pub(crate) mrtd: Option<String>,
    pub(crate) rtmrs: Vec<String>,
    pub(crate) report_data: Option<String>,
    pub(crate) now: u64,
}

pub(crate) fn verify_quote(args: &VerifyArgs) -> anyhow::Result<QuoteReport> {
    use cocoon_p2p::attest::{policy::Policy, tdx};
    let quote =
        std::fs::read(&args.quote).with_context(|| format!("reading {}", args.quote.display()))?;
    let collateral = std::fs::read(&args.collateral)
        .with_context(|| format!("reading {}", args.collateral.display()))?;
    let policy = match &args.policy {
        Some(p) => trust::load_policy(p)?,
        None => Policy::default(),
    };
    let expected = match &args.report_data {
        Some(h) => {
            let bytes = hex::decode(h).context("--report-data is not hex")?;
            anyhow::ensure!(bytes.len() == 64, "--report-data must be 64 bytes");
            Some(bytes)
        }
        None => None,
    };
    let now = args.now.unwrap_or_else(cocoon_client::clock::unix_now);
    let mut report = QuoteReport {
        accepted: false,
        reason: None,
        tcb_status: None,
        advisory_ids: Vec::new(),
        debug: None,
        mrtd: None,
        rtmrs: Vec::new(),
        report_data: None,
        now,
    };
    let appraisal =
        match tdx::parse_collateral(&collateral).and_then(|c| tdx::appraise(&quote, &c, now)) {
            Ok(a) => a,
            Err(e) => {
                report.reason = Some(e.to_string());
                return Ok(report);
            }
        };
    report.tcb_status = appraisal.tcb_status.clone();
    report.advisory_ids = appraisal.advisory_ids.clone();
    report.debug = Some(appraisal.debug);
    report.mrtd = Some(hex::encode(appraisal.mrtd));
    report.rtmrs = appraisal.rtmrs.iter().map(hex::encode).collect();
    report.report_data = Some(hex::encode(appraisal.report_data));
    report.reason = match policy.check_appraisal(&appraisal) {
        Err(e) => Some(e.to_string()),
        Ok(()) => match expected {
            Some(want) if want != appraisal.report_data => {
                Some("the report data differs from --report-data".into())
            }
            _ => None,
        },
    };
    report.accepted = report.reason.is_none();
    Ok(report)
}
