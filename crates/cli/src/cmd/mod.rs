//! The commands, one module each.

pub mod doctor;
pub mod embed;
pub mod ingest;
pub mod items;
pub mod models;
pub mod search;

use anyhow::{Context, Result};
use mnema_core::Config;
use mnema_store::Store;
use serde::Serialize;
use std::io::Write;

/// What every command gets.
pub struct Ctx {
    pub config: Config,
    pub json: bool,
}

impl Ctx {
    /// Opens the store in the data directory.
    pub fn store(&self) -> Result<Store> {
        Store::open(&self.config.home).with_context(|| format!("cannot open the store in {}", self.config.home.display()))
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
