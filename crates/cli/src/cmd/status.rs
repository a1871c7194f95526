//! `mnema status`: the memory budget, models loaded by this process, machine memory, store.

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::Result;
use mnema_core::ByteSize;
use mnema_models::manager::{available_memory, process_rss};
use mnema_store::Store as _;

pub fn run(ctx: &Ctx) -> Result<u8> {
    let store = ctx.store()?;
    if ctx.json {
        out_json(&mnema_server::wire::status(&ctx.config, ctx.budget.0, &ctx.models, &store)?)?;
        return Ok(exit::OK);
    }
    let stats = store.stats()?;
    let loaded = ctx.models.loaded();
    let mut sys = sysinfo::System::new().map_err(|e| anyhow::anyhow!("cannot read memory figures: {e}"))?;
    sys.refresh_memory();
    out(format!("memory budget   {} (models {}, in use {})", ctx.budget, ByteSize(ctx.models.budget()), ByteSize(ctx.models.used())))?;
    if loaded.is_empty() {
        out("models          none loaded in this process (models load on demand and unload when idle)")?;
    }
    for m in &loaded {
        out(format!("  {:<24} {:>10} {}", m.name, ByteSize(m.cost).to_string(), if m.in_use { "in use" } else { "idle" }))?;
    }
    out(format!("process RSS     {}", ByteSize(process_rss())))?;
    out(format!(
        "machine         {} available of {}, swap {} used of {}",
        ByteSize(available_memory()),
        ByteSize(sys.total_memory()),
        ByteSize(sys.used_swap()),
        ByteSize(sys.total_swap())
    ))?;
    out(format!(
        "store           {}: {} items, {} chunks, {}",
        ctx.config.home.display(),
        stats.items,
        stats.chunks,
        ByteSize(stats.db_bytes)
    ))?;
    Ok(exit::OK)
}
