//! `mnema search QUERY`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::{Context, Result};
use mnema_core::{Filters, Kind, SearchMode};
use mnema_search::{search, SearchQuery};
use mnema_server::wire::{HitOut, SearchOut};
use mnema_store::Store as _;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to look for, in any words and either language.
    #[arg(required = true, value_name = "QUERY")]
    query: Vec<String>,
    /// Most results to show (1 to 1000).
    #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=mnema_search::MAX_LIMIT as i64))]
    limit: u16,
    /// hybrid (words + meaning, fused), semantic (meaning only) or keyword (words only).
    #[arg(long, default_value = "hybrid", value_parser = ["hybrid", "semantic", "keyword"])]
    mode: String,
    /// Only these kinds: note, image, audio (repeatable).
    #[arg(long, value_name = "KIND")]
    kind: Vec<Kind>,
    /// Only items under this path prefix.
    #[arg(long, value_name = "PREFIX")]
    path: Option<String>,
    /// Only items modified at or after this time (YYYY-MM-DD or Unix seconds).
    #[arg(long, value_name = "TIME", value_parser = mnema_core::time::parse)]
    since: Option<i64>,
    /// Only items modified before this time.
    #[arg(long, value_name = "TIME", value_parser = mnema_core::time::parse)]
    until: Option<i64>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let started = Instant::now();
    let text = args.query.join(" ");
    let mode: SearchMode = args.mode.parse().map_err(anyhow::Error::msg)?;
    let store = ctx.store()?;
    let embedder = match mode {
        SearchMode::Keyword => None,
        _ => {
            let name = store.embedder()?.map(|e| e.0);
            match name {
                Some(name) => Some(ctx.embedder(&name).context("cannot load the embedding model")?),
                None => None, // empty store: nothing to compare vectors with
            }
        }
    };
    let q = SearchQuery {
        text: text.clone(),
        mode,
        filters: Filters { kinds: args.kind, path_prefix: args.path, since: args.since, until: args.until },
        limit: args.limit.into(),
    };
    let hits = search(&store, embedder.as_deref().map(|b| b.as_ref()), &q)?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    if ctx.json {
        let hits: Vec<HitOut> = hits.into_iter().map(HitOut::from).collect();
        out_json(&SearchOut { query: &text, mode: &args.mode, hits, elapsed_ms: (elapsed_ms * 10.0).round() / 10.0 })?;
    } else if hits.is_empty() {
        out(format!("no results for \"{text}\""))?;
    } else {
        for (i, h) in hits.iter().enumerate() {
            let at = h.start_ms.map(|ms| format!(" @{}:{:02}", ms / 60_000, ms / 1000 % 60)).unwrap_or_default();
            out(format!("{:>2}. {} [{}, #{}, {:.3}]{at}", i + 1, h.path, h.kind, h.id, h.score))?;
            out(format!("    {}", h.snippet))?;
        }
    }
    Ok(exit::OK)
}
