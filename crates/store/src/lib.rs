//! The embedded store: one SQLite file (WAL) holding items, chunks, their vectors and a
//! stemmed FTS5 index, plus an HNSW vector index file beside it (see [`vectors`]).
//!
//! **API Boundary:** no other crate opens the database or writes SQL; `search` asks for
//! candidates through [`Store::keyword_candidates`] and [`Store::vector_candidates`].
#![deny(missing_docs)]

pub mod memory;
pub mod schema;
mod store;
pub mod vectors;

pub use memory::MemoryStore;
pub use store::{SqliteStore, Store};

use mnema_core::{text, Chunk, Filters, Item, Kind};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ToSql, TransactionBehavior};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use vectors::{from_blob, to_blob, VectorIndex};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database {path}: {source}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The data directory or database cannot be used.
    #[error("{0}")]
    Open(String),
    /// The vector index failed.
    #[error("vector index: {0}")]
    Index(String),
    /// A file of the vector index could not be read or written.
    #[error("vector index: {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot write", "cannot remove"…).
        what: String,
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Vectors of another model or size than the store holds.
    #[error("this store holds {have} vectors; cannot mix in {got}: use `--home` for another store or re-ingest into a fresh one")]
    EmbedderMismatch {
        /// What the store holds.
        have: String,
        /// What was offered.
        got: String,
    },
}

impl StoreError {
    /// What sort of failure this is: a full disk (SQLite's or the index file's) is
    /// [`DiskFull`](mnema_core::ErrorKind::DiskFull), another writer holding the database
    /// [`Busy`](mnema_core::ErrorKind::Busy), an unusable data directory or a store of
    /// another embedder the user's [`Input`](mnema_core::ErrorKind::Input), the rest
    /// [`Internal`](mnema_core::ErrorKind::Internal).
    pub fn kind(&self) -> mnema_core::ErrorKind {
        use mnema_core::ErrorKind as K;
        match self {
            StoreError::Sql { source, .. } => sqlite_kind(source),
            StoreError::Io { source, .. } => match source.kind() {
                // The user's files, the user's to fix (as SQLite's PermissionDenied/ReadOnly).
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => K::Input,
                _ => K::of_io(source, K::Internal),
            },
            StoreError::Index(_) => K::Internal,
            StoreError::Open(_) | StoreError::EmbedderMismatch { .. } => K::Input,
        }
    }
}

/// SQLITE_FULL (or an IO error saying ENOSPC) is a full disk; SQLITE_BUSY/LOCKED another
/// writer; a file that cannot be opened, written or is not a database the user's to fix; the
/// rest a failure of ours.
pub fn sqlite_kind(e: &rusqlite::Error) -> mnema_core::ErrorKind {
    use mnema_core::ErrorKind as K;
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => K::DiskFull,
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => K::Busy,
        Some(
            rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::PermissionDenied
            | rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::NotADatabase,
        ) => K::Input,
        _ => K::Internal,
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new or changed item to write, with its derived chunks.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// Absolute path.
    pub path: String,
    /// Kind.
    pub kind: Kind,
    /// sha256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Metadata.
    pub meta: serde_json::Value,
}

/// A chunk as stored, with its item's fields (what search results are built from).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    /// Chunk id.
    pub chunk_id: i64,
    /// Item id.
    pub item_id: i64,
    /// Item path.
    pub path: String,
    /// Item kind.
    pub kind: Kind,
    /// Item modification time.
    pub mtime: i64,
    /// The chunk.
    pub chunk: Chunk,
}

/// Counts for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Items.
    pub items: u64,
    /// Chunks.
    pub chunks: u64,
    /// Database file size in bytes.
    pub db_bytes: u64,
}

/// An item's chunks, each with its vector.
pub type EmbeddedChunks = Vec<(Chunk, Vec<f32>)>;

/// What of the source item's metadata [`Store::put_item_copy`] copies into the new item.
#[derive(Debug, Clone, Copy)]
pub enum CopyMeta<'a> {
    /// These keys, where the source has them (the new item keeps its other fields).
    Keys(&'a [&'a str]),
    /// The source's whole metadata replaces the new item's.
    All,
}

/// Today's SQLite store, behind [`SqliteStore`]'s lock.
struct Sqlite {
    conn: Connection,
    db_path: PathBuf,
    index_path: Option<PathBuf>,
    /// `meta.store_id`: ties an index file to this database.
    store_id: String,
    /// The embedder once the store has one (it never changes afterwards).
    embedder: std::cell::OnceCell<(String, usize)>,
    vectors: Option<VectorIndex>,
    /// Stored vectors up to which vector searches are exact ([`vectors::EXACT_MAX`]).
    exact_max: usize,
}

/// How the vector index compares with SQLite (`Store::check_index`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCheck {
    /// Chunks with a vector in SQLite.
    pub sqlite_vectors: u64,
    /// Live (searchable) vectors in the index.
    pub index_vectors: u64,
    /// SQLite vectors the index lacks.
    pub missing: u64,
    /// Index vectors SQLite no longer has.
    pub extra: u64,
    /// True when the index holds exactly SQLite's vectors.
    pub ok: bool,
}

/// Log rows kept for catching up; older generations are pruned when the log is twice this
/// long (an index further behind is rebuilt, which then costs about as much as replaying).
const LOG_KEEP: i64 = 50_000;

/// Attempts of a write transaction that SQLite reports busy after its busy timeout.
const WRITE_ATTEMPTS: u32 = 8;

/// Owner-only data directory (0700), tightening an existing one; best effort.
fn private_dir(home: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(home) {
            if m.permissions().mode() & 0o077 != 0 {
                if let Err(e) = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)) {
                    tracing::warn!("cannot make data directory {} private: {e}", home.display());
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = home;
}

impl Sqlite {
    /// Opens (creating if needed) the store in data directory `home`. The directory is made
    /// owner-only (0700) and the database, its WAL and the index files owner-only (0600).
    pub fn open(home: &Path) -> Result<Sqlite> {
        std::fs::create_dir_all(home).map_err(|e| StoreError::Io {
            what: "cannot create data directory".into(),
            path: home.into(),
            source: e,
        })?;
        private_dir(home);
        let db_path = home.join("mnema.db");
        let conn = Connection::open(&db_path).map_err(|source| StoreError::Sql { path: db_path.clone(), source })?;
        // Before WAL mode creates -wal and -shm: SQLite gives them the database's mode.
        vectors::private(&db_path);
        for f in ["mnema.db-wal", "mnema.db-shm", "vectors.usearch", "vectors.usearch.gen", "vectors.usearch.lock"] {
            vectors::private(&home.join(f));
        }
        Self::init(conn, db_path, Some(home.join("vectors.usearch")))
    }

    /// A throwaway store in memory (tests).
    pub fn open_in_memory() -> Result<Sqlite> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Sql { path: ":memory:".into(), source })?;
        Self::init(conn, ":memory:".into(), None)
    }

    /// Makes this handle's vector searches walk the HNSW graph from `exact_max` stored vectors
    /// up (`0`: always), so tests can exercise the graph on small stores.
    #[doc(hidden)]
    pub fn set_exact_search_max(&mut self, exact_max: usize) {
        self.exact_max = exact_max;
    }

    fn init(mut conn: Connection, db_path: PathBuf, index_path: Option<PathBuf>) -> Result<Sqlite> {
        let sql = |source| StoreError::Sql { path: db_path.clone(), source };
        // Writers wait for each other (the busy handler) instead of failing at once.
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(sql)?;
        // WAL: readers (search, the server) never block the writer (ingest) and a killed
        // writer loses at most its open transaction.
        // Switching a new database to WAL needs it alone: a second process opening it at the
        // same moment gets SQLITE_BUSY at once (the busy handler is skipped where waiting could
        // deadlock), so the switch is retried for up to ten seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut attempt = 0u64;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() < deadline && sqlite_kind(&e) == mnema_core::ErrorKind::Busy => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20 + (attempt % 5) * 10));
                }
                Err(e) => return Err(sql(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
        schema::migrate(&mut conn).map_err(|e| match e {
            schema::MigrateError::Sql(source) => StoreError::Sql { path: db_path.clone(), source },
            schema::MigrateError::Newer(msg) => StoreError::Open(format!("database {}: {msg}", db_path.display())),
        })?;
        let store_id: String =
            conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| r.get(0)).optional().map_err(sql)?.unwrap_or_default();
        Ok(Sqlite {
            conn,
            db_path,
            index_path,
            store_id,
            embedder: std::cell::OnceCell::new(),
            vectors: None,
            exact_max: vectors::EXACT_MAX,
        })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql { path: self.db_path.clone(), source }
    }

    /// The database file path.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>> {
        meta_get(&self.conn, key).map_err(|e| self.sql(e))
    }

    /// The embedding model and dimension the stored vectors come from, if any.
    pub fn embedder(&self) -> Result<Option<(String, usize)>> {
        if let Some(e) = self.embedder.get() {
            return Ok(Some(e.clone()));
        }
        let name = self.meta_get("embedder")?;
        let dim = self.meta_get("dim")?.and_then(|d| d.parse().ok());
        let found = name.zip(dim);
        if let Some(e) = &found {
            let _ = self.embedder.set(e.clone());
        }
        Ok(found)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so a
    /// concurrent writer makes this one wait (busy timeout) instead of failing on a read lock
    /// that cannot be upgraded. Still busy after the timeout: retried a few times.
    fn write<T>(&mut self, mut f: impl FnMut(&rusqlite::Transaction<'_>, &Path) -> Result<T>) -> Result<T> {
        let path = self.db_path.clone();
        let sqlerr = |source| StoreError::Sql { path: path.clone(), source };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlerr)
                .and_then(|tx| f(&tx, &path).and_then(|v| tx.commit().map(|_| v).map_err(sqlerr)));
            match r {
                Err(e) if attempt < WRITE_ATTEMPTS && e.kind() == mnema_core::ErrorKind::Busy => {
                    tracing::debug!("database busy, retrying: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt.min(5)));
                }
                r => return r,
            }
        }
    }

    /// The vector index, loaded (or rebuilt) and brought up to the database's generation:
    /// every committed vector is searchable, whichever process committed it.
    fn index(&mut self) -> Result<Option<&mut VectorIndex>> {
        let Some((_, dim)) = self.embedder()? else { return Ok(None) };
        if self.vectors.as_ref().is_some_and(|v| v.needs_rebuild()) {
            tracing::info!("vector index has {} tombstones: rebuilding", self.vectors.as_ref().map_or(0, VectorIndex::tombstones));
            self.vectors = None;
            let idx = rebuild_index(&self.conn, &self.db_path, dim, self.index_path.as_deref())?;
            self.vectors = Some(idx);
        }
        if self.vectors.is_none() {
            let loaded = self.index_path.as_deref().and_then(|p| VectorIndex::load(dim, p, &self.store_id));
            let idx = match loaded {
                Some(v) => v,
                None => rebuild_index(&self.conn, &self.db_path, dim, self.index_path.as_deref())?,
            };
            self.vectors = Some(idx);
        }
        self.catch_up(dim)?;
        Ok(self.vectors.as_mut())
    }

    /// Replays the vector log from the index's generation to the database's (cheap when
    /// nothing moved: one indexed read), or rebuilds when the log no longer reaches back.
    fn catch_up(&mut self, dim: usize) -> Result<()> {
        let Some(idx) = self.vectors.as_mut() else { return Ok(()) };
        let sqlerr = |source| StoreError::Sql { path: self.db_path.clone(), source };
        let at = idx.gen();
        let (now, nonce) = gen_id(&self.conn).map_err(sqlerr)?;
        if now == at && nonce == idx.nonce() {
            return Ok(());
        }
        // One read transaction: the generation, the log and the vectors are one snapshot.
        let tx = self.conn.unchecked_transaction().map_err(sqlerr)?;
        let (now, nonce) = gen_id(&tx).map_err(sqlerr)?;
        let floor: i64 = meta_get(&tx, "log_floor").map_err(sqlerr)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        // Replaying from `at` is sound only when this database went through the very
        // generation the index reflects: the same nonce at `at` means it shares the history up
        // to there (a backup restored at or after `at`), so the log above `at` is exactly what
        // the index lacks. A database restored to before `at` and written again names `at`
        // with another nonce (or is still behind it): the index holds a lost history, whose
        // chunk ids the database hands out again for other vectors.
        let same_history = nonce_of(&tx, at).map_err(sqlerr)?.is_some_and(|n| n == idx.nonce());
        if now < at || at < floor || !same_history {
            drop(tx);
            tracing::info!(
                "vector index at generation {at}, database at {now} (log from {floor}, same history: {same_history}): rebuilding"
            );
            self.vectors = None;
            let mut idx = rebuild_index(&self.conn, &self.db_path, dim, self.index_path.as_deref())?;
            if now < at {
                // The file is ahead of the database: replace it now, or every process would
                // rebuild until the database passes it (and a save would then be skipped).
                if let Err(e) = idx.save(&self.store_id, true) {
                    tracing::warn!("replacing the vector index ahead of the database failed (it will be rebuilt): {e}");
                }
            }
            self.vectors = Some(idx);
            return Ok(());
        }
        let touched: Vec<i64> = {
            let mut s = tx.prepare_cached("SELECT DISTINCT chunk_id FROM vector_log WHERE gen > ?1 AND gen <= ?2").map_err(sqlerr)?;
            let rows = s.query_map([at, now], |r| r.get(0)).map_err(sqlerr)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sqlerr)?
        };
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        {
            let mut s = tx.prepare_cached("SELECT vector FROM chunks WHERE id = ?1 AND vector IS NOT NULL").map_err(sqlerr)?;
            for id in touched {
                let v: Option<Vec<u8>> = s.query_row([id], |r| r.get(0)).optional().map_err(sqlerr)?;
                match (idx.contains(id), v) {
                    (true, None) => removes.push(id),
                    (false, Some(b)) => adds.push((id, from_blob(&b))),
                    _ => {}
                }
            }
        }
        drop(tx);
        for id in removes {
            idx.remove(id)?;
        }
        idx.add_many(&adds)?;
        idx.set_gen(now, &nonce);
        Ok(())
    }

    /// Saves the vector index, under the generation it reflects, if it changed. Called after a
    /// batch of writes; also on drop.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(v) = self.vectors.as_mut() {
            v.save(&self.store_id, false)?;
        }
        Ok(())
    }

    /// Compares the vector index (as searches use it: loaded and caught up) with SQLite:
    /// counts, and every SQLite vector's id looked up in the index.
    pub fn check_index(&mut self) -> Result<IndexCheck> {
        if self.index()?.is_none() {
            let n: i64 =
                self.conn.query_row("SELECT count(*) FROM chunks WHERE vector IS NOT NULL", [], |r| r.get(0)).map_err(|e| self.sql(e))?;
            return Ok(IndexCheck { sqlite_vectors: n as u64, missing: n as u64, ok: n == 0, ..Default::default() });
        }
        let sqlerr = |source| StoreError::Sql { path: self.db_path.clone(), source };
        let Some(idx) = self.vectors.as_ref() else { return Ok(IndexCheck::default()) };
        let tx = self.conn.unchecked_transaction().map_err(sqlerr)?;
        if gen_of(&tx).map_err(sqlerr)? != idx.gen() {
            // A writer committed since the catch-up: compare at the next generation.
            drop(tx);
            return self.check_index();
        }
        let (mut sqlite, mut present) = (0u64, 0u64);
        let mut s = tx.prepare("SELECT id FROM chunks WHERE vector IS NOT NULL").map_err(sqlerr)?;
        let mut rows = s.query([]).map_err(sqlerr)?;
        while let Some(r) = rows.next().map_err(sqlerr)? {
            sqlite += 1;
            present += idx.contains(r.get(0).map_err(sqlerr)?) as u64;
        }
        let index_vectors = idx.len() as u64;
        let (missing, extra) = (sqlite - present, index_vectors.saturating_sub(present));
        Ok(IndexCheck { sqlite_vectors: sqlite, index_vectors, missing, extra, ok: missing == 0 && extra == 0 })
    }

    /// Rebuilds the vector index from SQLite and saves it (what `mnema doctor` does when
    /// [`Store::check_index`] finds a difference).
    pub fn repair_index(&mut self) -> Result<()> {
        let Some((_, dim)) = self.embedder()? else { return Ok(()) };
        self.vectors = None;
        let mut idx = rebuild_index(&self.conn, &self.db_path, dim, self.index_path.as_deref())?;
        idx.save(&self.store_id, true)?;
        self.vectors = Some(idx);
        Ok(())
    }

    /// The item stored for `path`, if any.
    pub fn item_by_path(&self, path: &str) -> Result<Option<Item>> {
        self.conn
            .query_row(&format!("SELECT {ITEM_COLS} FROM items WHERE path = ?1"), [path], item_from_row)
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// The item with `id`, if any.
    pub fn item(&self, id: i64) -> Result<Option<Item>> {
        self.conn
            .query_row(&format!("SELECT {ITEM_COLS} FROM items WHERE id = ?1"), [id], item_from_row)
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Items matching `filters`, newest first.
    pub fn items(&self, filters: &Filters, limit: usize, offset: usize) -> Result<Vec<Item>> {
        let (cond, mut args) = filter_sql(filters);
        args.push(Box::new(limit as i64));
        args.push(Box::new(offset as i64));
        let q = format!("SELECT {ITEM_COLS} FROM items i WHERE {cond} ORDER BY mtime DESC, id DESC LIMIT ? OFFSET ?");
        let mut stmt = self.conn.prepare(&q).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map(params_from_iter(args.iter()), item_from_row).map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// The chunks of an item, in order, with their vectors.
    pub fn chunks(&self, item_id: i64) -> Result<Vec<(Chunk, Option<Vec<f32>>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, text, start, end, start_ms, end_ms, vector FROM chunks WHERE item_id = ?1 ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([item_id], |r| {
                let v: Option<Vec<u8>> = r.get(6)?;
                Ok((chunk_from_row(r, 0)?, v.map(|b| from_blob(&b))))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Writes an item and its chunks in one transaction, replacing whatever the same path
    /// had before (old chunks, terms and vectors go with it). Returns the item id.
    pub fn put_item(&mut self, item: &NewItem, chunks: &[Chunk], vecs: &[Vec<f32>], embedder: &str) -> Result<i64> {
        assert_eq!(chunks.len(), vecs.len(), "one vector per chunk");
        let id = self.write(|tx, path| insert_item(tx, path, item, chunks, vecs, embedder))?;
        self.after_put(vecs.first().is_some_and(|v| !v.is_empty()))?;
        Ok(id)
    }

    /// Committed: brings the index up to date from the log (this change and any other
    /// process's), so it can be saved as current.
    fn after_put(&mut self, with_vectors: bool) -> Result<()> {
        if with_vectors || self.vectors.is_some() {
            self.index()?;
        }
        Ok(())
    }

    /// Stores `item` with a copy of the chunks and vectors of item `from`, in one transaction
    /// that first checks `from` still exists with content `from_sha256`; `copy_meta` names
    /// what of its metadata comes along. `None` when it is gone, holds other content or has a
    /// chunk without a vector (the caller extracts instead); otherwise the new item's id and
    /// chunk count. A copy read outside the write could store a deleted twin's empty text or
    /// a re-ingested twin's new text (`tests/trust.rs::a_copy_is_taken_only_from_the_twin_as_it_is`).
    pub fn put_item_copy(&mut self, item: &NewItem, from: i64, from_sha256: &str, copy_meta: CopyMeta<'_>) -> Result<Option<(i64, usize)>> {
        let done = self.write(|tx, path| {
            let sqlerr = |source| StoreError::Sql { path: path.to_path_buf(), source };
            let src: Option<(String, String)> = tx
                .query_row("SELECT sha256, meta FROM items WHERE id = ?1", [from], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(sqlerr)?;
            let Some((_, meta)) = src.filter(|s| s.0 == from_sha256) else { return Ok(None) };
            let stored: Vec<(Chunk, Option<Vec<u8>>)> = {
                let mut s = tx
                    .prepare_cached("SELECT seq, text, start, end, start_ms, end_ms, vector FROM chunks WHERE item_id = ?1 ORDER BY seq")
                    .map_err(sqlerr)?;
                let rows = s.query_map([from], |r| Ok((chunk_from_row(r, 0)?, r.get(6)?))).map_err(sqlerr)?;
                rows.collect::<rusqlite::Result<_>>().map_err(sqlerr)?
            };
            if stored.iter().any(|(_, v)| v.is_none()) {
                return Ok(None);
            }
            let (chunks, vecs): (Vec<Chunk>, Vec<Vec<f32>>) =
                stored.into_iter().map(|(c, v)| (c, from_blob(&v.unwrap_or_default()))).unzip();
            let src_meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null);
            let mut item = item.clone();
            match copy_meta {
                CopyMeta::All => item.meta = src_meta,
                CopyMeta::Keys(keys) => {
                    for k in keys {
                        if let (Some(v), Some(m)) = (src_meta.get(k), item.meta.as_object_mut()) {
                            m.insert(k.to_string(), v.clone());
                        }
                    }
                }
            }
            let embedder = meta_get(tx, "embedder").map_err(sqlerr)?.unwrap_or_default();
            let id = insert_item(tx, path, &item, &chunks, &vecs, &embedder)?;
            Ok(Some((id, chunks.len(), !vecs.is_empty())))
        })?;
        let Some((id, n, with_vectors)) = done else { return Ok(None) };
        self.after_put(with_vectors)?;
        Ok(Some((id, n)))
    }

    /// Deletes an item and everything derived from it, in one transaction. Returns the item
    /// as it was, `None` when there was none.
    pub fn delete_item(&mut self, id: i64) -> Result<Option<Item>> {
        let gone = self.write(|tx, path| {
            let sqlerr = |source| StoreError::Sql { path: path.to_path_buf(), source };
            let Some(item) =
                tx.query_row(&format!("SELECT {ITEM_COLS} FROM items WHERE id = ?1"), [id], item_from_row).optional().map_err(sqlerr)?
            else {
                return Ok(None);
            };
            let removed = delete_chunks(tx, id).map_err(sqlerr)?;
            tx.execute("DELETE FROM items WHERE id = ?1", [id]).map_err(sqlerr)?;
            log_vectors(tx, &removed).map_err(sqlerr)?;
            Ok(Some(item))
        })?;
        // A loaded index follows at once; otherwise the next one loaded catches up from the log.
        if self.vectors.is_some() {
            self.index()?;
        }
        Ok(gone)
    }

    /// Full-text candidates for stemmed `terms` (any of them), best BM25 first:
    /// `(chunk id, score)` with higher scores better.
    pub fn keyword_candidates(&self, terms: &[String], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // Terms are runs of letters and digits (mnema_core::text), so quoting is enough.
        let expr = terms.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(" OR ");
        let (cond, mut args) = filter_sql(filters);
        let mut all: Vec<Box<dyn ToSql>> = vec![Box::new(expr)];
        all.append(&mut args);
        all.push(Box::new(limit as i64));
        let q = if filters.is_empty() {
            "SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?".to_string()
        } else {
            format!(
                "SELECT f.rowid, -bm25(chunks_fts) FROM chunks_fts f JOIN chunks c ON c.id = f.rowid JOIN items i ON i.id = c.item_id \
                 WHERE chunks_fts MATCH ? AND {cond} ORDER BY bm25(chunks_fts) LIMIT ?"
            )
        };
        let mut stmt = self.conn.prepare_cached(&q).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map(params_from_iter(all.iter()), |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Nearest chunks to `query` by cosine, best first. With filters, only matching chunks
    /// are considered (scored exactly when few match).
    pub fn vector_candidates(&mut self, query: &[f32], filters: &Filters, limit: usize) -> Result<Vec<(i64, f64)>> {
        if let Some((name, dim)) = self.embedder()? {
            if dim != query.len() {
                return Err(StoreError::EmbedderMismatch { have: format!("{name} ({dim}-d)"), got: format!("a {}-d query", query.len()) });
            }
        }
        if filters.is_empty() {
            let exact_max = self.exact_max;
            let Some(idx) = self.index()? else { return Ok(Vec::new()) };
            return Ok(idx.search_within(query, limit, None, exact_max)?.into_iter().map(|(k, s)| (k, s as f64)).collect());
        }
        let (cond, args) = filter_sql(filters);
        let q = format!("SELECT c.id FROM chunks c JOIN items i ON i.id = c.item_id WHERE c.vector IS NOT NULL AND {cond}");
        let allowed: HashSet<i64> = {
            let mut stmt = self.conn.prepare(&q).map_err(|e| self.sql(e))?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |r| r.get(0)).map_err(|e| self.sql(e))?;
            rows.collect::<std::result::Result<_, _>>().map_err(|e| self.sql(e))?
        };
        if allowed.len() <= 4096 {
            return self.exact_candidates(query, Some(&allowed), limit);
        }
        let exact_max = self.exact_max;
        let Some(idx) = self.index()? else { return Ok(Vec::new()) };
        let f = |k: i64| allowed.contains(&k);
        Ok(idx.search_within(query, limit, Some(&f), exact_max)?.into_iter().map(|(k, s)| (k, s as f64)).collect())
    }

    /// Exact cosine scores over stored vectors (all, or only `only`), best first.
    pub fn exact_candidates(&self, query: &[f32], only: Option<&HashSet<i64>>, limit: usize) -> Result<Vec<(i64, f64)>> {
        let mut stmt = self.conn.prepare_cached("SELECT id, vector FROM chunks WHERE vector IS NOT NULL").map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        let mut scored = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            let id: i64 = r.get(0).map_err(|e| self.sql(e))?;
            if only.is_some_and(|s| !s.contains(&id)) {
                continue;
            }
            let blob = r.get_ref(1).map_err(|e| self.sql(e))?.as_blob().map_err(|e| self.sql(e.into()))?;
            let s: f32 = blob.chunks_exact(4).zip(query).map(|(b, q)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * q).sum();
            scored.push((id, s as f64));
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(limit);
        Ok(scored)
    }

    /// Chunk rows with their items' fields, in the order of `ids` (unknown ids skipped).
    pub fn chunk_rows(&self, ids: &[i64]) -> Result<Vec<ChunkRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.seq, c.text, c.start, c.end, c.start_ms, c.end_ms, c.id, i.id, i.path, i.kind, i.mtime \
                 FROM chunks c JOIN items i ON i.id = c.item_id WHERE c.id = ?1",
            )
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = stmt
                .query_row([id], |r| {
                    Ok(ChunkRow {
                        chunk: chunk_from_row(r, 0)?,
                        chunk_id: r.get(6)?,
                        item_id: r.get(7)?,
                        path: r.get(8)?,
                        kind: parse_kind(r.get_ref(9)?.as_str()?),
                        mtime: r.get(10)?,
                    })
                })
                .optional()
                .map_err(|e| self.sql(e))?;
            out.extend(row);
        }
        Ok(out)
    }

    /// Item and chunk counts and the database size.
    pub fn stats(&self) -> Result<Stats> {
        let items: i64 = self.conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0)).map_err(|e| self.sql(e))?;
        let chunks: i64 = self.conn.query_row("SELECT count(*) FROM chunks", [], |r| r.get(0)).map_err(|e| self.sql(e))?;
        let db_bytes = std::fs::metadata(&self.db_path).map(|m| m.len()).unwrap_or(0);
        Ok(Stats { items: items as u64, chunks: chunks as u64, db_bytes })
    }

    /// Writes many items in one transaction for bulk loading (benchmarks): vectors go to
    /// SQLite only, the log is cut at this generation, and every index is rebuilt on next use.
    pub fn bulk_insert(&mut self, rows: &[(NewItem, EmbeddedChunks)], embedder: &str) -> Result<()> {
        self.write(|tx, path| {
            let sqlerr = |source| StoreError::Sql { path: path.to_path_buf(), source };
            {
                let mut item = tx
                    .prepare("INSERT INTO items (id, path, kind, sha256, size, mtime, indexed_at, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}')")
                    .map_err(sqlerr)?;
                let mut next_item = next_item_id(tx).map_err(sqlerr)?;
                let mut ins = tx
                    .prepare("INSERT INTO chunks (id, item_id, seq, text, start, end, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                    .map_err(sqlerr)?;
                let mut fts = tx.prepare("INSERT INTO chunks_fts (rowid, terms) VALUES (?1, ?2)").map_err(sqlerr)?;
                let mut next = next_chunk_id(tx).map_err(sqlerr)?;
                for (it, chunks) in rows {
                    let id = next_item;
                    next_item += 1;
                    item.execute(params![id, it.path, it.kind.as_str(), it.sha256, it.size as i64, it.mtime, it.mtime]).map_err(sqlerr)?;
                    for (c, v) in chunks {
                        ins.execute(params![next, id, c.seq, c.text, c.start, c.end, to_blob(v)]).map_err(sqlerr)?;
                        fts.execute(params![next, text::index_terms(&c.text)]).map_err(sqlerr)?;
                        next += 1;
                    }
                }
                set_next_chunk_id(tx, next).map_err(sqlerr)?;
                set_meta(tx, "item_id_next", next_item).map_err(sqlerr)?;
            }
            if let Some(dim) = rows.iter().flat_map(|r| r.1.first()).map(|c| c.1.len()).next() {
                tx.execute("INSERT INTO meta (key, value) VALUES ('embedder', ?1) ON CONFLICT(key) DO NOTHING", [embedder])
                    .map_err(sqlerr)?;
                tx.execute("INSERT INTO meta (key, value) VALUES ('dim', ?1) ON CONFLICT(key) DO NOTHING", [dim.to_string()])
                    .map_err(sqlerr)?;
            }
            let gen = log_vectors(tx, &[]).map_err(sqlerr)?;
            tx.execute("DELETE FROM vector_log", []).map_err(sqlerr)?;
            set_meta(tx, "log_floor", gen).map_err(sqlerr)?;
            Ok(())
        })?;
        self.vectors = None;
        Ok(())
    }

    /// Bytes the loaded vector index occupies (0 when not loaded).
    pub fn index_memory_bytes(&self) -> usize {
        self.vectors.as_ref().map_or(0, VectorIndex::memory_bytes)
    }

    /// Loads (or rebuilds) the vector index now rather than on the first search.
    pub fn warm(&mut self) -> Result<()> {
        self.index()?;
        Ok(())
    }

    /// Records `root` (an absolute, canonical file or folder the user ingested) as a place the
    /// server may ingest from; a root inside a recorded one adds nothing, and recorded roots
    /// inside `root` are replaced by it. Kept in `meta` (`allowed_roots`: a JSON array of
    /// paths, each a string, or its bytes when it is not UTF-8).
    pub fn add_root(&mut self, root: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.sql(e))?;
        let r = (|| {
            let mut roots = self.roots()?;
            if roots.iter().any(|r| root.starts_with(r)) {
                return Ok(());
            }
            roots.retain(|r| !r.starts_with(root));
            roots.push(root.to_path_buf());
            let json: Vec<serde_json::Value> =
                roots.iter().map(|r| r.to_str().map_or_else(|| r.as_os_str().as_bytes().to_vec().into(), Into::into)).collect();
            self.conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('allowed_roots', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [serde_json::Value::from(json).to_string()],
                )
                .map_err(|e| self.sql(e))?;
            Ok(())
        })();
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(|e| self.sql(e))?;
        r
    }

    /// The files and folders recorded by [`Store::add_root`].
    pub fn roots(&self) -> Result<Vec<PathBuf>> {
        use std::os::unix::ffi::OsStrExt;
        let v: Vec<serde_json::Value> = self.meta_get("allowed_roots")?.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        Ok(v.iter()
            .filter_map(|r| match r {
                serde_json::Value::String(s) => Some(PathBuf::from(s)),
                serde_json::Value::Array(b) => {
                    let bytes: Option<Vec<u8>> = b.iter().map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok())).collect();
                    bytes.map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
                }
                _ => None,
            })
            .collect())
    }

    /// Another item of `kind` with the same content (sha256), if any: a PNG and a recording
    /// never share chunks.
    pub fn item_by_content(&self, sha256: &str, kind: Kind, not_path: &str) -> Result<Option<Item>> {
        self.conn
            .query_row(
                &format!("SELECT {ITEM_COLS} FROM items WHERE sha256 = ?1 AND kind = ?2 AND path != ?3 LIMIT 1"),
                [sha256, kind.as_str(), not_path],
                item_from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Stored images (not at `not_path`) whose difference hash is within `max_bits` (< 8) of
    /// `hash`, nearest first: `(id, path, sha256, hash)`. An indexed query over hash bands.
    pub fn image_candidates(&self, hash: u64, max_bits: u32, not_path: &str) -> Result<Vec<(i64, String, String, u64)>> {
        let bands = hash_bands(hash);
        let cond = (0..8).map(|b| format!("(band = {b} AND bits = ?{})", b + 1)).collect::<Vec<_>>().join(" OR ");
        let q = format!(
            "SELECT i.id, i.path, i.sha256, json_extract(i.meta, '$.dhash') FROM items i JOIN \
             (SELECT item_id FROM image_bands WHERE {cond} GROUP BY item_id HAVING COUNT(*) >= ?9) c ON c.item_id = i.id \
             WHERE i.kind = 'image' AND i.path != ?10"
        );
        let mut args: Vec<Box<dyn ToSql>> = bands.iter().map(|b| Box::new(b.clone()) as Box<dyn ToSql>).collect();
        args.push(Box::new(8 - i64::from(max_bits.min(7))));
        args.push(Box::new(not_path.to_string()));
        let mut stmt = self.conn.prepare_cached(&q).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params_from_iter(args.iter()), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, path, sha, h) = r.map_err(|e| self.sql(e))?;
            if let Some(h) = h.and_then(|h| u64::from_str_radix(&h, 16).ok()).filter(|h| (h ^ hash).count_ones() <= max_bits) {
                out.push((id, path, sha, h));
            }
        }
        out.sort_by_key(|c| ((c.3 ^ hash).count_ones(), c.0));
        Ok(out)
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("saving the vector index failed (it will be rebuilt): {e}");
        }
    }
}

const ITEM_COLS: &str = "id, path, kind, sha256, size, mtime, indexed_at, meta";

fn parse_kind(s: &str) -> Kind {
    s.parse().unwrap_or(Kind::Note)
}

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let meta: String = r.get(7)?;
    Ok(Item {
        id: r.get(0)?,
        path: r.get(1)?,
        kind: parse_kind(r.get_ref(2)?.as_str()?),
        sha256: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        mtime: r.get(5)?,
        indexed_at: r.get(6)?,
        meta: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
    })
}

fn chunk_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Chunk> {
    Ok(Chunk {
        seq: r.get(at)?,
        text: r.get(at + 1)?,
        start: r.get(at + 2)?,
        end: r.get(at + 3)?,
        start_ms: r.get(at + 4)?,
        end_ms: r.get(at + 5)?,
    })
}

/// Deletes an item's chunks and their terms; returns the ids of removed chunks that had a
/// vector.
fn delete_chunks(tx: &rusqlite::Transaction<'_>, item_id: i64) -> rusqlite::Result<Vec<i64>> {
    let ids: Vec<(i64, bool)> = {
        let mut s = tx.prepare_cached("SELECT id, vector IS NOT NULL FROM chunks WHERE item_id = ?1")?;
        let rows = s.query_map([item_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut del = tx.prepare_cached("DELETE FROM chunks_fts WHERE rowid = ?1")?;
    for (id, _) in &ids {
        del.execute([id])?;
    }
    tx.execute("DELETE FROM chunks WHERE item_id = ?1", [item_id])?;
    Ok(ids.into_iter().filter(|x| x.1).map(|x| x.0).collect())
}

fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()
}

fn set_meta(tx: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value.to_string()],
    )?;
    Ok(())
}

/// `meta.vectors_gen`: bumped by every write transaction.
fn gen_of(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(meta_get(conn, "vectors_gen")?.and_then(|g| g.parse().ok()).unwrap_or(0))
}

/// The nonce naming generation `gen` (`vector_gens`), if it is still kept.
fn nonce_of(conn: &Connection, gen: i64) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT nonce FROM vector_gens WHERE gen = ?1")?.query_row([gen], |r| r.get(0)).optional()
}

/// The database's generation with its nonce: together they never name two contents.
fn gen_id(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    let gen = gen_of(conn)?;
    Ok((gen, nonce_of(conn, gen)?.unwrap_or_default()))
}

/// The next chunk id: above every id ever used, so ids are never reused (an index holding an
/// id can trust its vector, and a tombstone key stays unique).
fn next_chunk_id(tx: &Connection) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT max(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'chunk_id_next'), 1), \
         COALESCE((SELECT max(id) FROM chunks), 0) + 1)",
        [],
        |r| r.get(0),
    )
}

/// The next item id: past every id this database ever handed out (`meta.item_id_next`) and
/// every id it holds.
fn next_item_id(tx: &Connection) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT max(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'item_id_next'), 1), \
         COALESCE((SELECT max(id) FROM items), 0) + 1)",
        [],
        |r| r.get(0),
    )
}

fn set_next_chunk_id(tx: &Connection, next: i64) -> rusqlite::Result<()> {
    set_meta(tx, "chunk_id_next", next)
}

/// Bumps the generation, names it with a fresh random nonce, records the chunk ids whose
/// vectors this transaction added or removed under it, and prunes the log. Returns the new
/// generation.
fn log_vectors(tx: &Connection, ids: &[i64]) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('vectors_gen', '1') ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [],
    )?;
    let gen = gen_of(tx)?;
    tx.execute("INSERT OR REPLACE INTO vector_gens (gen, nonce) VALUES (?1, lower(hex(randomblob(16))))", [gen])?;
    {
        let mut ins = tx.prepare_cached("INSERT INTO vector_log (gen, chunk_id) VALUES (?1, ?2)")?;
        for id in ids {
            ins.execute([gen, *id])?;
        }
    }
    let (lo, hi): (Option<i64>, Option<i64>) =
        tx.query_row("SELECT min(id), max(id) FROM vector_log", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut cut = None;
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if hi - lo >= 2 * LOG_KEEP {
            // Cut at a whole generation: every generation above the floor stays complete.
            cut = Some(tx.query_row("SELECT gen FROM vector_log WHERE id <= ?1 ORDER BY id DESC LIMIT 1", [hi - LOG_KEEP], |r| r.get(0))?);
        }
    }
    // Many writes without vectors: the nonces are bounded too.
    let floor: i64 = meta_get(tx, "log_floor")?.and_then(|v| v.parse().ok()).unwrap_or(0);
    if gen - floor >= 2 * LOG_KEEP {
        cut = Some(cut.unwrap_or(0).max(gen - LOG_KEEP));
    }
    if let Some(cut) = cut {
        tx.execute("DELETE FROM vector_log WHERE gen <= ?1", [cut])?;
        // The floor's own nonce stays: an index at the floor still catches up.
        tx.execute("DELETE FROM vector_gens WHERE gen < ?1", [cut])?;
        set_meta(tx, "log_floor", cut)?;
    }
    Ok(gen)
}

/// A new index of every SQLite vector, at the generation read in the same snapshot.
fn rebuild_index(conn: &Connection, db_path: &Path, dim: usize, index_path: Option<&Path>) -> Result<VectorIndex> {
    let sqlerr = |source| StoreError::Sql { path: db_path.to_path_buf(), source };
    tracing::info!("rebuilding vector index from {}", db_path.display());
    let tx = conn.unchecked_transaction().map_err(sqlerr)?;
    let (gen, nonce) = gen_id(&tx).map_err(sqlerr)?;
    let mut idx = VectorIndex::new(dim, index_path, gen, &nonce)?;
    let n: i64 = tx.query_row("SELECT count(*) FROM chunks WHERE vector IS NOT NULL", [], |r| r.get(0)).map_err(sqlerr)?;
    idx.reserve_more(n as usize)?;
    let mut stmt = tx.prepare("SELECT id, vector FROM chunks WHERE vector IS NOT NULL").map_err(sqlerr)?;
    let mut rows = stmt.query([]).map_err(sqlerr)?;
    // In slices, so a rebuild of a million vectors never holds them all as f32 at once.
    let mut batch = Vec::with_capacity(16_384);
    while let Some(r) = rows.next().map_err(sqlerr)? {
        let id: i64 = r.get(0).map_err(sqlerr)?;
        let blob = r.get_ref(1).map_err(sqlerr)?.as_blob().map_err(|e| sqlerr(e.into()))?;
        batch.push((id, from_blob(blob)));
        if batch.len() == batch.capacity() {
            idx.add_many(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        idx.add_many(&batch)?;
    }
    // A fresh index differs from the file: save it on the next flush.
    idx.mark_dirty();
    Ok(idx)
}

/// Writes `item` with its chunks and vectors inside `tx`, replacing whatever the same path had
/// before (old chunks, terms and vectors go with it); bumps the generation. Returns the item id.
fn insert_item(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    item: &NewItem,
    chunks: &[Chunk],
    vecs: &[Vec<f32>],
    embedder: &str,
) -> Result<i64> {
    assert_eq!(chunks.len(), vecs.len(), "one vector per chunk");
    let dim = vecs.first().map_or(0, Vec::len);
    let sqlerr = |source| StoreError::Sql { path: path.to_path_buf(), source };
    if dim > 0 {
        let name = meta_get(tx, "embedder").map_err(sqlerr)?;
        let d = meta_get(tx, "dim").map_err(sqlerr)?.and_then(|d| d.parse::<usize>().ok());
        if let Some((name, d)) = name.zip(d) {
            if name != embedder || d != dim {
                return Err(StoreError::EmbedderMismatch { have: format!("{name} ({d}-d)"), got: format!("{embedder} ({dim}-d)") });
            }
        }
    }
    let old_id: Option<i64> =
        tx.query_row("SELECT id FROM items WHERE path = ?1", [&item.path], |r| r.get(0)).optional().map_err(sqlerr)?;
    let mut logged = Vec::new();
    if let Some(id) = old_id {
        logged = delete_chunks(tx, id).map_err(sqlerr)?;
    }
    let meta = item.meta.to_string();
    let now = mnema_core::time::now();
    let id = match old_id {
        Some(id) => {
            tx.execute(
                "UPDATE items SET kind=?2, sha256=?3, size=?4, mtime=?5, indexed_at=?6, meta=?7 WHERE id=?1",
                params![id, item.kind.as_str(), item.sha256, item.size as i64, item.mtime, now, meta],
            )
            .map_err(sqlerr)?;
            id
        }
        None => {
            // Ids are never reused (SQLite would hand a deleted highest id out again): a
            // stale id held by a client or a link never names another file.
            let id = next_item_id(tx).map_err(sqlerr)?;
            tx.execute(
                "INSERT INTO items (id, path, kind, sha256, size, mtime, indexed_at, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![id, item.path, item.kind.as_str(), item.sha256, item.size as i64, item.mtime, now, meta],
            )
            .map_err(sqlerr)?;
            set_meta(tx, "item_id_next", id + 1).map_err(sqlerr)?;
            id
        }
    };
    {
        let mut next = next_chunk_id(tx).map_err(sqlerr)?;
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO chunks (id, item_id, seq, text, start, end, start_ms, end_ms, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(sqlerr)?;
        let mut fts = tx.prepare_cached("INSERT INTO chunks_fts (rowid, terms) VALUES (?1, ?2)").map_err(sqlerr)?;
        for (c, v) in chunks.iter().zip(vecs) {
            let blob = (!v.is_empty()).then(|| to_blob(v));
            ins.execute(params![next, id, c.seq, c.text, c.start, c.end, c.start_ms, c.end_ms, blob]).map_err(sqlerr)?;
            fts.execute(params![next, text::index_terms(&c.text)]).map_err(sqlerr)?;
            if !v.is_empty() {
                logged.push(next);
            }
            next += 1;
        }
        set_next_chunk_id(tx, next).map_err(sqlerr)?;
    }
    // The image's difference hash goes to the band index in the same transaction, so
    // a stored image is always findable as a near-duplicate candidate.
    tx.execute("DELETE FROM image_bands WHERE item_id = ?1", [id]).map_err(sqlerr)?;
    if let Some(h) = image_hash(item) {
        let mut ins = tx.prepare_cached("INSERT INTO image_bands (item_id, band, bits) VALUES (?1, ?2, ?3)").map_err(sqlerr)?;
        for (band, bits) in hash_bands(h).iter().enumerate() {
            ins.execute(params![id, band as i64, bits]).map_err(sqlerr)?;
        }
    }
    if dim > 0 {
        tx.execute("INSERT INTO meta (key, value) VALUES ('embedder', ?1) ON CONFLICT(key) DO NOTHING", [embedder]).map_err(sqlerr)?;
        tx.execute("INSERT INTO meta (key, value) VALUES ('dim', ?1) ON CONFLICT(key) DO NOTHING", [dim.to_string()]).map_err(sqlerr)?;
    }
    log_vectors(tx, &logged).map_err(sqlerr)?;
    Ok(id)
}

/// SQL condition over `items i` for the filters, with its arguments.
fn filter_sql(f: &Filters) -> (String, Vec<Box<dyn ToSql>>) {
    let mut cond = vec!["1".to_string()];
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    if !f.kinds.is_empty() {
        cond.push(format!("i.kind IN ({})", vec!["?"; f.kinds.len()].join(",")));
        args.extend(f.kinds.iter().map(|k| Box::new(k.as_str()) as Box<dyn ToSql>));
    }
    if let Some(p) = &f.path_prefix {
        // substr comparison, not LIKE: paths may hold % and _.
        cond.push("substr(i.path, 1, length(?)) = ?".into());
        args.push(Box::new(p.clone()));
        args.push(Box::new(p.clone()));
    }
    if let Some(t) = f.since {
        cond.push("i.mtime >= ?".into());
        args.push(Box::new(t));
    }
    if let Some(t) = f.until {
        cond.push("i.mtime < ?".into());
        args.push(Box::new(t));
    }
    (cond.join(" AND "), args)
}

/// A difference hash as 8 bands of two lowercase hex digits, first band the high byte (the
/// order of its 16-digit hex form in item metadata).
/// An image item's difference hash (`meta.dhash`, 16 hex digits), if it has one.
fn image_hash(item: &NewItem) -> Option<u64> {
    if item.kind != Kind::Image {
        return None;
    }
    item.meta.get("dhash")?.as_str().filter(|h| h.len() == 16).and_then(|h| u64::from_str_radix(h, 16).ok())
}

fn hash_bands(hash: u64) -> [String; 8] {
    std::array::from_fn(|b| format!("{:02x}", (hash >> (56 - 8 * b)) & 0xff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnema_core::ErrorKind;

    /// A database that cannot grow (SQLite's own "database or disk is full", raised here by
    /// capping its page count) is reported as a full disk, not as an internal failure.
    #[test]
    fn a_full_database_is_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sqlite::open(dir.path()).unwrap();
        let pages: i64 = s.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        s.conn.pragma_update(None, "max_page_count", pages).unwrap();
        let text = "слово ".repeat(20_000);
        let item = NewItem {
            path: "/big.txt".into(),
            kind: Kind::Note,
            sha256: "0".repeat(64),
            size: text.len() as u64,
            mtime: 1,
            meta: serde_json::json!({}),
        };
        let chunk = Chunk { seq: 0, text: text.clone(), start: 0, end: text.len() as u32, start_ms: None, end_ms: None };
        let err = s.put_item(&item, &[chunk], &[vec![0.5; 4]], "test-4").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DiskFull, "{err}");
        // Nothing half-written stays behind once the cap is lifted.
        s.conn.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        assert!(s.item_by_path("/big.txt").unwrap().is_none());
    }

    #[test]
    fn error_kinds_of_the_store() {
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert_eq!(sqlite_kind(&busy), ErrorKind::Busy);
        let not_db = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB), None);
        assert_eq!(sqlite_kind(&not_db), ErrorKind::Input);
        let io = StoreError::Io { what: "cannot write".into(), path: "/x".into(), source: std::io::Error::from_raw_os_error(28) };
        assert_eq!(io.kind(), ErrorKind::DiskFull);
        let denied = StoreError::Io { what: "cannot write".into(), path: "/x".into(), source: std::io::Error::from_raw_os_error(13) };
        assert_eq!(denied.kind(), ErrorKind::Input);
        let broken = StoreError::Io { what: "cannot write".into(), path: "/x".into(), source: std::io::Error::from_raw_os_error(5) };
        assert_eq!(broken.kind(), ErrorKind::Internal);
        assert_eq!(StoreError::EmbedderMismatch { have: "a".into(), got: "b".into() }.kind(), ErrorKind::Input);
    }
}
