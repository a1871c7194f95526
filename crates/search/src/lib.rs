//! Ranking: keyword (stemmed FTS5, BM25), semantic (cosine over embeddings) and hybrid
//! (reciprocal rank fusion of the two), one hit per item, with snippets.
//!
//! **API Boundary:** candidates come from `mnema-store`; this crate writes no SQL.
#![deny(missing_docs)]

use mnema_core::{text, Filters, Hit, SearchMode};
use mnema_engine::{Embedder, EngineError, Role};
use mnema_store::{ChunkRow, Store};
use std::collections::{HashMap, HashSet};

/// Reciprocal-rank-fusion constant: the usual 60 damps the head of each list so neither
/// ranking dominates.
pub const RRF_K: f64 = 60.0;

/// A search request.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// What the user typed.
    pub text: String,
    /// How to match.
    pub mode: SearchMode,
    /// Restrictions.
    pub filters: Filters,
    /// Most hits to return.
    pub limit: usize,
}

/// Errors from searching.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Nothing to search for.
    #[error("empty query: type some words to search for")]
    EmptyQuery,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] mnema_store::StoreError),
    /// Embedding the query failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Semantic search was asked for without a model.
    #[error("semantic search needs the embedding model: run scripts/setup.sh")]
    NoEmbedder,
}

impl SearchError {
    /// What sort of failure this is (an empty query is the user's input; a missing model a
    /// model file; the store's and the embedder's errors keep their own kinds).
    pub fn kind(&self) -> mnema_core::ErrorKind {
        match self {
            SearchError::EmptyQuery => mnema_core::ErrorKind::Input,
            SearchError::NoEmbedder => mnema_core::ErrorKind::ModelFile,
            SearchError::Store(e) => e.kind(),
            SearchError::Engine(e) => e.kind(),
        }
    }
}

/// Runs a query. `embedder` is needed for semantic and hybrid modes (hybrid falls back to
/// keyword-only when it is `None`).
pub fn search(store: &dyn Store, embedder: Option<&dyn Embedder>, q: &SearchQuery) -> Result<Vec<Hit>, SearchError> {
    let query = q.text.trim();
    if query.is_empty() {
        return Err(SearchError::EmptyQuery);
    }
    let wants_vector = q.mode != SearchMode::Keyword && store.embedder()?.is_some();
    let vector = match (wants_vector, embedder) {
        (true, Some(e)) => {
            let _s = mnema_core::profile::stage("embed");
            Some(e.embed(&[query], Role::Query)?.remove(0))
        }
        (true, None) if q.mode == SearchMode::Semantic => return Err(SearchError::NoEmbedder),
        _ => None,
    };
    search_with_vector(store, vector.as_deref(), q)
}

/// The most hits one search returns; larger limits are lowered to it.
pub const MAX_LIMIT: usize = 1000;

/// Runs a query whose embedding is already computed (`None`: keyword only; semantic mode
/// then finds nothing).
pub fn search_with_vector(store: &dyn Store, vector: Option<&[f32]>, q: &SearchQuery) -> Result<Vec<Hit>, SearchError> {
    let query = q.text.trim();
    if query.is_empty() {
        return Err(SearchError::EmptyQuery);
    }
    let _s = mnema_core::profile::stage("search");
    // A limit is a display size, not an allocation request.
    let q = &SearchQuery { limit: q.limit.clamp(1, MAX_LIMIT), ..q.clone() };
    let terms = text::query_terms(query);
    // Several chunks of one item may match; fetch extra so `limit` distinct items remain.
    let depth = (q.limit * 4).max(50);
    let semantic = |store: &dyn Store| -> Result<Vec<(i64, f64)>, SearchError> {
        match vector {
            Some(v) => Ok(store.vector_candidates(v, &q.filters, depth)?),
            None => Ok(Vec::new()),
        }
    };
    let ranked: Vec<(i64, f64)> = match q.mode {
        SearchMode::Keyword => store.keyword_candidates(&terms, &q.filters, depth)?,
        SearchMode::Semantic => semantic(store)?,
        SearchMode::Hybrid => {
            let k = store.keyword_candidates(&terms, &q.filters, depth)?;
            let s = semantic(store)?;
            fuse(&[k, s])
        }
    };
    // Only the rows that can make it into the result are fetched.
    let mut hits = Vec::new();
    let mut seen = HashSet::new();
    for batch in ranked.chunks(q.limit.max(1) * 2) {
        let rows = store.chunk_rows(&batch.iter().map(|r| r.0).collect::<Vec<_>>())?;
        let score: HashMap<i64, f64> = batch.iter().copied().collect();
        for row in rows {
            if hits.len() < q.limit && seen.insert(row.item_id) {
                let mut hit = to_hit(&row, score[&row.chunk_id], &terms);
                if row.kind == mnema_core::Kind::Image {
                    if let Some(item) = store.item(row.item_id)? {
                        hit.boxes = line_boxes(&item.meta, &row.chunk, &terms);
                    }
                }
                hits.push(hit);
            }
        }
        if hits.len() >= q.limit {
            break;
        }
    }
    Ok(hits)
}

/// Reciprocal rank fusion: each list contributes 1 / (k + rank) per id; best first.
pub fn fuse(lists: &[Vec<(i64, f64)>]) -> Vec<(i64, f64)> {
    let mut acc: HashMap<i64, f64> = HashMap::new();
    for list in lists {
        for (rank, (id, _)) in list.iter().enumerate() {
            *acc.entry(*id).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut out: Vec<(i64, f64)> = acc.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Boxes of the OCR lines (from the item's metadata) inside `chunk` that contain a query
/// term; all of the chunk's lines when none does (a semantic match).
fn line_boxes(meta: &serde_json::Value, chunk: &mnema_core::Chunk, terms: &[String]) -> Vec<[u32; 4]> {
    let Some(lines) = meta.get("lines").and_then(|l| l.as_array()) else { return Vec::new() };
    let inside: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            let (s, e) = (l["start"].as_u64().unwrap_or(0), l["end"].as_u64().unwrap_or(0));
            s < chunk.end as u64 && e > chunk.start as u64
        })
        .collect();
    let bbox = |l: &serde_json::Value| -> Option<[u32; 4]> {
        let b = l["bbox"].as_array()?;
        let v: Vec<u32> = b.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect();
        v.try_into().ok()
    };
    let matching: Vec<[u32; 4]> = inside
        .iter()
        .filter(|l| text::words(l["text"].as_str().unwrap_or("")).any(|w| terms.contains(&text::term(w.text))))
        .filter_map(|l| bbox(l))
        .collect();
    if matching.is_empty() {
        inside.iter().filter_map(|l| bbox(l)).collect()
    } else {
        matching
    }
}

fn to_hit(row: &ChunkRow, score: f64, terms: &[String]) -> Hit {
    Hit {
        id: row.item_id,
        chunk_id: row.chunk_id,
        path: row.path.clone(),
        kind: row.kind,
        score,
        snippet: snippet(&row.chunk.text, terms, 24),
        start_ms: row.chunk.start_ms,
        mtime: row.mtime,
        boxes: Vec::new(),
    }
}

/// About `width` words of `text` around the first word matching a query term, matches
/// marked `[like this]`; the start of the text when nothing matches.
pub fn snippet(text: &str, terms: &[String], width: usize) -> String {
    let words: Vec<text::Word<'_>> = text::words(text).collect();
    if words.is_empty() {
        return text.chars().take(160).collect();
    }
    let is_match: Vec<bool> = words.iter().map(|w| terms.contains(&text::term(w.text))).collect();
    let first = is_match.iter().position(|&m| m).unwrap_or(0);
    let from = first.saturating_sub(width / 3);
    let to = (from + width).min(words.len());
    let from = to.saturating_sub(width).min(from);
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    }
    let mut pos = words[from].start;
    for i in from..to {
        let w = words[i];
        out.push_str(&collapse_ws(&text[pos..w.start]));
        if is_match[i] {
            out.push('[');
            out.push_str(w.text);
            out.push(']');
        } else {
            out.push_str(w.text);
        }
        pos = w.end;
    }
    if to < words.len() {
        out.push_str(collapse_ws(&text[pos..words[to].start]).trim_end());
        out.push('…');
    } else {
        out.push_str(collapse_ws(&text[pos..]).trim_end());
    }
    out.trim_start().to_string()
}

fn collapse_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = true;
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    if space {
        out.push(' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_rewards_agreement() {
        let a = vec![(1, 9.0), (2, 8.0), (3, 7.0)];
        let b = vec![(3, 0.9), (4, 0.8), (1, 0.7)];
        let f = fuse(&[a, b]);
        let ids: Vec<i64> = f.iter().map(|x| x.0).collect();
        // 1: 1/61 + 1/63; 3: 1/63 + 1/61 (tie, lower id first); 2: 1/62; 4: 1/62.
        assert_eq!(ids, vec![1, 3, 2, 4]);
        assert!((f[0].1 - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-12);
    }

    #[test]
    fn snippet_marks_stemmed_matches() {
        let t = "Напоминание.\n\nОтменить   подписку можно в настройках. Стоимость подписки 300 ₽.";
        let s = snippet(t, &text::query_terms("подписка"), 24);
        assert_eq!(s, "Напоминание. Отменить [подписку] можно в настройках. Стоимость [подписки] 300 ₽.");
        let long = (0..100).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let s = snippet(&long, &text::query_terms("w50"), 10);
        assert!(s.starts_with('…') && s.ends_with('…') && s.contains("[w50]"), "{s}");
        assert_eq!(snippet(&long, &[], 3), "w0 w1 w2…");
    }
}
