//! Figures for the index's bookkeeping (ignored by default; run with
//! `cargo test --release -p mnema-store --test measure -- --ignored --nocapture`):
//! the per-search catch-up check, a catch-up after another handle's write, a rebuild, and
//! search latency and self-recall with tombstones up to the rebuild threshold.

mod common;

use mnema_core::{Chunk, Filters, Kind};
use mnema_store::{NewItem, SqliteStore, Store};
use std::time::Instant;

const DIM: usize = 384;

fn vector(seed: u64) -> Vec<f32> {
    common::unit_vector(seed, DIM)
}

fn item(i: u64) -> NewItem {
    NewItem {
        path: format!("/n/{i}.md"),
        kind: Kind::Note,
        sha256: format!("{i:064}"),
        size: 1,
        mtime: i as i64,
        meta: serde_json::json!({}),
    }
}

fn chunk() -> Chunk {
    Chunk { seq: 0, text: "x".into(), start: 0, end: 1, start_ms: None, end_ms: None }
}

fn recall_and_latency(s: &SqliteStore, live: &[u64]) -> (f64, f64) {
    let sample: Vec<u64> = live.iter().step_by((live.len() / 1000).max(1)).copied().collect();
    let t = Instant::now();
    let mut found = 0;
    for &i in &sample {
        let hits = s.vector_candidates(&vector(i), &Filters::default(), 10).unwrap();
        found += (hits.first().is_some_and(|h| h.1 > 0.99)) as usize;
    }
    (found as f64 / sample.len() as f64, t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64)
}

#[test]
#[ignore]
fn index_bookkeeping_costs() {
    let n: u64 = std::env::var("MEASURE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    let rows: Vec<_> = (0..n).map(|i| (item(i), vec![(chunk(), vector(i))])).collect();
    s.bulk_insert(&rows, "m").unwrap();
    let t = Instant::now();
    s.warm().unwrap();
    eprintln!("rebuild of {n} vectors ({DIM}-d): {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    s.flush().unwrap();
    eprintln!("save: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(s);
    let t = Instant::now();
    let s = SqliteStore::open(dir.path()).unwrap();
    s.warm().unwrap();
    eprintln!("open + load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let reps = 20_000;
    let t = Instant::now();
    for _ in 0..reps {
        s.warm().unwrap();
    }
    eprintln!("catch-up check, nothing moved: {:.2} µs", t.elapsed().as_secs_f64() * 1e6 / reps as f64);
    let live: Vec<u64> = (0..n).collect();
    let (r, us) = recall_and_latency(&s, &live);
    eprintln!("search: {us:.0} µs, self-recall {:.2}%", r * 100.0);
    // Another handle writes one item; this handle's next search replays it.
    let b = SqliteStore::open(dir.path()).unwrap();
    b.put_item(&item(n), &[chunk()], &[vector(n)], "m").unwrap();
    let t = Instant::now();
    s.warm().unwrap();
    eprintln!("catch-up of one item written by another handle: {:.0} µs", t.elapsed().as_secs_f64() * 1e6);
    drop(b);
    // Tombstones up to the rebuild threshold (a quarter of the live vectors).
    let mut live: Vec<u64> = (0..=n).collect();
    let ids: Vec<i64> = s.items(&Filters::default(), 1_000_000, 0).unwrap().iter().map(|i| i.id).collect();
    let del = (ids.len() / 5) as u64;
    let t = Instant::now();
    for (k, id) in ids.iter().take(del as usize).enumerate() {
        s.delete_item(*id).unwrap();
        let _ = k;
    }
    eprintln!("{del} deletes with the index loaded: {:.0} µs each", t.elapsed().as_secs_f64() * 1e6 / del as f64);
    // items() is newest first: the deleted ones are the highest seeds.
    live.truncate(live.len() - del as usize);
    let (r, us) = recall_and_latency(&s, &live);
    eprintln!("with {del} tombstones: search {us:.0} µs, self-recall {:.2}%", r * 100.0);
    s.repair_index().unwrap();
    let (r, us) = recall_and_latency(&s, &live);
    eprintln!("after a rebuild: search {us:.0} µs, self-recall {:.2}%", r * 100.0);
}
