//! `mnema show ID`, `mnema delete ID`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::Result;
use mnema_server::wire::{ChunkOut, ItemOut, ShowOut};
use mnema_store::Store as _;

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Item id (from search results).
    id: i64,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Item id (from search results).
    id: i64,
}

pub fn show(ctx: &Ctx, a: ShowArgs) -> Result<u8> {
    let store = ctx.store()?;
    let Some(item) = store.item(a.id)? else {
        eprintln!("mnema: no item with id {}", a.id);
        return Ok(exit::NOT_FOUND);
    };
    let chunks: Vec<ChunkOut> = store.chunks(a.id)?.into_iter().map(|(c, _)| c.into()).collect();
    let item = ItemOut::from(item);
    if ctx.json {
        out_json(&ShowOut { item, chunks })?;
    } else {
        out(format!("#{} {} ({})", item.id, item.path, item.kind))?;
        out(format!("  size {} B, modified {}, indexed {}, sha256 {}", item.size, item.mtime, item.indexed_at, &item.sha256[..16]))?;
        for c in chunks {
            let at = c.start_ms.map(|ms| format!(" @{:.1}s", ms as f64 / 1000.0)).unwrap_or_default();
            out(format!("--- chunk {}{at} [{}..{}]", c.seq, c.start, c.end))?;
            out(c.text)?;
        }
    }
    Ok(exit::OK)
}

pub fn delete(ctx: &Ctx, a: DeleteArgs) -> Result<u8> {
    let store = ctx.store()?;
    let item = store.delete_item(a.id)?;
    let deleted = item.is_some();
    if ctx.json {
        out_json(&serde_json::json!({ "id": a.id, "deleted": deleted, "path": item.as_ref().map(|i| &i.path) }))?;
    } else if let Some(i) = &item {
        out(format!("deleted #{} {}", i.id, i.path))?;
    }
    if !deleted {
        eprintln!("mnema: no item with id {}", a.id);
        return Ok(exit::NOT_FOUND);
    }
    Ok(exit::OK)
}
