//! The `Store` contract, checked against every backend: the SQLite store (on a real file) and
//! the in-memory twin. A new backend (PostgreSQL) adds one line to `backends!` and must pass
//! all of it.

mod common;

use common::unit_vector as vector;
use mnema_core::{text, Chunk, Filters, Kind};
use mnema_store::{CopyMeta, MemoryStore, NewItem, SqliteStore, Store, StoreError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn item(path: &str, kind: Kind, mtime: i64, sha: &str) -> NewItem {
    NewItem { path: path.into(), kind, sha256: sha.into(), size: 10, mtime, meta: serde_json::json!({}) }
}

fn chunk(seq: u32, text: &str) -> Chunk {
    Chunk { seq, text: text.into(), start: 0, end: text.len() as u32, start_ms: None, end_ms: None }
}

fn chunk_ids(s: &dyn Store, item: i64) -> Vec<i64> {
    // Chunk ids are only visible through search results and rows; find them by the item's text.
    let texts: Vec<String> = s.chunks(item).unwrap().into_iter().map(|c| c.0.text).collect();
    let mut ids = Vec::new();
    for t in texts {
        let terms = text::query_terms(&t);
        for (id, _) in s.keyword_candidates(&terms, &Filters::default(), 1000).unwrap() {
            if s.chunk_rows(&[id]).unwrap().first().is_some_and(|r| r.item_id == item) && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

fn keyword(s: &dyn Store, q: &str, f: &Filters) -> Vec<i64> {
    s.keyword_candidates(&text::query_terms(q), f, 100).unwrap().into_iter().map(|x| x.0).collect()
}

fn items_of(s: &dyn Store, rows: &[i64]) -> Vec<i64> {
    s.chunk_rows(rows).unwrap().into_iter().map(|r| r.item_id).collect()
}

fn a_path_holds_one_item_and_a_rewrite_keeps_its_id(s: &dyn Store) {
    let a = s
        .put_item(
            &item("/n/a.md", Kind::Note, 1, "a1"),
            &[chunk(0, "первый кусок"), chunk(1, "second piece")],
            &[vector(1, 8), vector(2, 8)],
            "m",
        )
        .unwrap();
    let old = chunk_ids(s, a);
    assert_eq!(old.len(), 2);
    let again = s.put_item(&item("/n/a.md", Kind::Note, 2, "a2"), &[chunk(0, "replacement text")], &[vector(3, 8)], "m").unwrap();
    assert_eq!(a, again, "a rewrite keeps the id");
    assert_eq!(s.items(&Filters::default(), 10, 0).unwrap().len(), 1);
    let it = s.item_by_path("/n/a.md").unwrap().unwrap();
    assert_eq!((it.id, it.sha256.as_str(), it.mtime), (a, "a2", 2));
    let chunks = s.chunks(a).unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].0.text, "replacement text");
    assert_eq!(chunks[0].1.as_deref(), Some(vector(3, 8).as_slice()));
    // The old chunks are gone from every index, and their ids are not handed out again.
    assert!(s.chunk_rows(&old).unwrap().is_empty());
    assert!(keyword(s, "первый", &Filters::default()).is_empty());
    let near = s.vector_candidates(&vector(1, 8), &Filters::default(), 10).unwrap();
    assert_eq!(near.len(), 1);
    assert!(!old.contains(&near[0].0), "chunk id reused");
    let st = s.stats().unwrap();
    assert_eq!((st.items, st.chunks), (1, 1));
}

fn a_delete_leaves_nothing_behind(s: &dyn Store) {
    let a = s.put_item(&item("/n/a.md", Kind::Note, 1, "a"), &[chunk(0, "борщ со сметаной")], &[vector(1, 8)], "m").unwrap();
    let b = s.put_item(&item("/n/b.md", Kind::Note, 2, "b"), &[chunk(0, "борщ без мяса")], &[vector(2, 8)], "m").unwrap();
    assert!(s.delete_item(a).unwrap().is_some());
    assert!(s.delete_item(a).unwrap().is_none(), "a second delete finds nothing");
    assert!(s.item(a).unwrap().is_none() && s.item_by_path("/n/a.md").unwrap().is_none());
    assert!(s.chunks(a).unwrap().is_empty());
    assert_eq!(items_of(s, &keyword(s, "борщ", &Filters::default())), [b]);
    let near = s.vector_candidates(&vector(1, 8), &Filters::default(), 10).unwrap();
    assert_eq!(items_of(s, &near.iter().map(|x| x.0).collect::<Vec<_>>()), [b]);
    assert!(s.check_index().unwrap().ok);
    // The path can be written again, as a new item; no id is handed out twice, not even the
    // highest one after its delete (a stale id must never name another file).
    let a2 = s.put_item(&item("/n/a.md", Kind::Note, 3, "a"), &[chunk(0, "снова")], &[vector(4, 8)], "m").unwrap();
    assert!(s.delete_item(a2).unwrap().is_some());
    let a3 = s.put_item(&item("/n/c.md", Kind::Note, 4, "c"), &[chunk(0, "третий")], &[vector(5, 8)], "m").unwrap();
    assert!(![a, b, a2].contains(&a3), "id {a3} reused");
}

fn every_vector_is_found_first_by_itself(s: &dyn Store) {
    let n = 120u64;
    for i in 0..n {
        s.put_item(
            &item(&format!("/v/{i}.md"), Kind::Note, i as i64, &format!("{i}")),
            &[chunk(0, &format!("note {i}"))],
            &[vector(i, 16)],
            "m",
        )
        .unwrap();
    }
    for i in 0..n {
        let got = s.vector_candidates(&vector(i, 16), &Filters::default(), 3).unwrap();
        let top = s.chunk_rows(&[got[0].0]).unwrap();
        assert_eq!(top[0].path, format!("/v/{i}.md"), "vector {i}");
        assert!((got[0].1 - 1.0).abs() < 1e-3, "cosine with itself {}", got[0].1);
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
    }
    let check = s.check_index().unwrap();
    assert!(check.ok && check.index_vectors == n && check.sqlite_vectors == n, "{check:?}");
    s.flush().unwrap();
    s.repair_index().unwrap();
    assert!(s.check_index().unwrap().ok);
}

fn one_embedder_per_store_refused_before_anything_is_written(s: &dyn Store) {
    // Items without vectors come before any embedder and fix none.
    s.put_item(&item("/x/plain.md", Kind::Note, 1, "p"), &[chunk(0, "no vector")], &[vec![]], "").unwrap();
    assert_eq!(s.embedder().unwrap(), None);
    s.put_item(&item("/x/a.md", Kind::Note, 1, "a"), &[chunk(0, "first")], &[vector(1, 4)], "m").unwrap();
    assert_eq!(s.embedder().unwrap(), Some(("m".to_string(), 4)));
    for (name, dim) in [("other", 4), ("m", 3)] {
        let e = s.put_item(&item("/x/b.md", Kind::Note, 2, "b"), &[chunk(0, "second")], &[vector(2, dim)], name).unwrap_err();
        assert!(matches!(e, StoreError::EmbedderMismatch { .. }), "{e}");
        assert_eq!(e.kind(), mnema_core::ErrorKind::Input);
        assert!(s.item_by_path("/x/b.md").unwrap().is_none(), "nothing written");
    }
    // A refused rewrite of a stored path leaves what it held.
    let e = s.put_item(&item("/x/a.md", Kind::Note, 3, "a2"), &[chunk(0, "rewritten")], &[vector(3, 5)], "m").unwrap_err();
    assert!(matches!(e, StoreError::EmbedderMismatch { .. }), "{e}");
    let kept = s.item_by_path("/x/a.md").unwrap().unwrap();
    assert_eq!(kept.sha256, "a");
    assert_eq!(s.chunks(kept.id).unwrap().iter().map(|c| c.0.text.as_str()).collect::<Vec<_>>(), ["first"]);
    let e = s.vector_candidates(&vector(1, 3), &Filters::default(), 5).unwrap_err();
    assert!(matches!(e, StoreError::EmbedderMismatch { .. }), "{e}");
    assert_eq!(s.embedder().unwrap(), Some(("m".to_string(), 4)));
}

fn keyword_search_ranks_stems_and_filters(s: &dyn Store) {
    let a = s.put_item(&item("/k/a.md", Kind::Note, 10, "a"), &[chunk(0, "Идеи по векторизации заметок")], &[vector(1, 8)], "m").unwrap();
    let b = s
        .put_item(
            &item("/k/b.png", Kind::Image, 20, "b"),
            &[chunk(0, "векторизация, векторизация и ещё раз векторизация индекса")],
            &[vector(2, 8)],
            "m",
        )
        .unwrap();
    s.put_item(&item("/k/c.md", Kind::Note, 30, "c"), &[chunk(0, "рецепт борща")], &[vector(3, 8)], "m").unwrap();
    let hits = keyword(s, "векторизация", &Filters::default());
    assert_eq!(items_of(s, &hits), [b, a], "more occurrences in a short chunk rank first");
    let scores = s.keyword_candidates(&text::query_terms("векторизация"), &Filters::default(), 10).unwrap();
    assert!(scores.iter().all(|x| x.1 > 0.0), "higher is better: {scores:?}");
    assert_eq!(items_of(s, &keyword(s, "vectorization векторизации", &Filters { kinds: vec![Kind::Note], ..Default::default() })), [a]);
    assert!(keyword(s, "огород", &Filters::default()).is_empty());
    assert!(s.keyword_candidates(&[], &Filters::default(), 10).unwrap().is_empty());
    assert_eq!(keyword(s, "векторизация", &Filters::default()).len(), 2);
    assert_eq!(s.keyword_candidates(&text::query_terms("векторизация"), &Filters::default(), 1).unwrap().len(), 1, "limit");
}

fn filters_restrict_items_keywords_and_vectors(s: &dyn Store) {
    let rows = [
        ("/f/100%_a.md", Kind::Note, 100),
        ("/f/100xxa.md", Kind::Note, 200),
        ("/g/c.png", Kind::Image, 300),
        ("/g/d.m4a", Kind::Audio, 400),
    ];
    let mut ids = Vec::new();
    for (i, (p, k, t)) in rows.iter().enumerate() {
        ids.push(s.put_item(&item(p, *k, *t, p), &[chunk(0, "общий текст")], &[vector(i as u64, 8)], "m").unwrap());
    }
    let check = |f: Filters, want: &[i64]| {
        let mut listed: Vec<i64> = s.items(&f, 100, 0).unwrap().into_iter().map(|i| i.id).collect();
        let mut by_kw = items_of(s, &keyword(s, "текст", &f));
        let v: Vec<i64> = s.vector_candidates(&vector(0, 8), &f, 100).unwrap().into_iter().map(|x| x.0).collect();
        let mut by_vec = items_of(s, &v);
        for l in [&mut listed, &mut by_kw, &mut by_vec] {
            l.sort();
        }
        let mut want = want.to_vec();
        want.sort();
        assert_eq!((&listed, &by_kw, &by_vec), (&want, &want, &want), "{f:?}");
    };
    check(Filters::default(), &ids);
    check(Filters { kinds: vec![Kind::Image, Kind::Audio], ..Default::default() }, &ids[2..]);
    // A prefix is a prefix, not a pattern: % and _ are plain characters.
    check(Filters { path_prefix: Some("/f/100%_".into()), ..Default::default() }, &ids[..1]);
    check(Filters { path_prefix: Some("/g/".into()), ..Default::default() }, &ids[2..]);
    // `since` includes its second, `until` excludes its own.
    check(Filters { since: Some(200), until: Some(400), ..Default::default() }, &ids[1..3]);
    // Listing: newest first, then pages.
    let all: Vec<i64> = s.items(&Filters::default(), 100, 0).unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
    let page: Vec<i64> = s.items(&Filters::default(), 2, 1).unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(page, [ids[2], ids[1]]);
}

fn content_twins_are_found_by_kind(s: &dyn Store) {
    let png = s.put_item(&item("/t/a.png", Kind::Image, 1, "same"), &[chunk(0, "x")], &[vector(1, 8)], "m").unwrap();
    s.put_item(&item("/t/a.m4a", Kind::Audio, 1, "same"), &[chunk(0, "y")], &[vector(2, 8)], "m").unwrap();
    assert_eq!(s.item_by_content("same", Kind::Image, "/t/b.png").unwrap().map(|i| i.id), Some(png));
    assert!(s.item_by_content("same", Kind::Image, "/t/a.png").unwrap().is_none(), "not itself");
    assert!(s.item_by_content("same", Kind::Note, "/t/b.md").unwrap().is_none(), "not another kind");
    assert!(s.item_by_content("other", Kind::Image, "/t/b.png").unwrap().is_none());
}

fn a_copy_is_taken_only_from_the_source_as_it_is(s: &dyn Store) {
    let mut src = item("/c/src.png", Kind::Image, 1, "s1");
    src.meta = serde_json::json!({ "lines": [1, 2], "engine": "tesseract" });
    let from = s.put_item(&src, &[chunk(0, "текст с экрана"), chunk(1, "ещё")], &[vector(1, 8), vector(2, 8)], "m").unwrap();
    let mut twin = item("/c/twin.png", Kind::Image, 5, "s1");
    twin.meta = serde_json::json!({ "own": true });
    let (id, n) = s.put_item_copy(&twin, from, "s1", CopyMeta::Keys(&["lines", "missing"])).unwrap().unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.chunks(id).unwrap(), s.chunks(from).unwrap(), "same chunks and vectors");
    let meta = s.item(id).unwrap().unwrap().meta;
    assert_eq!(meta, serde_json::json!({ "own": true, "lines": [1, 2] }));
    let (all, _) = s.put_item_copy(&item("/c/all.png", Kind::Image, 5, "s1"), from, "s1", CopyMeta::All).unwrap().unwrap();
    assert_eq!(s.item(all).unwrap().unwrap().meta, src.meta);
    // Another content now, gone, or a chunk without a vector: no copy.
    assert!(s.put_item_copy(&item("/c/n1.png", Kind::Image, 5, "s0"), from, "s0", CopyMeta::All).unwrap().is_none());
    let bare = s.put_item(&item("/c/bare.png", Kind::Image, 1, "s2"), &[chunk(0, "без вектора")], &[vec![]], "m").unwrap();
    assert!(s.put_item_copy(&item("/c/n2.png", Kind::Image, 5, "s2"), bare, "s2", CopyMeta::All).unwrap().is_none());
    s.delete_item(from).unwrap();
    assert!(s.put_item_copy(&item("/c/n3.png", Kind::Image, 5, "s1"), from, "s1", CopyMeta::All).unwrap().is_none());
    for p in ["/c/n1.png", "/c/n2.png", "/c/n3.png"] {
        assert!(s.item_by_path(p).unwrap().is_none(), "{p} written");
    }
}

fn image_candidates_are_near_hashes_nearest_first(s: &dyn Store) {
    let base: u64 = 0xf0f0_a5a5_3c3c_9696;
    let put = |path: &str, kind: Kind, hash: u64| {
        let mut it = item(path, kind, 1, path);
        it.meta = serde_json::json!({ "dhash": format!("{hash:016x}") });
        s.put_item(&it, &[chunk(0, "экран")], &[vector(hash, 8)], "m").unwrap()
    };
    let same = put("/i/same.png", Kind::Image, base);
    let three = put("/i/three.png", Kind::Image, base ^ 0b1011);
    let _far = put("/i/far.png", Kind::Image, base ^ 0x1ff);
    let _note = put("/i/note.md", Kind::Note, base);
    let got: Vec<(i64, u64)> = s.image_candidates(base, 7, "/i/new.png").unwrap().into_iter().map(|c| (c.0, c.3)).collect();
    assert_eq!(got, [(same, base), (three, base ^ 0b1011)]);
    let got: Vec<i64> = s.image_candidates(base, 2, "/i/same.png").unwrap().into_iter().map(|c| c.0).collect();
    assert!(got.is_empty(), "not itself, and three bits are more than two: {got:?}");
    let c = &s.image_candidates(base, 0, "/i/x.png").unwrap()[0];
    assert_eq!((c.1.as_str(), c.2.as_str()), ("/i/same.png", "/i/same.png"));
}

fn roots_nest(s: &dyn Store) {
    s.add_root(Path::new("/home/u/notes/work")).unwrap();
    s.add_root(Path::new("/home/u/shots")).unwrap();
    s.add_root(Path::new("/home/u/notes")).unwrap();
    s.add_root(Path::new("/home/u/notes/private")).unwrap();
    let roots: HashSet<PathBuf> = s.roots().unwrap().into_iter().collect();
    assert_eq!(roots, HashSet::from([PathBuf::from("/home/u/notes"), PathBuf::from("/home/u/shots")]));
}

fn chunk_rows_follow_the_ids(s: &dyn Store) {
    let a = s
        .put_item(&item("/r/a.md", Kind::Note, 7, "a"), &[chunk(0, "альфа"), chunk(1, "бета")], &[vector(1, 8), vector(2, 8)], "m")
        .unwrap();
    let ids = chunk_ids(s, a);
    let rows = s.chunk_rows(&[ids[1], 999_999, ids[0]]).unwrap();
    assert_eq!(rows.iter().map(|r| r.chunk_id).collect::<Vec<_>>(), [ids[1], ids[0]], "order kept, unknown skipped");
    assert!(rows.iter().all(|r| r.item_id == a && r.path == "/r/a.md" && r.kind == Kind::Note && r.mtime == 7));
    assert_eq!(rows[1].chunk.text, "альфа");
}

fn threads_share_one_handle(s: &dyn Store) {
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            scope.spawn(move || {
                for i in 0..15u64 {
                    let k = t * 100 + i;
                    s.put_item(
                        &item(&format!("/t{t}/{i}.md"), Kind::Note, k as i64, &k.to_string()),
                        &[chunk(0, &format!("заметка {k}"))],
                        &[vector(k, 16)],
                        "m",
                    )
                    .unwrap();
                    let got = s.vector_candidates(&vector(k, 16), &Filters::default(), 1).unwrap();
                    assert_eq!(s.chunk_rows(&[got[0].0]).unwrap()[0].path, format!("/t{t}/{i}.md"));
                }
            });
        }
    });
    assert_eq!(s.stats().unwrap().items, 60);
    assert!(s.check_index().unwrap().ok);
}

/// Each check, once per backend.
macro_rules! backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $check() {
                let dir = tempfile::tempdir().unwrap();
                let s = super::SqliteStore::open(dir.path()).unwrap();
                super::$check(&s);
            })*
        }
        mod memory {
            $(#[test] fn $check() { super::$check(&super::MemoryStore::new()); })*
        }
    };
}

backends!(
    a_path_holds_one_item_and_a_rewrite_keeps_its_id,
    a_delete_leaves_nothing_behind,
    every_vector_is_found_first_by_itself,
    one_embedder_per_store_refused_before_anything_is_written,
    keyword_search_ranks_stems_and_filters,
    filters_restrict_items_keywords_and_vectors,
    content_twins_are_found_by_kind,
    a_copy_is_taken_only_from_the_source_as_it_is,
    image_candidates_are_near_hashes_nearest_first,
    roots_nest,
    chunk_rows_follow_the_ids,
    threads_share_one_handle,
);

/// Both are `Send + Sync` trait objects (what the server and ingest workers need).
#[test]
fn backends_are_shareable() {
    fn shareable<T: Send + Sync + ?Sized>() {}
    shareable::<dyn Store>();
    let stores: Vec<Box<dyn Store>> = vec![Box::new(MemoryStore::new()), Box::new(SqliteStore::open_in_memory().unwrap())];
    assert_eq!(stores.len(), 2);
}
