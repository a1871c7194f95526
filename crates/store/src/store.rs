//! The [`Store`] interface every backend implements, and [`SqliteStore`], today's backend.

use crate::{ChunkRow, CopyMeta, EmbeddedChunks, IndexCheck, NewItem, Result, Sqlite, Stats};
use mnema_core::{Chunk, Filters, Item, Kind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// What mnema keeps: items (one per file), their chunks with vectors, and the indexes that find
/// them. Every method takes `&self` and a store is `Send + Sync`, so one handle serves many
/// threads (the server's requests, ingest's workers). Each write is atomic (all of it or
/// nothing, seen whole by every reader); a read sees committed writes, though one made of
/// several queries (counts, rows of many ids) may see a write that lands between them.
///
/// **Contract** (`tests/conformance.rs` runs it against every backend):
/// - A path holds at most one item; writing a path again replaces its chunks and vectors and
///   keeps its id. Chunk ids are never reused.
/// - Every committed vector is found by [`vector_candidates`](Store::vector_candidates),
///   whichever handle or process committed it; a deleted item's chunks are never returned.
/// - A store holds vectors of one embedder and dimension: others are refused with
///   [`StoreError::EmbedderMismatch`](crate::StoreError::EmbedderMismatch), before anything
///   is written.
/// - Scores are higher-is-better and comparable only within one result list.
pub trait Store: Send + Sync {
    /// The embedding model and dimension the stored vectors come from, if any.
    fn embedder(&self) -> Result<Option<(String, usize)>>;
    /// The item with `id`, if any.
    fn item(&self, id: i64) -> Result<Option<Item>>;
    /// The item stored for `path`, if any.
    fn item_by_path(&self, path: &str) -> Result<Option<Item>>;
    /// Another item of `kind` with the same content (sha256), not at `not_path`, if any.
    fn item_by_content(&self, sha256: &str, kind: Kind, not_path: &str) -> Result<Option<Item>>;
    /// Items matching `filters`, newest first (modification time, then id).
    fn items(&self, filters: &Filters, limit: usize, offset: usize) -> Result<Vec<Item>>;
    /// The chunks of an item, in order, with their vectors.
    fn chunks(&self, item_id: i64) -> Result<Vec<(Chunk, Option<Vec<f32>>)>>;
    /// Writes an item and its chunks (one vector per chunk; empty vectors for none) at once,
    /// replacing whatever the same path had. Returns the item id.
    fn put_item(&self, item: &NewItem, chunks: &[Chunk], vecs: &[Vec<f32>], embedder: &str) -> Result<i64>;
    /// Stores `item` with a copy of the chunks and vectors of item `from`, checking in the
    /// same write that `from` still holds content `from_sha256` and every chunk has a vector;
    /// `None` when not (the caller extracts instead), else the new id and chunk count.
    fn put_item_copy(&self, item: &NewItem, from: i64, from_sha256: &str, copy_meta: CopyMeta<'_>) -> Result<Option<(i64, usize)>>;
    /// Deletes an item and everything derived from it, at once. Returns the item as it was;
    /// `None` when there was none (a second delete, or a concurrent one that came first).
    fn delete_item(&self, id: i64) -> Result<Option<Item>>;
    /// Chunks holding any of the stemmed `terms` ([`mnema_core::text`]), best first:
    /// `(chunk id, score)`.
    fn keyword_candidates(&self, terms: &[String], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>>;
    /// Nearest chunks to `query` by cosine (vectors are unit length), best first:
    /// `(chunk id, cosine)`.
    fn vector_candidates(&self, query: &[f32], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>>;
    /// Chunk rows with their items' fields, in the order of `ids` (unknown ids skipped).
    fn chunk_rows(&self, ids: &[i64]) -> Result<Vec<ChunkRow>>;
    /// Stored images (not at `not_path`) whose difference hash (`meta.dhash`) is within
    /// `max_bits` (< 8) of `hash`, nearest first: `(id, path, sha256, hash)`.
    fn image_candidates(&self, hash: u64, max_bits: u32, not_path: &str) -> Result<Vec<(i64, String, String, u64)>>;
    /// Item and chunk counts and the bytes the store occupies.
    fn stats(&self) -> Result<Stats>;
    /// Records `root` as a place the server may ingest from (a root inside a recorded one
    /// adds nothing; recorded roots inside `root` are replaced by it).
    fn add_root(&self, root: &Path) -> Result<()>;
    /// The recorded roots.
    fn roots(&self) -> Result<Vec<PathBuf>>;
    /// Makes what was written durable where the backend keeps derived state (the vector index
    /// file); also done when the store is dropped.
    fn flush(&self) -> Result<()>;
    /// Compares the vector index, as searches see it, with the stored vectors.
    fn check_index(&self) -> Result<IndexCheck>;
    /// Rebuilds the vector index from the stored vectors.
    fn repair_index(&self) -> Result<()>;
}

/// The SQLite store: one database file (WAL) and an HNSW index file in the data directory.
/// One connection behind a lock: calls from several threads take turns.
pub struct SqliteStore {
    inner: Mutex<Sqlite>,
    db_path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in data directory `home`. The directory is made
    /// owner-only (0700) and the database, its WAL and the index files owner-only (0600).
    pub fn open(home: &Path) -> Result<SqliteStore> {
        Ok(SqliteStore::wrap(Sqlite::open(home)?))
    }

    /// A throwaway store in memory (tests).
    pub fn open_in_memory() -> Result<SqliteStore> {
        Ok(SqliteStore::wrap(Sqlite::open_in_memory()?))
    }

    fn wrap(s: Sqlite) -> SqliteStore {
        SqliteStore { db_path: s.db_path().to_path_buf(), inner: Mutex::new(s) }
    }

    /// A panic in another thread mid-call leaves SQLite consistent (its transaction rolls
    /// back), so the lock is taken back rather than poisoning every later call.
    fn lock(&self) -> MutexGuard<'_, Sqlite> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Makes this handle's vector searches walk the HNSW graph from `exact_max` stored vectors
    /// up (`0`: always), so tests can exercise the graph on small stores.
    #[doc(hidden)]
    pub fn set_exact_search_max(&self, exact_max: usize) {
        self.lock().set_exact_search_max(exact_max);
    }

    /// Writes many items in one transaction for bulk loading (benchmarks): vectors go to
    /// SQLite only, and the index is rebuilt on next use.
    #[doc(hidden)]
    pub fn bulk_insert(&self, rows: &[(NewItem, EmbeddedChunks)], embedder: &str) -> Result<()> {
        self.lock().bulk_insert(rows, embedder)
    }

    /// Bytes the loaded vector index occupies (0 when not loaded).
    pub fn index_memory_bytes(&self) -> usize {
        self.lock().index_memory_bytes()
    }

    /// Loads (or rebuilds) the vector index now rather than on the first search.
    pub fn warm(&self) -> Result<()> {
        self.lock().warm()
    }
}

impl Store for SqliteStore {
    fn embedder(&self) -> Result<Option<(String, usize)>> {
        self.lock().embedder()
    }
    fn item(&self, id: i64) -> Result<Option<Item>> {
        self.lock().item(id)
    }
    fn item_by_path(&self, path: &str) -> Result<Option<Item>> {
        self.lock().item_by_path(path)
    }
    fn item_by_content(&self, sha256: &str, kind: Kind, not_path: &str) -> Result<Option<Item>> {
        self.lock().item_by_content(sha256, kind, not_path)
    }
    fn items(&self, filters: &Filters, limit: usize, offset: usize) -> Result<Vec<Item>> {
        self.lock().items(filters, limit, offset)
    }
    fn chunks(&self, item_id: i64) -> Result<Vec<(Chunk, Option<Vec<f32>>)>> {
        self.lock().chunks(item_id)
    }
    fn put_item(&self, item: &NewItem, chunks: &[Chunk], vecs: &[Vec<f32>], embedder: &str) -> Result<i64> {
        self.lock().put_item(item, chunks, vecs, embedder)
    }
    fn put_item_copy(&self, item: &NewItem, from: i64, from_sha256: &str, copy_meta: CopyMeta<'_>) -> Result<Option<(i64, usize)>> {
        self.lock().put_item_copy(item, from, from_sha256, copy_meta)
    }
    fn delete_item(&self, id: i64) -> Result<Option<Item>> {
        self.lock().delete_item(id)
    }
    fn keyword_candidates(&self, terms: &[String], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>> {
        self.lock().keyword_candidates(terms, filters, limit)
    }
    fn vector_candidates(&self, query: &[f32], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>> {
        self.lock().vector_candidates(query, filters, limit)
    }
    fn chunk_rows(&self, ids: &[i64]) -> Result<Vec<ChunkRow>> {
        self.lock().chunk_rows(ids)
    }
    fn image_candidates(&self, hash: u64, max_bits: u32, not_path: &str) -> Result<Vec<(i64, String, String, u64)>> {
        self.lock().image_candidates(hash, max_bits, not_path)
    }
    fn stats(&self) -> Result<Stats> {
        self.lock().stats()
    }
    fn add_root(&self, root: &Path) -> Result<()> {
        self.lock().add_root(root)
    }
    fn roots(&self) -> Result<Vec<PathBuf>> {
        self.lock().roots()
    }
    fn flush(&self) -> Result<()> {
        self.lock().flush()
    }
    fn check_index(&self) -> Result<IndexCheck> {
        self.lock().check_index()
    }
    fn repair_index(&self) -> Result<()> {
        self.lock().repair_index()
    }
}
