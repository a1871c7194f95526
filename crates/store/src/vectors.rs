//! The approximate nearest-neighbour index over chunk vectors (HNSW, usearch, f16 storage,
//! inner product on normalised vectors = cosine; SIMD kernels picked at run time).
//!
//! **Architecture Invariant:** SQLite holds every vector (`chunks.vector`) and is the truth;
//! this index is a cache of it. Each write transaction bumps `meta.vectors_gen`; the index
//! file is saved with the generation it reflects, and an index whose generation differs (a
//! crash mid-ingest, another process) is rebuilt from SQLite on open.

use crate::StoreError;
use std::path::{Path, PathBuf};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// An HNSW index with its file location.
pub struct VectorIndex {
    index: Index,
    path: Option<PathBuf>,
    dirty: bool,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

impl VectorIndex {
    /// An empty index for `dim`-dimensional vectors, saved at `path` (in memory when `None`).
    pub fn new(dim: usize, path: Option<&Path>) -> Result<VectorIndex, StoreError> {
        let opts = IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: ScalarKind::F16,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 160,
            multi: false,
        };
        let index = Index::new(&opts).map_err(err)?;
        index.reserve(1024).map_err(err)?;
        Ok(VectorIndex { index, path: path.map(Path::to_path_buf), dirty: false })
    }

    /// Loads the index saved at `path` if its generation is `gen`; `None` when it must be
    /// rebuilt (absent, stale or unreadable).
    pub fn load(dim: usize, path: &Path, gen: i64) -> Option<VectorIndex> {
        let saved: i64 = std::fs::read_to_string(gen_path(path)).ok()?.trim().parse().ok()?;
        if saved != gen {
            return None;
        }
        let v = VectorIndex::new(dim, Some(path)).ok()?;
        v.index.load(path.to_str()?).ok()?;
        if v.index.dimensions() != dim {
            return None;
        }
        Some(v)
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces the vector of `key`.
    pub fn add(&mut self, key: i64, v: &[f32]) -> Result<(), StoreError> {
        let key = key as u64;
        if self.index.contains(key) {
            self.index.remove(key).map_err(err)?;
        }
        if self.index.size() + 1 > self.index.capacity() {
            self.index.reserve((self.index.capacity() * 2).max(1024)).map_err(err)?;
        }
        self.index.add(key, v).map_err(err)?;
        self.dirty = true;
        Ok(())
    }

    /// Adds many vectors using every core (HNSW insertion is the slow part of a rebuild).
    pub fn add_many(&mut self, items: &[(i64, Vec<f32>)]) -> Result<(), StoreError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let want = self.index.size() + items.len();
        self.index.reserve_capacity_and_threads(want.max(self.index.capacity()), threads).map_err(err)?;
        let index = &self.index;
        let per = items.len().div_ceil(threads).max(1);
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(per)
                .map(|part| s.spawn(move || part.iter().try_for_each(|(k, v)| index.add(*k as u64, v).map_err(err))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(err("index thread panicked")))).collect()
        });
        self.dirty = true;
        results.into_iter().collect()
    }

    /// Pre-allocates room for `n` more vectors.
    pub fn reserve_more(&mut self, n: usize) -> Result<(), StoreError> {
        let want = self.index.size() + n;
        if want > self.index.capacity() {
            self.index.reserve(want).map_err(err)?;
        }
        Ok(())
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: i64) -> Result<(), StoreError> {
        if self.index.contains(key as u64) {
            self.index.remove(key as u64).map_err(err)?;
            self.dirty = true;
        }
        Ok(())
    }

    /// The `k` nearest keys with their cosine similarity, best first; `allow` filters keys.
    pub fn search(&self, q: &[f32], k: usize, allow: Option<&dyn Fn(i64) -> bool>) -> Result<Vec<(i64, f32)>, StoreError> {
        if self.index.size() == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let m = match allow {
            Some(f) => self.index.filtered_search(q, k, |key: u64| f(key as i64)).map_err(err)?,
            None => self.index.search(q, k).map_err(err)?,
        };
        // usearch's IP distance is 1 - dot.
        Ok(m.keys.into_iter().zip(m.distances).map(|(key, d)| (key as i64, 1.0 - d)).collect())
    }

    /// Saves the index and the generation it reflects (no-op for in-memory or clean indexes).
    pub fn save(&mut self, gen: i64) -> Result<(), StoreError> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty && path.exists() && std::fs::read_to_string(gen_path(path)).ok().and_then(|s| s.trim().parse().ok()) == Some(gen) {
            return Ok(());
        }
        // Invalidate first: a crash between the two writes leaves a stale marker, never a
        // fresh marker next to an old index.
        let _ = std::fs::remove_file(gen_path(path));
        let tmp = path.with_extension("usearch.tmp");
        self.index.save(tmp.to_str().ok_or_else(|| err("non-UTF-8 data path"))?).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        std::fs::write(gen_path(path), gen.to_string()).map_err(err)?;
        self.dirty = false;
        Ok(())
    }

    /// Bytes of memory the index uses.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }
}

fn gen_path(p: &Path) -> PathBuf {
    p.with_extension("usearch.gen")
}

/// Encodes a vector for the `chunks.vector` column (little-endian f32).
pub fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes a `chunks.vector` blob.
pub fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
