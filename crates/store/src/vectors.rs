//! The approximate nearest-neighbour index over chunk vectors (HNSW, usearch, f16 storage,
//! inner product on normalised vectors = cosine; SIMD kernels picked at run time).
//!
//! **Architecture Invariant:** SQLite holds every vector (`chunks.vector`) and is the truth;
//! this index is a cache of it at a known generation ([`VectorIndex::gen`]). The store brings
//! it up to the database's generation before every vector search (replaying the vector log)
//! and it is only ever saved under the generation it reflects. A generation is named by its
//! number *and* a random nonce (`vector_gens`): a database restored from a backup reaches the
//! same numbers again with other content, and an index of the lost history is never taken
//! for current (`tests/trust.rs::an_index_from_a_lost_future_is_never_trusted`).
//!
//! **Removals never unlink the graph.** usearch's `remove` puts the node's slot on a free list
//! and the next `add` reuses it: the node is re-linked for its new vector after its old
//! outgoing links are cleared, so vectors that were reachable only through it drop out of
//! every search (`tests/store.rs::reingest_keeps_every_other_vector_findable`). A removed
//! vector is therefore *renamed* to a tombstone key (`TOMBSTONE | id`): it stays in the graph
//! as a waypoint, searches filter it out, and the index is rebuilt from SQLite when
//! tombstones pass a quarter of the live vectors.
//!
//! **Saving is safe with several processes.** A save runs under an exclusive `flock` on
//! `vectors.usearch.lock` (loads take it shared), writes to a unique temporary name and
//! renames; the generation, the database's `store_id` and the tombstone count go to
//! `vectors.usearch.gen` after the index, which is removed first, so a crash leaves no marker
//! rather than a marker beside the wrong index. A save never replaces a file at a newer
//! generation, except when the store found that file ahead of the database (a lost future).

use crate::StoreError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Keys with this bit are tombstones of removed vectors (chunk ids stay far below it).
const TOMBSTONE: u64 = 1 << 62;

/// Tombstones are tolerated up to this many before a rebuild, whatever the index size.
const TOMBSTONES_FREE: usize = 1024;

/// The sidecar's first line; an older or foreign sidecar means "rebuild".
const SIDECAR_MAGIC: &str = "mnema-vectors 3";

/// An HNSW index with its file location and the generation it reflects.
pub struct VectorIndex {
    index: Index,
    dim: usize,
    path: Option<PathBuf>,
    gen: i64,
    /// The nonce of generation `gen` in the database it was read from.
    nonce: String,
    tombstones: usize,
    /// A removal could not be tombstoned (legacy id reuse): rebuild before trusting the graph.
    unlinked: bool,
    dirty: bool,
}

/// Stored vectors (tombstones included) up to which a search compares every vector instead of
/// walking the graph. An HNSW graph can leave a vector that no other links to: the search
/// then never reaches it, and its item is silently missing from semantic results (seen with
/// 240 near-orthogonal vectors: 1-6 of them, in about one index in eight, and in a rebuilt
/// one too). Comparing all of 20,000 384-wide vectors takes a few milliseconds.
pub const EXACT_MAX: usize = 20_000;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io { what: what.to_string(), path: path.to_path_buf(), source: e }
}

/// What `vectors.usearch.gen` records about the index file beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sidecar {
    store_id: String,
    gen: i64,
    nonce: String,
    dim: usize,
    tombstones: usize,
}

impl Sidecar {
    fn read(path: &Path) -> Option<Sidecar> {
        let s = std::fs::read_to_string(gen_path(path)).ok()?;
        let mut lines = s.lines();
        if lines.next()? != SIDECAR_MAGIC {
            return None;
        }
        let mut field = |name: &str| lines.next()?.strip_prefix(name)?.strip_prefix(' ').map(str::to_string);
        Some(Sidecar {
            store_id: field("store")?,
            gen: field("gen")?.parse().ok()?,
            nonce: field("nonce")?,
            dim: field("dim")?.parse().ok()?,
            tombstones: field("tombstones")?.parse().ok()?,
        })
    }

    fn text(&self) -> String {
        format!(
            "{SIDECAR_MAGIC}\nstore {}\ngen {}\nnonce {}\ndim {}\ntombstones {}\n",
            self.store_id, self.gen, self.nonce, self.dim, self.tombstones
        )
    }
}

/// The lock file serialising saves and loads of one index file across processes.
fn lock_file(path: &Path) -> std::io::Result<File> {
    let p = path.with_extension("usearch.lock");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p)?;
    private(&p);
    Ok(f)
}

/// Owner-only permissions (0600) for a data file; best effort.
pub(crate) fn private(p: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(p) {
            if m.permissions().mode() & 0o077 != 0 {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = p;
}

impl VectorIndex {
    /// An empty index for `dim`-dimensional vectors at generation `gen` (named by `nonce`),
    /// saved at `path` (in memory when `None`).
    pub fn new(dim: usize, path: Option<&Path>, gen: i64, nonce: &str) -> Result<VectorIndex, StoreError> {
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
        Ok(VectorIndex {
            index,
            dim,
            path: path.map(Path::to_path_buf),
            gen,
            nonce: nonce.to_string(),
            tombstones: 0,
            unlinked: false,
            dirty: false,
        })
    }

    /// Loads the index saved at `path` for the database `store_id`; `None` when it must be
    /// rebuilt (absent, another database's, another dimension, an older format, unreadable).
    pub fn load(dim: usize, path: &Path, store_id: &str) -> Option<VectorIndex> {
        let lock = lock_file(path).ok();
        if let Some(l) = &lock {
            l.lock_shared().ok()?;
        }
        let side = Sidecar::read(path)?;
        if side.store_id != store_id || side.dim != dim {
            return None;
        }
        let mut v = VectorIndex::new(dim, Some(path), side.gen, &side.nonce).ok()?;
        v.index.load(path.to_str()?).ok()?;
        if v.index.dimensions() != dim || v.index.size() < side.tombstones {
            return None;
        }
        v.tombstones = side.tombstones;
        Some(v)
    }

    /// The database generation this index reflects.
    pub fn gen(&self) -> i64 {
        self.gen
    }

    /// The nonce naming the generation this index reflects.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Records that the index now reflects generation `gen`, named by `nonce`.
    pub(crate) fn set_gen(&mut self, gen: i64, nonce: &str) {
        self.gen = gen;
        self.nonce = nonce.to_string();
    }

    /// Marks the index as differing from its file (a fresh rebuild).
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Number of live (searchable) vectors.
    pub fn len(&self) -> usize {
        self.index.size() - self.tombstones
    }

    /// True when no vector is searchable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tombstones of removed vectors still in the graph.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// True when the index should be rebuilt from SQLite: too many tombstones (searches walk
    /// them) or a removal that unlinked a node.
    pub fn needs_rebuild(&self) -> bool {
        self.unlinked || self.tombstones > TOMBSTONES_FREE.max(self.len() / 4)
    }

    /// True when `key` is a live vector.
    pub fn contains(&self, key: i64) -> bool {
        self.index.contains(key as u64)
    }

    fn grow_for(&mut self, n: usize) -> Result<(), StoreError> {
        let want = self.index.size() + n;
        if want > self.index.capacity() {
            self.index.reserve(want.max(self.index.capacity() * 2).max(1024)).map_err(err)?;
        }
        Ok(())
    }

    /// Adds the vector of `key`. A key already present keeps its vector: chunk ids are never
    /// reused, so an id's vector never changes.
    pub fn add(&mut self, key: i64, v: &[f32]) -> Result<(), StoreError> {
        if self.index.contains(key as u64) {
            return Ok(());
        }
        self.grow_for(1)?;
        self.index.add(key as u64, v).map_err(err)?;
        self.dirty = true;
        Ok(())
    }

    /// Adds many vectors using every core (HNSW insertion is the slow part of a rebuild).
    pub fn add_many(&mut self, items: &[(i64, Vec<f32>)]) -> Result<(), StoreError> {
        let items: Vec<&(i64, Vec<f32>)> = items.iter().filter(|(k, _)| !self.index.contains(*k as u64)).collect();
        if items.is_empty() {
            return Ok(());
        }
        if items.len() < 64 {
            for (k, v) in items {
                self.add(*k, v)?;
            }
            return Ok(());
        }
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
        self.grow_for(n)
    }

    /// Removes `key` from searches if present. The node stays in the graph as a tombstone
    /// (see the module docs: usearch's own removal frees the slot for reuse, which unlinks
    /// other vectors).
    pub fn remove(&mut self, key: i64) -> Result<(), StoreError> {
        let k = key as u64;
        if !self.index.contains(k) {
            return Ok(());
        }
        self.dirty = true;
        if k & TOMBSTONE == 0 && !self.index.contains(k | TOMBSTONE) {
            self.index.rename(k, k | TOMBSTONE).map_err(err)?;
            self.tombstones += 1;
        } else {
            // Only a database whose ids were reused before ids became monotonic gets here.
            self.index.remove(k).map_err(err)?;
            self.unlinked = true;
        }
        Ok(())
    }

    /// The `k` nearest keys with their cosine similarity, best first; `allow` filters keys.
    /// Up to [`EXACT_MAX`] stored vectors the search is exact (every vector compared); above,
    /// it walks the HNSW graph.
    pub fn search(&self, q: &[f32], k: usize, allow: Option<&dyn Fn(i64) -> bool>) -> Result<Vec<(i64, f32)>, StoreError> {
        self.search_within(q, k, allow, EXACT_MAX)
    }

    /// [`search`](Self::search) with another exact-search threshold (`0`: always the graph).
    pub fn search_within(
        &self,
        q: &[f32],
        k: usize,
        allow: Option<&dyn Fn(i64) -> bool>,
        exact_max: usize,
    ) -> Result<Vec<(i64, f32)>, StoreError> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        if self.index.size() <= exact_max {
            // All of them when a filter or tombstones may drop some, else just k.
            let count = if allow.is_some() || self.tombstones > 0 { self.index.size() } else { k };
            let m = self.index.exact_search(q, count).map_err(err)?;
            let keep = |key: u64| key & TOMBSTONE == 0 && allow.is_none_or(|f| f(key as i64));
            return Ok(m
                .keys
                .into_iter()
                .zip(m.distances)
                .filter(|(key, _)| keep(*key))
                .take(k)
                .map(|(key, d)| (key as i64, 1.0 - d))
                .collect());
        }
        let m = match allow {
            Some(f) => self.index.filtered_search(q, k, |key: u64| key & TOMBSTONE == 0 && f(key as i64)).map_err(err)?,
            None if self.tombstones > 0 => self.index.filtered_search(q, k, |key: u64| key & TOMBSTONE == 0).map_err(err)?,
            None => self.index.search(q, k).map_err(err)?,
        };
        // usearch's IP distance is 1 - dot.
        Ok(m.keys.into_iter().zip(m.distances).map(|(key, d)| (key as i64, 1.0 - d)).collect())
    }

    /// Saves the index with the generation it reflects, for the database `store_id`.
    /// Skipped for in-memory indexes, for a clean index (unless `force`) and when the file on
    /// disk already reflects this very generation (same nonce) or a newer one (another process
    /// saved it). `force` also replaces a newer file: the store passes it when it found the
    /// file ahead of the database.
    pub fn save(&mut self, store_id: &str, force: bool) -> Result<(), StoreError> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        if !self.dirty && !force {
            return Ok(());
        }
        let lock = lock_file(&path).map_err(|e| io_err(&path.with_extension("usearch.lock"), "cannot open the lock file", e))?;
        lock.lock().map_err(|e| io_err(&path, "cannot lock", e))?;
        if !force {
            if let Some(side) = Sidecar::read(&path) {
                if side.store_id == store_id && (side.gen > self.gen || (side.gen == self.gen && side.nonce == self.nonce)) && path.exists()
                {
                    self.dirty = false;
                    return Ok(());
                }
            }
        }
        remove_leftovers(&path);
        // Invalidate first: a crash between the writes leaves no marker, never a marker
        // beside an index it does not describe. A save that fails (a full disk) before
        // replacing the file puts the old marker back: the old file is still there, whole.
        let old_marker = std::fs::read(gen_path(&path)).ok();
        match std::fs::remove_file(gen_path(&path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&gen_path(&path), "cannot remove", e)),
            _ => {}
        }
        let tmp = unique_tmp(&path);
        let written = (|| {
            write_index(&self.index, &tmp)?;
            private(&tmp);
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, "cannot replace", e))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            if let Some(old) = old_marker.filter(|_| path.exists()) {
                let t = unique_tmp(&gen_path(&path));
                if std::fs::write(&t, old).and_then(|()| std::fs::rename(&t, gen_path(&path))).is_err() {
                    let _ = std::fs::remove_file(&t);
                }
            }
            return Err(e);
        }
        let side = Sidecar {
            store_id: store_id.to_string(),
            gen: self.gen,
            nonce: self.nonce.clone(),
            dim: self.dim,
            tombstones: self.tombstones,
        };
        let tmp = unique_tmp(&gen_path(&path));
        std::fs::write(&tmp, side.text()).map_err(|e| io_err(&tmp, "cannot write", e))?;
        private(&tmp);
        std::fs::rename(&tmp, gen_path(&path)).map_err(|e| io_err(&gen_path(&path), "cannot replace", e))?;
        self.dirty = false;
        Ok(())
    }

    /// Bytes of memory the index uses.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }
}

/// Writes the index to `path` and checks that all of it reached the disk. usearch writes
/// through C stdio, ignores the error of the final flush (so a disk that fills up during a
/// save could leave a truncated file reported as written) and reports its own write errors
/// without the system's reason; both are caught here and the reason (ENOSPC when the disk is
/// full) recovered by writing the rest ourselves.
fn write_index(index: &Index, path: &Path) -> Result<(), StoreError> {
    let path_str = path.to_str().ok_or_else(|| err(format!("non-UTF-8 data path {}", path.display())))?;
    let want = index.serialized_length() as u64;
    let saved = index.save(path_str);
    // Created when usearch could not even create it: the system then says why.
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).map_err(|e| io_err(path, "cannot write", e))?;
    let have = match saved {
        Ok(()) => {
            match f.sync_all() {
                // Not a regular file (a device): nothing to sync.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
                Err(e) => return Err(io_err(path, "cannot write", e)),
                Ok(()) => {}
            }
            let have = f.metadata().map_err(|e| io_err(path, "cannot read", e))?.len();
            if have == want {
                return Ok(());
            }
            format!("only {have} of {want} bytes were written")
        }
        Err(e) => e.to_string(),
    };
    // The file is removed by the caller either way.
    use std::io::Write;
    let source = match f.write_all(&vec![0u8; 1 << 16]).and_then(|()| f.sync_all()) {
        Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => e,
        _ => std::io::Error::other(have),
    };
    Err(io_err(path, "cannot write", source))
}

/// A temporary name beside `p` that no other process or thread uses at the same time.
fn unique_tmp(p: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    p.with_file_name(name)
}

/// Removes the temporary files of saves that were killed before their rename (under the
/// lock no save is writing one, so every such file is a leftover).
fn remove_leftovers(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefixes = [format!("{name}.tmp."), format!("{name}.gen.tmp.")];
    for e in entries.flatten() {
        let f = e.file_name();
        if f.to_str().is_some_and(|f| prefixes.iter().any(|p| f.starts_with(p.as_str()))) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!("removed {}, left by an interrupted save", e.path().display()),
                Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A save onto a full disk is an error of kind DiskFull, whether usearch's own write
    /// fails (a large index) or only its final flush, whose error it ignores (a small one).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_fails_the_save_as_a_full_disk() {
        for n in [1, 300] {
            let mut v = VectorIndex::new(64, None, 1, "n").unwrap();
            for k in 0..n {
                v.add(k, &[k as f32 + 1.0; 64]).unwrap();
            }
            let e = write_index(&v.index, Path::new("/dev/full")).unwrap_err();
            assert_eq!(e.kind(), mnema_core::ErrorKind::DiskFull, "{n} vectors: {e}");
        }
        // And a good write passes the check.
        let dir = tempfile::tempdir().unwrap();
        let mut v = VectorIndex::new(64, None, 1, "n").unwrap();
        v.add(1, &[1.0; 64]).unwrap();
        write_index(&v.index, &dir.path().join("i.usearch")).unwrap();
    }

    /// A save killed between writing its temporary file and renaming it leaves the file
    /// behind; the next save removes it (and only such files).
    #[test]
    fn a_save_removes_what_killed_saves_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.usearch");
        let left = [dir.path().join("vectors.usearch.tmp.4242.0"), dir.path().join("vectors.usearch.gen.tmp.4242.1")];
        for f in &left {
            std::fs::write(f, b"half").unwrap();
        }
        let keep = dir.path().join("vectors.usearch.tmpfile-of-someone-else");
        std::fs::write(&keep, b"x").unwrap();
        let mut v = VectorIndex::new(4, Some(&path), 1, "n").unwrap();
        v.add(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        v.save("store", false).unwrap();
        for f in &left {
            assert!(!f.exists(), "{} is still there", f.display());
        }
        assert!(keep.exists());
        assert!(path.exists() && gen_path(&path).exists());
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
    }
}
