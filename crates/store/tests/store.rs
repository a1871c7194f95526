//! Store behaviour on a real SQLite file: replacement is atomic, deletes take everything
//! derived, the vector index survives restarts and is rebuilt when stale.

use mnema_core::{text, Chunk, Filters, Kind};
use mnema_store::{NewItem, SqliteStore, Store, StoreError};

fn item(path: &str, kind: Kind, mtime: i64) -> NewItem {
    NewItem { path: path.into(), kind, sha256: format!("{:064}", mtime), size: 10, mtime, meta: serde_json::json!({}) }
}

fn chunk(seq: u32, text: &str) -> Chunk {
    Chunk { seq, text: text.into(), start: 0, end: text.len() as u32, start_ms: None, end_ms: None }
}

/// A unit vector pointing mostly along axis `i`.
fn unit(i: usize, dim: usize) -> Vec<f32> {
    let mut v = vec![0.01f32; dim];
    v[i] = 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn kw(s: &dyn Store, q: &str) -> Vec<i64> {
    s.keyword_candidates(&text::query_terms(q), &Filters::default(), 10).unwrap().into_iter().map(|x| x.0).collect()
}

#[test]
fn replace_and_delete_leave_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let a = s
        .put_item(
            &item("/n/a.md", Kind::Note, 1),
            &[chunk(0, "Подписка стоит 300 рублей"), chunk(1, "garden water")],
            &[unit(0, 8), unit(1, 8)],
            "m",
        )
        .unwrap();
    assert_eq!(kw(&s, "подписки").len(), 1, "stemmed match");
    // Re-ingest of a changed file: same id, old chunks gone from FTS and vectors.
    let a2 = s.put_item(&item("/n/a.md", Kind::Note, 2), &[chunk(0, "Completely different text")], &[unit(2, 8)], "m").unwrap();
    assert_eq!(a, a2);
    assert!(kw(&s, "подписка").is_empty());
    assert_eq!(s.chunks(a).unwrap().len(), 1);
    let near = s.vector_candidates(&unit(0, 8), &Filters::default(), 10).unwrap();
    assert_eq!(near.len(), 1, "old vectors removed from the index");
    assert_eq!(s.stats().unwrap().chunks, 1);
    assert!(s.delete_item(a).unwrap().is_some());
    assert!(s.delete_item(a).unwrap().is_none());
    assert!(s.item(a).unwrap().is_none());
    assert!(kw(&s, "different").is_empty());
    assert!(s.vector_candidates(&unit(2, 8), &Filters::default(), 10).unwrap().is_empty());
    assert_eq!(s.stats().unwrap().chunks, 0);
}

#[test]
fn filters_restrict_every_mode() {
    let s = SqliteStore::open_in_memory().unwrap();
    s.put_item(&item("/notes/a.md", Kind::Note, 100), &[chunk(0, "борщ рецепт")], &[unit(0, 8)], "m").unwrap();
    s.put_item(&item("/shots/b.png", Kind::Image, 200), &[chunk(0, "борщ на экране")], &[unit(0, 8)], "m").unwrap();
    s.put_item(&item("/notes_old/c.md", Kind::Note, 300), &[chunk(0, "борщ старый")], &[unit(0, 8)], "m").unwrap();
    let t = text::query_terms("борщ");
    let by = |f: Filters| {
        let k = s.keyword_candidates(&t, &f, 10).unwrap().len();
        (k, f)
    };
    assert_eq!(by(Filters::default()).0, 3);
    assert_eq!(by(Filters { kinds: vec![Kind::Image], ..Default::default() }).0, 1);
    assert_eq!(by(Filters { path_prefix: Some("/notes/".into()), ..Default::default() }).0, 1);
    assert_eq!(by(Filters { since: Some(150), until: Some(300), ..Default::default() }).0, 1);
    let f = Filters { kinds: vec![Kind::Note], ..Default::default() };
    let v = s.vector_candidates(&unit(0, 8), &f, 10).unwrap();
    assert_eq!(v.len(), 2);
    let rows = s.chunk_rows(&v.iter().map(|x| x.0).collect::<Vec<_>>()).unwrap();
    assert!(rows.iter().all(|r| r.kind == Kind::Note));
    assert_eq!(s.items(&Filters { path_prefix: Some("/shots".into()), ..Default::default() }, 10, 0).unwrap().len(), 1);
}

#[test]
fn vector_index_persists_and_rebuilds_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        for i in 0..8 {
            s.put_item(&item(&format!("/n/{i}.md"), Kind::Note, i as i64), &[chunk(0, "x")], &[unit(i, 8)], "m").unwrap();
        }
    } // dropped: index saved
    assert!(dir.path().join("vectors.usearch").exists());
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        let best = s.vector_candidates(&unit(5, 8), &Filters::default(), 1).unwrap();
        let row = &s.chunk_rows(&[best[0].0]).unwrap()[0];
        assert_eq!(row.path, "/n/5.md");
        // Simulate a crash: write, then never save the index.
        s.put_item(&item("/n/9.md", Kind::Note, 9), &[chunk(0, "y")], &[unit(7, 8)], "m").unwrap();
        std::mem::forget(s);
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    let hits = s.vector_candidates(&unit(7, 8), &Filters::default(), 2).unwrap();
    let paths: Vec<String> = s.chunk_rows(&hits.iter().map(|h| h.0).collect::<Vec<_>>()).unwrap().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/n/9.md".to_string()), "index rebuilt from the database: {paths:?}");
    assert!(hits[0].1 > 0.99);
}

#[test]
fn refuses_vectors_of_another_model() {
    let s = SqliteStore::open_in_memory().unwrap();
    s.put_item(&item("/a", Kind::Note, 1), &[chunk(0, "a")], &[unit(0, 8)], "e5").unwrap();
    let err = s.put_item(&item("/b", Kind::Note, 1), &[chunk(0, "b")], &[unit(0, 16)], "minilm").unwrap_err();
    assert!(matches!(err, StoreError::EmbedderMismatch { .. }), "{err}");
    assert!(s.item_by_path("/b").unwrap().is_none(), "nothing half-written");
    assert!(s.vector_candidates(&unit(0, 16), &Filters::default(), 3).is_err());
}
