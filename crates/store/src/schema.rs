//! Schema migrations, applied in order inside one immediate transaction; `PRAGMA user_version`
//! records how many have run. Never edit a released migration: append a new one.

use rusqlite::{Connection, TransactionBehavior};

/// Migration scripts; index + 1 is the schema version each one produces.
pub const MIGRATIONS: &[&str] = &[
    // 1: items, chunks with vectors, stemmed full-text index, key/value metadata.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE items (
        id          INTEGER PRIMARY KEY,
        path        TEXT NOT NULL UNIQUE,
        kind        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mtime       INTEGER NOT NULL,
        indexed_at  INTEGER NOT NULL,
        meta        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX items_sha256 ON items(sha256);
    CREATE INDEX items_mtime ON items(mtime);
    CREATE TABLE chunks (
        id        INTEGER PRIMARY KEY,
        item_id   INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        seq       INTEGER NOT NULL,
        text      TEXT NOT NULL,
        start     INTEGER NOT NULL,
        end       INTEGER NOT NULL,
        start_ms  INTEGER,
        end_ms    INTEGER,
        vector    BLOB
    );
    CREATE INDEX chunks_item ON chunks(item_id, seq);
    -- Stemmed terms (mnema_core::text), one row per chunk, rowid = chunks.id. Diacritics are
    -- kept: folding would merge "й" into "и".
    CREATE VIRTUAL TABLE chunks_fts USING fts5(terms, tokenize = 'unicode61 remove_diacritics 0');
    "#,
    // 2: the vector change log. Each write transaction that adds or removes chunk vectors
    // records the chunk ids with the generation it produces (`meta.vectors_gen`), so an HNSW
    // index at an older generation catches up by replaying the ids instead of being rebuilt.
    // `meta.log_floor`: every generation above it is fully in the log. `meta.chunk_id_next`:
    // chunk ids are never reused (an index holding an id can trust its vector). `meta.store_id`
    // tells an index file which database it mirrors.
    r#"
    CREATE TABLE vector_log (
        id        INTEGER PRIMARY KEY,
        gen       INTEGER NOT NULL,
        chunk_id  INTEGER NOT NULL
    );
    CREATE INDEX vector_log_gen ON vector_log(gen);
    INSERT INTO meta (key, value) VALUES ('log_floor', COALESCE((SELECT value FROM meta WHERE key = 'vectors_gen'), '0'));
    INSERT INTO meta (key, value) VALUES ('chunk_id_next', (SELECT COALESCE(max(id), 0) + 1 FROM chunks));
    INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
    "#,
    // 3: image fingerprints. Each image's 64-bit difference hash cut into 8 bands of 8 bits
    // (two hex digits each): hashes within 4 bits share at least 4 bands, so the candidates
    // for a near-duplicate are found through the index instead of by reading every image.
    r#"
    CREATE TABLE image_bands (
        item_id  INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        band     INTEGER NOT NULL,
        bits     TEXT NOT NULL,
        PRIMARY KEY (item_id, band)
    ) WITHOUT ROWID;
    CREATE INDEX image_bands_bits ON image_bands(band, bits);
    INSERT INTO image_bands (item_id, band, bits)
        SELECT i.id, b.n, lower(substr(json_extract(i.meta, '$.dhash'), 2 * b.n + 1, 2))
        FROM items i,
             (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3
              UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7) b
        WHERE i.kind = 'image' AND length(json_extract(i.meta, '$.dhash')) = 16;
    "#,
    // 4: generation nonces. Each write transaction names the generation it produces with a
    // random nonce, so a generation number reached twice (the database restored from a backup
    // and written again) is two different generations to the vector index. Kept from
    // `meta.log_floor` up, like the log.
    r#"
    CREATE TABLE vector_gens (gen INTEGER PRIMARY KEY, nonce TEXT NOT NULL);
    INSERT INTO vector_gens (gen, nonce)
        VALUES (COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'vectors_gen'), 0), lower(hex(randomblob(16))));
    "#,
];

/// The schema version this build writes.
pub const VERSION: usize = MIGRATIONS.len();

fn version(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).map(|v| v as usize)
}

/// Brings the database up to [`VERSION`]. Refuses a database from a newer mnema.
///
/// Safe when several processes open one new database at once: the migrations run in one
/// `BEGIN IMMEDIATE` transaction (writers queue on the busy handler) and the version is read
/// again inside it, so a process that waited finds the work done.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let newer = |v: usize| MigrateError::Newer(format!("database schema version {v} is newer than this mnema ({VERSION}): upgrade mnema"));
    let current = version(conn)?;
    if current > VERSION {
        return Err(newer(current));
    }
    if current == VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = version(&tx)?;
    if current > VERSION {
        return Err(newer(current));
    }
    for sql in MIGRATIONS.iter().skip(current) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", VERSION as i64)?;
    tx.commit()?;
    Ok(())
}

/// Why [`migrate`] failed: SQLite's error (with its kind: busy, full disk…) or a database
/// from a newer mnema.
#[derive(Debug)]
pub enum MigrateError {
    /// SQLite failed.
    Sql(rusqlite::Error),
    /// The database's schema is newer than this build's.
    Newer(String),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}
