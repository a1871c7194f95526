//! `mnema embed TEXT...`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::Result;
use mnema_extract::Role;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Texts to embed (each argument is one text).
    #[arg(required = true)]
    texts: Vec<String>,
    /// Embed as search queries ("query: " prefix for e5) instead of stored passages.
    #[arg(long)]
    query: bool,
    /// Model: multilingual-e5-small (default) or all-minilm-l6-v2.
    #[arg(long)]
    model: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<u8> {
    let name = a.model.unwrap_or_else(|| ctx.config.embedder.clone());
    let e = ctx.embedder(&name)?;
    let texts: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let vecs = e.embed(&texts, if a.query { Role::Query } else { Role::Passage })?;
    if ctx.json {
        out_json(&serde_json::json!({ "model": e.name(), "dim": e.dim(), "vectors": vecs }))?;
        return Ok(exit::OK);
    }
    for (t, v) in texts.iter().zip(&vecs) {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
        out(format!("{t}\n  {}-d [{} …]", v.len(), head.join(" ")))?;
    }
    if vecs.len() > 1 {
        out("cosine similarity:")?;
        for i in 0..vecs.len() {
            let row: Vec<String> =
                (0..vecs.len()).map(|j| format!("{:.3}", vecs[i].iter().zip(&vecs[j]).map(|(a, b)| a * b).sum::<f32>())).collect();
            out(format!("  {}", row.join("  ")))?;
        }
    }
    Ok(exit::OK)
}
