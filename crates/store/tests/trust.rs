//! The store never loses vectors: re-ingest (remove + add) in one process, two handles on one
//! directory (the cross-process case), concurrent writers and openers, the index check, and
//! private file modes. Real SQLite files, real usearch index files.

mod common;

use mnema_core::{Chunk, Filters, Kind};
use mnema_store::{CopyMeta, NewItem, SqliteStore, Store};
use std::collections::HashMap;
use std::path::Path;

const DIM: usize = 384;

fn item(path: &str, gen: u64) -> NewItem {
    NewItem { path: path.into(), kind: Kind::Note, sha256: format!("{gen:064}"), size: 10, mtime: gen as i64, meta: serde_json::json!({}) }
}

fn chunk(seq: u32) -> Chunk {
    Chunk { seq, text: format!("chunk {seq}"), start: 0, end: 7, start_ms: None, end_ms: None }
}

fn vector(seed: u64) -> Vec<f32> {
    common::unit_vector(seed, DIM)
}

/// Writes `path` with `n` chunks whose vectors derive from `seed`; returns the vectors.
fn put(s: &SqliteStore, path: &str, seed: u64, n: u32) -> Vec<Vec<f32>> {
    let chunks: Vec<Chunk> = (0..n).map(chunk).collect();
    let vecs: Vec<Vec<f32>> = (0..n as u64).map(|i| vector(seed * 1000 + i)).collect();
    s.put_item(&item(path, seed), &chunks, &vecs, "test").unwrap();
    vecs
}

/// Items whose every stored vector is its own nearest neighbour by the index (self-recall),
/// out of all items: `(found, total, lost paths)`.
fn self_recall(s: &SqliteStore) -> (usize, usize, Vec<String>) {
    let items = s.items(&Filters::default(), 1_000_000, 0).unwrap();
    let mut found = 0;
    let mut lost = Vec::new();
    for it in &items {
        let chunks = s.chunks(it.id).unwrap();
        let ok = chunks.iter().all(|(_, v)| {
            let v = v.as_ref().unwrap();
            let hits = s.vector_candidates(v, &Filters::default(), 5).unwrap();
            let rows = s.chunk_rows(&hits.iter().map(|h| h.0).collect::<Vec<_>>()).unwrap();
            rows.iter().zip(&hits).any(|(r, h)| r.item_id == it.id && h.1 > 0.99)
        });
        if ok {
            found += 1;
        } else {
            lost.push(it.path.clone());
        }
    }
    (found, items.len(), lost)
}

fn assert_all_found(s: &SqliteStore, what: &str) {
    let (found, total, lost) = self_recall(s);
    assert_eq!(found, total, "{what}: self-recall {found}/{total}, lost {:?}", &lost[..lost.len().min(10)]);
}

fn xorshift(x: &mut u64) -> f32 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// A vector shaped like sentence embeddings: a direction every text shares (e5's vectors sit
/// in a narrow cone), a topic, and noise; the geometry where the old index lost vectors.
fn embedding_like(topic: u64, seed: u64, spread: f32) -> Vec<f32> {
    let raw = |s: u64| {
        let mut x = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..DIM).map(|_| xorshift(&mut x)).collect::<Vec<f32>>()
    };
    let (common, centre) = (raw(999_999), raw(topic));
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let v: Vec<f32> = (0..DIM).map(|i| 6.0 * common[i] + centre[i] + spread * xorshift(&mut x)).collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn put_vecs(s: &SqliteStore, path: &str, seed: u64, vecs: Vec<Vec<f32>>) {
    let chunks: Vec<Chunk> = (0..vecs.len() as u32).map(chunk).collect();
    s.put_item(&item(path, seed), &chunks, &vecs, "test").unwrap();
}

/// Exact search (the default at this size) and the HNSW graph (forced): removals must never
/// unlink the graph, which only the graph run can show.
#[test]
fn reingest_keeps_every_other_vector_findable() {
    reingest_keeps_every_other_vector_findable_with(mnema_store::vectors::EXACT_MAX);
    reingest_keeps_every_other_vector_findable_with(0);
}

fn reingest_keeps_every_other_vector_findable_with(exact_max: usize) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    s.set_exact_search_max(exact_max);
    let notes = 400u64;
    for i in 0..notes {
        put_vecs(&s, &format!("/n/{i}.md"), i, vec![embedding_like(i % 20, i, 1.0)]);
    }
    // Recordings: many chunks close to each other.
    for r in 0..10u64 {
        put_vecs(&s, &format!("/r/{r}.m4a"), 5000 + r, (0..20).map(|k| embedding_like(1000 + r, r * 100 + k, 0.3)).collect());
    }
    assert_all_found(&s, "after the first ingest");
    // Re-ingests of changed files in one process: old vectors removed, new ones added.
    for round in 1..=8u64 {
        for i in (0..notes).filter(|i| i % 7 == round % 7) {
            let seed = i + round * 10_000;
            put_vecs(
                &s,
                &format!("/n/{i}.md"),
                seed,
                vec![
                    embedding_like((i + round) % 20, i + round * 10_000, 1.0),
                    embedding_like((i + round + 3) % 20, i + round * 20_000, 1.0),
                ],
            );
        }
        assert_all_found(&s, &format!("after re-ingest {round}"));
    }
    let check = s.check_index().unwrap();
    assert!(check.ok, "{check:?}");
    drop(s);
    let s = SqliteStore::open(dir.path()).unwrap();
    s.set_exact_search_max(exact_max);
    assert_all_found(&s, "after reopening");
}

#[test]
fn another_handles_writes_are_searched_and_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).unwrap();
    for i in 0..40 {
        put(&a, &format!("/a/{i}.md"), i, 2);
    }
    assert_all_found(&a, "A alone");
    let b = SqliteStore::open(dir.path()).unwrap();
    for i in 0..40 {
        put(&b, &format!("/b/{i}.md"), 100 + i, 2);
    }
    // Another process's write reaches A's next search without reopening.
    assert_all_found(&a, "A after B's writes");
    // B replaces some of A's items and deletes others; A sees both.
    for i in 0..10 {
        put(&b, &format!("/a/{i}.md"), 500 + i, 1);
    }
    let gone = b.item_by_path("/a/39.md").unwrap().unwrap();
    let gone_vec = b.chunks(gone.id).unwrap()[0].1.clone().unwrap();
    assert!(b.delete_item(gone.id).unwrap().is_some());
    let hits = a.vector_candidates(&gone_vec, &Filters::default(), 3).unwrap();
    assert!(a.chunk_rows(&hits.iter().map(|h| h.0).collect::<Vec<_>>()).unwrap().iter().all(|r| r.item_id != gone.id));
    assert_all_found(&a, "A after B's replacements and delete");
    b.flush().unwrap();
    drop(b);
    assert_eq!(a.stats().unwrap().items, 79);
    a.flush().unwrap();
    drop(a);
    let c = SqliteStore::open(dir.path()).unwrap();
    assert_all_found(&c, "reopened");
}

#[test]
fn a_stale_handle_never_saves_its_index_as_current() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).unwrap();
    for i in 0..30 {
        put(&a, &format!("/a/{i}.md"), i, 1);
    }
    // B writes and saves a correct index; A, which has not searched since, then deletes one
    // of its own items and saves on drop.
    let b = SqliteStore::open(dir.path()).unwrap();
    for i in 0..30 {
        put(&b, &format!("/b/{i}.md"), 100 + i, 1);
    }
    drop(b);
    let first = a.item_by_path("/a/0.md").unwrap().unwrap();
    assert!(a.delete_item(first.id).unwrap().is_some());
    a.flush().unwrap();
    drop(a);
    let c = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(c.stats().unwrap().items, 59);
    assert_all_found(&c, "reopened after A's delete");
    // A handle that only writes (never searches) and saves last loses nothing either.
    let d = SqliteStore::open(dir.path()).unwrap();
    put(&d, "/d/0.md", 900, 1);
    let e = SqliteStore::open(dir.path()).unwrap();
    put(&e, "/e/0.md", 901, 1);
    drop(e);
    drop(d);
    let f = SqliteStore::open(dir.path()).unwrap();
    assert_all_found(&f, "after two writers saved in turn");
    assert!(f.check_index().unwrap().ok);
}

#[test]
fn concurrent_writers_wait_instead_of_failing() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("новый дом");
        // Round 0: every thread opens the new directory at once (migrations race). Later
        // rounds: the schema exists, the writers only contend for the write lock.
        if round > 0 {
            drop(SqliteStore::open(&home).unwrap());
        }
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let home = home.clone();
                std::thread::spawn(move || {
                    let s = SqliteStore::open(&home).unwrap_or_else(|e| panic!("round {round} thread {t}: open: {e}"));
                    for i in 0..60u64 {
                        let chunks = vec![chunk(0)];
                        let vecs = vec![vector(t * 1000 + i)];
                        // A read before the write in the same store: the old deferred transactions upgraded and failed here.
                        s.item_by_path(&format!("/t{t}/{i}.md")).unwrap();
                        s.put_item(&item(&format!("/t{t}/{i}.md"), t * 1000 + i), &chunks, &vecs, "test")
                            .unwrap_or_else(|e| panic!("round {round} thread {t}: {e}"));
                        if i % 7 == 0 {
                            s.vector_candidates(&vecs[0], &Filters::default(), 3).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = SqliteStore::open(&home).unwrap();
        assert_eq!(s.stats().unwrap().items, 240);
        assert_all_found(&s, "after concurrent writers");
        assert!(s.check_index().unwrap().ok);
    }
}

#[test]
fn index_check_finds_and_repairs_a_damaged_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    for i in 0..50 {
        put(&s, &format!("/n/{i}.md"), i, 1);
    }
    let c = s.check_index().unwrap();
    assert_eq!((c.sqlite_vectors, c.index_vectors, c.missing, c.extra, c.ok), (50, 50, 0, 0, true), "{c:?}");
    drop(s);
    // Vectors written behind the index's back (as by an older mnema that did not log them).
    let conn = rusqlite::Connection::open(dir.path().join("mnema.db")).unwrap();
    conn.execute("DELETE FROM chunks WHERE id IN (SELECT id FROM chunks ORDER BY id LIMIT 3)", []).unwrap();
    drop(conn);
    let s = SqliteStore::open(dir.path()).unwrap();
    let c = s.check_index().unwrap();
    assert_eq!((c.sqlite_vectors, c.index_vectors, c.missing, c.extra, c.ok), (47, 50, 0, 3, false), "{c:?}");
    s.repair_index().unwrap();
    let c = s.check_index().unwrap();
    assert!(c.ok, "{c:?}");
    drop(s);
    let s = SqliteStore::open(dir.path()).unwrap();
    assert!(s.check_index().unwrap().ok);
}

#[test]
fn sql_errors_name_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    put(&s, "/n/ok.md", 1, 1);
    let conn = rusqlite::Connection::open(dir.path().join("mnema.db")).unwrap();
    conn.execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON chunks BEGIN SELECT RAISE(ABORT, 'refused'); END;").unwrap();
    let e = s.put_item(&item("/n/new.md", 2), &[chunk(0)], &[vector(2)], "test").unwrap_err().to_string();
    assert!(e.contains(&dir.path().join("mnema.db").display().to_string()) && e.contains("refused"), "{e}");
    let id = s.item_by_path("/n/ok.md").unwrap().unwrap().id;
    conn.execute_batch("DROP TRIGGER refuse; CREATE TRIGGER refuse BEFORE DELETE ON items BEGIN SELECT RAISE(ABORT, 'refused'); END;")
        .unwrap();
    let e = s.delete_item(id).unwrap_err().to_string();
    assert!(e.contains("mnema.db") && e.contains("refused"), "{e}");
}

#[cfg(unix)]
#[test]
fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("данные");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = SqliteStore::open(&home).unwrap();
    put(&s, "/n/a.md", 1, 1);
    s.flush().unwrap();
    assert_eq!(mode(&home), 0o700, "an existing directory is tightened");
    let mut seen = HashMap::new();
    for e in std::fs::read_dir(&home).unwrap() {
        let p = e.unwrap().path();
        seen.insert(p.file_name().unwrap().to_string_lossy().into_owned(), mode(&p));
    }
    for f in ["mnema.db", "mnema.db-wal", "mnema.db-shm", "vectors.usearch", "vectors.usearch.gen"] {
        assert_eq!(seen.get(f), Some(&0o600), "{f}: {seen:?}");
    }
    assert!(seen.values().all(|m| m & 0o077 == 0), "{seen:?}");
}

#[test]
fn a_database_from_before_the_vector_log_is_upgraded_and_searched() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Schema 1 as the previous release wrote it, with vectors and an old-style marker.
        let conn = rusqlite::Connection::open(dir.path().join("mnema.db")).unwrap();
        conn.execute_batch(mnema_store::schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch("INSERT INTO meta VALUES ('embedder', 'test'), ('dim', '384'), ('vectors_gen', '7');").unwrap();
        for i in 0..30i64 {
            conn.execute(
                "INSERT INTO items (path, kind, sha256, size, mtime, indexed_at) VALUES (?1, 'note', 'x', 1, ?2, ?2)",
                rusqlite::params![format!("/old/{i}.md"), i],
            )
            .unwrap();
            let blob: Vec<u8> = vector(i as u64).iter().flat_map(|x| x.to_le_bytes()).collect();
            conn.execute(
                "INSERT INTO chunks (item_id, seq, text, start, end, vector) VALUES (?1, 0, 'x', 0, 1, ?2)",
                rusqlite::params![conn.last_insert_rowid(), blob],
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("vectors.usearch.gen"), "7").unwrap();
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_all_found(&s, "upgraded");
    // New writes after the upgrade get ids above every old one and are logged.
    let last = s.item_by_path("/old/29.md").unwrap().unwrap();
    assert!(s.delete_item(last.id).unwrap().is_some());
    put(&s, "/new/0.md", 500, 2);
    drop(s);
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(s.stats().unwrap().items, 30);
    assert_all_found(&s, "after writes on the upgraded store");
    assert!(s.check_index().unwrap().ok);
}

/// Writes `path` with `n` chunks whose text names the path and whose vectors derive from `seed`.
fn put_named(s: &SqliteStore, path: &str, seed: u64, n: u32) {
    let chunks: Vec<Chunk> =
        (0..n).map(|i| Chunk { seq: i, text: format!("{path} {i}"), start: 0, end: 1, start_ms: None, end_ms: None }).collect();
    let vecs: Vec<Vec<f32>> = (0..n as u64).map(|i| vector(seed * 1000 + i)).collect();
    s.put_item(&item(path, seed), &chunks, &vecs, "test").unwrap();
}

/// Every stored vector's best hit is itself: the same item and the item's own text.
fn assert_own_hits(s: &SqliteStore, what: &str) {
    let items = s.items(&Filters::default(), 1_000_000, 0).unwrap();
    assert!(!items.is_empty());
    for it in &items {
        for (c, v) in s.chunks(it.id).unwrap() {
            let hits = s.vector_candidates(v.as_ref().unwrap(), &Filters::default(), 1).unwrap();
            let rows = s.chunk_rows(&[hits[0].0]).unwrap();
            assert!(
                rows[0].item_id == it.id && rows[0].chunk.text == c.text && hits[0].1 > 0.99,
                "{what}: {} chunk {:?} found {:?} ({})",
                it.path,
                c.text,
                rows[0].chunk.text,
                hits[0].1
            );
        }
    }
    let check = s.check_index().unwrap();
    assert!(check.ok, "{what}: {check:?}");
}

/// The generation recorded beside the saved index file.
fn saved_gen(home: &Path) -> i64 {
    let side = std::fs::read_to_string(home.join("vectors.usearch.gen")).unwrap();
    side.lines().find_map(|l| l.strip_prefix("gen ")).unwrap().parse().unwrap()
}

/// Copies the database (with its WAL) from `from` to `to`, as a backup or a restore does.
fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["mnema.db", "mnema.db-wal"] {
        let _ = std::fs::remove_file(to.join(f));
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
    let _ = std::fs::remove_file(to.join("mnema.db-shm"));
}

#[test]
fn an_index_from_a_lost_future_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let backup = dir.path().join("backup");
    let elsewhere = dir.path().join("elsewhere");
    let s = SqliteStore::open(&home).unwrap();
    for i in 0..5 {
        put_named(&s, &format!("/old/{i}.txt"), 1 + i, 3);
    }
    s.flush().unwrap();
    drop(s);
    let g1 = saved_gen(&home);
    copy_db(&home, &backup);
    // The future that will be lost: ten more items, saved in the index file.
    let s = SqliteStore::open(&home).unwrap();
    for i in 0..10 {
        put_named(&s, &format!("/lost/{i}.txt"), 100 + i, 3);
    }
    s.flush().unwrap();
    drop(s);
    let g2 = saved_gen(&home);
    assert!(g2 > g1);

    // The backup is restored and written again (here by a process that never loads this
    // index) until it reaches the saved generation with other items under the same chunk ids.
    copy_db(&backup, &elsewhere);
    let s = SqliteStore::open(&elsewhere).unwrap();
    for i in 0..(g2 - g1) as u64 {
        put_named(&s, &format!("/new/{i}.txt"), 500 + i, 3);
    }
    drop(s);
    copy_db(&elsewhere, &home);
    let s = SqliteStore::open(&home).unwrap();
    assert_own_hits(&s, "same generation, other history");
    drop(s);

    // Restored in place: the first process to see the index ahead of the database replaces it.
    copy_db(&backup, &home);
    let s = SqliteStore::open(&home).unwrap();
    put_named(&s, "/again/0.txt", 900, 3);
    s.flush().unwrap();
    drop(s);
    assert_eq!(saved_gen(&home), g1 + 1, "the index file ahead of the database was kept");
    let s = SqliteStore::open(&home).unwrap();
    for i in 1..(g2 - g1) as u64 {
        put_named(&s, &format!("/again/{i}.txt"), 900 + i, 3);
    }
    s.flush().unwrap();
    drop(s);
    let s = SqliteStore::open(&home).unwrap();
    assert_own_hits(&s, "restored in place and written again");
}

#[test]
fn a_copy_is_taken_only_from_the_twin_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    put_named(&s, "/a.txt", 1, 3);
    let a = s.item_by_path("/a.txt").unwrap().unwrap();
    let b = NewItem { path: "/b.txt".into(), ..item("/b.txt", 1) };
    let (b_id, n) = s.put_item_copy(&b, a.id, &a.sha256, CopyMeta::Keys(&[])).unwrap().expect("the twin is there");
    assert_eq!(n, 3);
    assert_eq!(s.chunks(b_id).unwrap(), s.chunks(a.id).unwrap());
    // The copy's vectors are searchable.
    let hits = s.vector_candidates(&vector(1000), &Filters::default(), 2).unwrap();
    let items: Vec<i64> = s.chunk_rows(&hits.iter().map(|h| h.0).collect::<Vec<_>>()).unwrap().iter().map(|r| r.item_id).collect();
    assert!(items.contains(&a.id) && items.contains(&b_id), "{items:?}");
    assert!(s.check_index().unwrap().ok);

    // The twin deleted before the copy: nothing is stored.
    s.delete_item(a.id).unwrap();
    let c = item("/c.txt", 1);
    assert_eq!(s.put_item_copy(&c, a.id, &a.sha256, CopyMeta::Keys(&[])).unwrap(), None);
    assert!(s.item_by_path("/c.txt").unwrap().is_none());

    // The twin re-ingested with other content: its new text is not copied under the old hash.
    put_named(&s, "/a.txt", 2, 2);
    let a2 = s.item_by_path("/a.txt").unwrap().unwrap();
    assert_ne!(a2.sha256, a.sha256);
    assert_eq!(s.put_item_copy(&c, a2.id, &a.sha256, CopyMeta::Keys(&[])).unwrap(), None);
    assert!(s.item_by_path("/c.txt").unwrap().is_none());
    // With its current content it is copied, with the metadata asked for.
    let mut d = item("/d.txt", 2);
    d.meta = serde_json::json!({ "mine": 1 });
    let (d_id, n) = s.put_item_copy(&d, a2.id, &a2.sha256, CopyMeta::Keys(&["absent"])).unwrap().unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.item(d_id).unwrap().unwrap().meta, serde_json::json!({ "mine": 1 }));
}
