//! [`MemoryStore`]: the [`Store`] contract in plain collections, for tests of what sits above
//! the store (ingest, search, the front ends) without a database, and as the second backend
//! the conformance suite holds the SQLite store to.

use crate::{ChunkRow, CopyMeta, IndexCheck, NewItem, Result, Stats, Store, StoreError};
use mnema_core::{text, Chunk, Filters, Item, Kind};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A store that lives and dies with the process. Keyword scores are BM25 with SQLite FTS5's
/// constants (k1 = 1.2, b = 0.75), vector search is exact.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Mem>,
}

#[derive(Default)]
struct Mem {
    items: BTreeMap<i64, Item>,
    by_path: HashMap<String, i64>,
    chunks: BTreeMap<i64, Stored>,
    next_item: i64,
    next_chunk: i64,
    embedder: Option<(String, usize)>,
    roots: Vec<PathBuf>,
}

struct Stored {
    item_id: i64,
    chunk: Chunk,
    vector: Option<Vec<f32>>,
    terms: Vec<String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn matches(item: &Item, f: &Filters) -> bool {
    (f.kinds.is_empty() || f.kinds.contains(&item.kind))
        && f.path_prefix.as_deref().is_none_or(|p| item.path.starts_with(p))
        && f.since.is_none_or(|t| item.mtime >= t)
        && f.until.is_none_or(|t| item.mtime < t)
}

fn dhash_of(meta: &serde_json::Value) -> Option<u64> {
    meta.get("dhash")?.as_str().filter(|h| h.len() == 16).and_then(|h| u64::from_str_radix(h, 16).ok())
}

impl Mem {
    fn insert(&mut self, item: &NewItem, chunks: &[Chunk], vecs: &[Vec<f32>], embedder: &str) -> Result<i64> {
        assert_eq!(chunks.len(), vecs.len(), "one vector per chunk");
        let dim = vecs.first().map_or(0, Vec::len);
        if dim > 0 {
            if let Some((name, d)) = &self.embedder {
                if name != embedder || *d != dim {
                    return Err(StoreError::EmbedderMismatch { have: format!("{name} ({d}-d)"), got: format!("{embedder} ({dim}-d)") });
                }
            }
        }
        let id = match self.by_path.get(&item.path) {
            Some(&id) => {
                self.chunks.retain(|_, c| c.item_id != id);
                id
            }
            None => {
                self.next_item += 1;
                self.by_path.insert(item.path.clone(), self.next_item);
                self.next_item
            }
        };
        self.items.insert(
            id,
            Item {
                id,
                path: item.path.clone(),
                kind: item.kind,
                sha256: item.sha256.clone(),
                size: item.size,
                mtime: item.mtime,
                indexed_at: mnema_core::time::now(),
                meta: item.meta.clone(),
            },
        );
        for (c, v) in chunks.iter().zip(vecs) {
            self.next_chunk += 1;
            let terms = text::index_terms(&c.text).split(' ').filter(|t| !t.is_empty()).map(str::to_string).collect();
            let vector = (!v.is_empty()).then(|| v.clone());
            self.chunks.insert(self.next_chunk, Stored { item_id: id, chunk: c.clone(), vector, terms });
        }
        if dim > 0 && self.embedder.is_none() {
            self.embedder = Some((embedder.to_string(), dim));
        }
        Ok(id)
    }

    fn allowed(&self, s: &Stored, f: &Filters) -> bool {
        f.is_empty() || self.items.get(&s.item_id).is_some_and(|i| matches(i, f))
    }
}

impl Store for MemoryStore {
    fn embedder(&self) -> Result<Option<(String, usize)>> {
        Ok(self.lock().embedder.clone())
    }

    fn item(&self, id: i64) -> Result<Option<Item>> {
        Ok(self.lock().items.get(&id).cloned())
    }

    fn item_by_path(&self, path: &str) -> Result<Option<Item>> {
        let m = self.lock();
        Ok(m.by_path.get(path).and_then(|id| m.items.get(id)).cloned())
    }

    fn item_by_content(&self, sha256: &str, kind: Kind, not_path: &str) -> Result<Option<Item>> {
        Ok(self.lock().items.values().find(|i| i.sha256 == sha256 && i.kind == kind && i.path != not_path).cloned())
    }

    fn items(&self, filters: &Filters, limit: usize, offset: usize) -> Result<Vec<Item>> {
        let m = self.lock();
        let mut v: Vec<&Item> = m.items.values().filter(|i| matches(i, filters)).collect();
        v.sort_by(|a, b| b.mtime.cmp(&a.mtime).then(b.id.cmp(&a.id)));
        Ok(v.into_iter().skip(offset).take(limit).cloned().collect())
    }

    fn chunks(&self, item_id: i64) -> Result<Vec<(Chunk, Option<Vec<f32>>)>> {
        let m = self.lock();
        let mut v: Vec<&Stored> = m.chunks.values().filter(|c| c.item_id == item_id).collect();
        v.sort_by_key(|c| c.chunk.seq);
        Ok(v.into_iter().map(|c| (c.chunk.clone(), c.vector.clone())).collect())
    }

    fn put_item(&self, item: &NewItem, chunks: &[Chunk], vecs: &[Vec<f32>], embedder: &str) -> Result<i64> {
        self.lock().insert(item, chunks, vecs, embedder)
    }

    fn put_item_copy(&self, item: &NewItem, from: i64, from_sha256: &str, copy_meta: CopyMeta<'_>) -> Result<Option<(i64, usize)>> {
        let mut m = self.lock();
        let Some(src) = m.items.get(&from).filter(|i| i.sha256 == from_sha256).cloned() else { return Ok(None) };
        let mut stored: Vec<&Stored> = m.chunks.values().filter(|c| c.item_id == from).collect();
        if stored.iter().any(|c| c.vector.is_none()) {
            return Ok(None);
        }
        stored.sort_by_key(|c| c.chunk.seq);
        let (chunks, vecs): (Vec<Chunk>, Vec<Vec<f32>>) =
            stored.into_iter().map(|c| (c.chunk.clone(), c.vector.clone().unwrap_or_default())).unzip();
        let mut item = item.clone();
        match copy_meta {
            CopyMeta::All => item.meta = src.meta.clone(),
            CopyMeta::Keys(keys) => {
                for k in keys {
                    if let (Some(v), Some(o)) = (src.meta.get(k), item.meta.as_object_mut()) {
                        o.insert(k.to_string(), v.clone());
                    }
                }
            }
        }
        let embedder = m.embedder.as_ref().map(|e| e.0.clone()).unwrap_or_default();
        let id = m.insert(&item, &chunks, &vecs, &embedder)?;
        Ok(Some((id, chunks.len())))
    }

    fn delete_item(&self, id: i64) -> Result<Option<Item>> {
        let mut m = self.lock();
        let Some(item) = m.items.remove(&id) else { return Ok(None) };
        m.by_path.remove(&item.path);
        m.chunks.retain(|_, c| c.item_id != id);
        Ok(Some(item))
    }

    fn keyword_candidates(&self, terms: &[String], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>> {
        let m = self.lock();
        let n = m.chunks.len() as f64;
        if terms.is_empty() || n == 0.0 {
            return Ok(Vec::new());
        }
        let avg = m.chunks.values().map(|c| c.terms.len()).sum::<usize>() as f64 / n;
        let idf: Vec<f64> = terms
            .iter()
            .map(|t| {
                let df = m.chunks.values().filter(|c| c.terms.contains(t)).count() as f64;
                ((n - df + 0.5) / (df + 0.5)).ln().max(1e-6)
            })
            .collect();
        let (k1, b) = (1.2, 0.75);
        let mut scored: Vec<(i64, f64)> = m
            .chunks
            .iter()
            .filter(|(_, c)| m.allowed(c, filters))
            .filter_map(|(&id, c)| {
                let len = c.terms.len() as f64;
                let score: f64 = terms
                    .iter()
                    .zip(&idf)
                    .map(|(t, idf)| {
                        let tf = c.terms.iter().filter(|x| *x == t).count() as f64;
                        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * len / avg.max(1.0)))
                    })
                    .sum();
                (score > 0.0).then_some((id, score))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(limit);
        Ok(scored)
    }

    fn vector_candidates(&self, query: &[f32], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>> {
        let m = self.lock();
        if let Some((name, dim)) = &m.embedder {
            if *dim != query.len() {
                return Err(StoreError::EmbedderMismatch { have: format!("{name} ({dim}-d)"), got: format!("a {}-d query", query.len()) });
            }
        }
        let mut scored: Vec<(i64, f64)> = m
            .chunks
            .iter()
            .filter(|(_, c)| m.allowed(c, filters))
            .filter_map(|(&id, c)| Some((id, c.vector.as_ref()?.iter().zip(query).map(|(a, b)| a * b).sum::<f32>() as f64)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(limit);
        Ok(scored)
    }

    fn chunk_rows(&self, ids: &[i64]) -> Result<Vec<ChunkRow>> {
        let m = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let c = m.chunks.get(id)?;
                let i = m.items.get(&c.item_id)?;
                Some(ChunkRow { chunk_id: *id, item_id: i.id, path: i.path.clone(), kind: i.kind, mtime: i.mtime, chunk: c.chunk.clone() })
            })
            .collect())
    }

    fn image_candidates(&self, hash: u64, max_bits: u32, not_path: &str) -> Result<Vec<(i64, String, String, u64)>> {
        let max_bits = max_bits.min(7);
        let mut out: Vec<(i64, String, String, u64)> = self
            .lock()
            .items
            .values()
            .filter(|i| i.kind == Kind::Image && i.path != not_path)
            .filter_map(|i| {
                let h = dhash_of(&i.meta)?;
                ((h ^ hash).count_ones() <= max_bits).then(|| (i.id, i.path.clone(), i.sha256.clone(), h))
            })
            .collect();
        out.sort_by_key(|c| ((c.3 ^ hash).count_ones(), c.0));
        Ok(out)
    }

    fn stats(&self) -> Result<Stats> {
        let m = self.lock();
        let bytes = m.chunks.values().map(|c| c.chunk.text.len() + c.vector.as_ref().map_or(0, |v| v.len() * 4)).sum::<usize>();
        Ok(Stats { items: m.items.len() as u64, chunks: m.chunks.len() as u64, db_bytes: bytes as u64 })
    }

    fn add_root(&self, root: &Path) -> Result<()> {
        let mut m = self.lock();
        if m.roots.iter().any(|r| root.starts_with(r)) {
            return Ok(());
        }
        m.roots.retain(|r| !r.starts_with(root));
        m.roots.push(root.to_path_buf());
        Ok(())
    }

    fn roots(&self) -> Result<Vec<PathBuf>> {
        Ok(self.lock().roots.clone())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn check_index(&self) -> Result<IndexCheck> {
        let n = self.lock().chunks.values().filter(|c| c.vector.is_some()).count() as u64;
        Ok(IndexCheck { sqlite_vectors: n, index_vectors: n, missing: 0, extra: 0, ok: true })
    }

    fn repair_index(&self) -> Result<()> {
        Ok(())
    }
}
