//! The commands, one module each.

pub mod doctor;
pub mod embed;
pub mod ingest;
pub mod items;
pub mod models;
pub mod ocr;
pub mod profile;
pub mod search;
pub mod serve;
pub mod status;
pub mod transcribe;

use anyhow::{Context, Result};
use mnema_core::{ByteSize, Config};
use mnema_extract::Embedder;
use mnema_models::manager::{process_rss, ModelManager};
use mnema_store::SqliteStore;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;

/// Memory kept outside the models' share of the budget: SQLite's cache, the vector index,
/// buffers of the running command.
pub const RESERVE: u64 = 64 << 20;

/// What every command gets.
pub struct Ctx {
    pub config: Config,
    pub json: bool,
    /// The whole process's memory budget.
    pub budget: ByteSize,
    pub models: Arc<ModelManager>,
}

impl Ctx {
    /// Resolves configuration and the memory budget from the parsed flags.
    pub fn new(cli: &crate::Cli) -> Result<Ctx> {
        let config = Config::resolve(cli.home.clone(), cli.models.clone())?;
        let budget = cli.memory_budget.unwrap_or(ByteSize(mnema_models::manager::default_budget()));
        let base = process_rss() + RESERVE;
        if budget.0 <= base {
            anyhow::bail!("--memory-budget {budget} is too small: mnema itself needs about {} before any model", ByteSize(base));
        }
        let models = Arc::new(ModelManager::new(budget.0 - base).with_idle_timeout(config.idle_unload));
        Ok(Ctx { config, json: cli.json, budget, models })
    }

    /// The embedding model, loaded through the memory budget.
    pub fn embedder(&self, name: &str) -> Result<Arc<Box<dyn Embedder>>> {
        Ok(mnema_ingest::acquire_embedder(&self.config, &self.models, name)?)
    }

    /// Opens the store in the data directory.
    pub fn store(&self) -> Result<SqliteStore> {
        SqliteStore::open(&self.config.home).with_context(|| format!("cannot open the store in {}", self.config.home.display()))
    }
}

/// Writes one line to stdout (a broken pipe surfaces as an error the top level ignores).
pub fn out(line: impl AsRef<str>) -> Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{}", line.as_ref())?;
    Ok(())
}

/// Writes one JSON object as one line to stdout.
pub fn out_json(v: &impl Serialize) -> Result<()> {
    out(serde_json::to_string(v)?)
}
