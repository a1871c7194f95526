//! Foundation benchmark: embedding throughput and search latency, side by side with
//! sentence-transformers (PyTorch, same all-MiniLM-L6-v2 weights) and numpy brute force,
//! measured in one run on this machine.
//!
//!   cargo bench -p mnema-bench --bench foundation
//!   MNEMA_BENCH_SIZES=10000,100000,1000000 cargo bench -p mnema-bench --bench foundation
//!
//! Peers need bench/setup-peers.sh (a Python venv); without it their columns say so.
#![allow(clippy::print_stdout)]

use mnema_bench::*;
use mnema_core::{Chunk, Filters, Kind, SearchMode};
use mnema_extract::{load_embedder, Embedder, Role};
use mnema_search::{search_with_vector, SearchQuery};
use mnema_store::{NewItem, SqliteStore, Store};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // cargo bench --no-run / test harness probes
    }
    // As the model manager sets it after every load: buffers up to 32 MiB come from the heap
    // and are reused instead of being mapped and faulted in on every batch.
    mnema_models::set_mmap_threshold(32 << 20);
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "mnema foundation benchmark — {} cores, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::consts::ARCH
    );
    if std::env::var("MNEMA_BENCH_SKIP_EMBED").is_err() {
        embeddings(tmp.path());
    }
    search_latency(tmp.path());
}

fn short_sentences(n: usize) -> Vec<String> {
    let mut rng = Rng::new(7);
    (0..n).map(|_| sentence(&mut rng, 12)).collect()
}

/// Texts cut to at most `tokens` tokens of `e`'s tokenizer, so both sides embed the same
/// 256-token inputs and the peer's own truncation never kicks in.
fn long_texts(e: &dyn Embedder, n: usize, tokens: usize) -> Vec<String> {
    let mut rng = Rng::new(11);
    (0..n)
        .map(|_| {
            let t: String = (0..40).map(|_| sentence(&mut rng, 12) + " ").collect();
            let offsets = e.tokens().token_offsets(t.as_str()).unwrap();
            let end = offsets[..tokens.min(offsets.len())].last().map_or(0, |o| o.1);
            t[..end].to_string()
        })
        .collect()
}

fn rate(e: &dyn Embedder, texts: &[String], reps: usize) -> (f64, Vec<Vec<f32>>) {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let warm = e.embed(&refs[..refs.len().min(32)], Role::Passage).unwrap();
    drop(warm);
    let t = Instant::now();
    let mut out = Vec::new();
    for _ in 0..reps {
        out = e.embed(&refs, Role::Passage).unwrap();
    }
    ((texts.len() * reps) as f64 / t.elapsed().as_secs_f64(), out)
}

/// The engines as the binary would run them: `MNEMA_DENSE=f32` measures the f32 path.
fn runtime() -> mnema_extract::Runtime {
    let c = mnema_core::Config::resolve(None, Some(models())).expect("a valid configuration");
    mnema_extract::Runtime::from_config(&c)
}

fn embeddings(tmp: &Path) {
    println!("\n== embeddings (batch 32, CPU) ==");
    let short = short_sentences(512);
    let minilm = load_embedder(&runtime(), "all-minilm-l6-v2").unwrap();
    let long = long_texts(minilm.as_ref(), 96, 254);
    let (m_short, m_vecs) = rate(minilm.as_ref(), &short, 2);
    let (m_long, m_long_vecs) = rate(minilm.as_ref(), &long, 1);
    let (peak_minilm, _) = rss();
    drop(minilm);
    let e5 = load_embedder(&runtime(), "multilingual-e5-small").unwrap();
    let long_e5 = long_texts(e5.as_ref(), 96, 254);
    let (e_short, _) = rate(e5.as_ref(), &short, 2);
    let (e_long, _) = rate(e5.as_ref(), &long_e5, 1);
    let queries = ["рецепт борща", "how to cancel a subscription", "идеи по векторизации заметок", "memory limits on laptops"];
    let q_ms = time_ms(100, |i| {
        e5.embed(&[queries[i % queries.len()]], Role::Query).unwrap();
    });
    drop(e5);

    // Peer: same sentences, same weights.
    let sfile = tmp.join("short.txt");
    let lfile = tmp.join("long.txt");
    let vfile = tmp.join("st_vectors.f32");
    std::fs::write(&sfile, short.join("\n")).unwrap();
    std::fs::write(&lfile, long.join("\n")).unwrap();
    let peer = run_peer("st_embed.py", &[&models().join("all-minilm-l6-v2"), &sfile, &lfile, &vfile]);
    let (p_short, p_long, p_rss, cos) = match &peer {
        Ok(v) => {
            let raw = std::fs::read(&vfile).unwrap_or_default();
            let pv: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let ours = m_vecs.iter().chain(&m_long_vecs);
            let coss: Vec<f32> = ours.zip(pv.chunks_exact(384)).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect();
            let min = coss.iter().copied().fold(f32::INFINITY, f32::min);
            (
                format!("{:.1}", v["short_per_s"].as_f64().unwrap_or(0.0)),
                format!("{:.1}", v["long_per_s"].as_f64().unwrap_or(0.0)),
                format!("{:.0} MB", v["peak_rss_mb"].as_f64().unwrap_or(0.0)),
                format!("{min:.5} (n={})", coss.len()),
            )
        }
        Err(e) => (format!("n/a: {e}"), "n/a".into(), "n/a".into(), "n/a".into()),
    };
    println!("{:<44} {:>18} {:>24}", "", "mnema", "sentence-transformers");
    println!("{:<44} {:>18.1} {:>24}", "all-MiniLM-L6-v2, short sentences/s", m_short, p_short);
    println!("{:<44} {:>18.1} {:>24}", "all-MiniLM-L6-v2, 256-token texts/s", m_long, p_long);
    println!("{:<44} {:>18} {:>24}", "peak RSS (process, after MiniLM)", format!("{:.0} MB", peak_minilm as f64 / 1e6), p_rss);
    println!("{:<44} {:>18} {:>24}", "min cosine to the peer's vectors (short+long)", cos, "");
    println!("{:<44} {:>18.1} {:>24}", "multilingual-e5-small q4, short sentences/s", e_short, "—");
    println!("{:<44} {:>18.1} {:>24}", "multilingual-e5-small q4, 256-token texts/s", e_long, "—");
    println!(
        "{:<44} {:>18} {:>24}",
        "multilingual-e5-small, one query p50/p99 ms",
        format!("{:.1}/{:.1}", percentile(&q_ms, 50.0), percentile(&q_ms, 99.0)),
        "—"
    );
    std::io::stdout().flush().ok();
}

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Clustered synthetic vectors (topics + noise): closer to real embeddings than uniform noise.
fn synthetic_vectors(rng: &mut Rng, n: usize, centroids: &[Vec<f32>]) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let c = &centroids[rng.below(centroids.len())];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.03 * rng.normal()).collect();
            unit(&mut v);
            v
        })
        .collect()
}

fn search_latency(tmp: &Path) {
    let sizes: Vec<usize> = std::env::var("MNEMA_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    println!("\n== search latency (synthetic chunks: 40 words from a 30k-word Zipfian vocabulary, 384-d clustered vectors; top 10, 200 queries) ==");
    println!(
        "{:>9} {:>10} {:>16} {:>16} {:>16} {:>10} {:>18} {:>9}",
        "chunks", "build s", "keyword p50/p99", "vector p50/p99", "hybrid p50/p99", "recall@10", "numpy exact p50/p99", "index MB"
    );
    let dim = 384;
    let mut rng = Rng::new(3);
    let centroids: Vec<Vec<f32>> = (0..2000)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
            unit(&mut v);
            v
        })
        .collect();
    let vocab = Vocab::new(30_000, &mut rng);
    for &n in &sizes {
        let home = tmp.join(format!("store-{n}"));
        let mut rng = Rng::new(n as u64);
        let vecs = synthetic_vectors(&mut rng, n, &centroids);
        let t = Instant::now();
        let store = SqliteStore::open(&home).unwrap();
        let per = 5000;
        for start in (0..n).step_by(per) {
            let rows: Vec<(NewItem, mnema_store::EmbeddedChunks)> = (start..(start + per).min(n))
                .map(|i| {
                    let text = vocab.text(&mut rng, 40);
                    let item = NewItem {
                        path: format!("/bench/{i}.md"),
                        kind: Kind::Note,
                        sha256: format!("{i:064}"),
                        size: 1,
                        mtime: i as i64,
                        meta: serde_json::Value::Null,
                    };
                    let c = Chunk { seq: 0, end: text.len() as u32, text, start: 0, start_ms: None, end_ms: None };
                    (item, vec![(c, vecs[i].clone())])
                })
                .collect();
            store.bulk_insert(&rows, "synthetic").unwrap();
        }
        store.warm().unwrap(); // builds the HNSW index from SQLite
        store.flush().unwrap();
        let build = t.elapsed().as_secs_f64();
        let index_mb = store.index_memory_bytes() as f64 / 1e6;
        drop(store);
        let store = SqliteStore::open(&home).unwrap();
        store.warm().unwrap();

        let queries = synthetic_vectors(&mut rng, 200, &centroids);
        // Queries of 2-3 content words (see Vocab::query_word).
        let texts: Vec<String> =
            (0..200).map(|i| (0..2 + i % 2).map(|_| vocab.query_word(&mut rng)).collect::<Vec<_>>().join(" ")).collect();
        let q = |i: usize, mode| SearchQuery { text: texts[i].clone(), mode, filters: Filters::default(), limit: 10 };
        let kw = time_ms(200, |i| {
            search_with_vector(&store, None, &q(i, SearchMode::Keyword)).unwrap();
        });
        let mut approx = Vec::new();
        let vec_t = time_ms(200, |i| {
            approx.push(store.vector_candidates(&queries[i], &Filters::default(), 10).unwrap());
        });
        let hy = time_ms(200, |i| {
            search_with_vector(&store, Some(&queries[i]), &q(i, SearchMode::Hybrid)).unwrap();
        });
        // Recall against exact brute force over the same vectors (keys are chunk ids 1..=n).
        let mut found = 0;
        for (qi, a) in queries.iter().zip(&approx) {
            let mut exact: Vec<(usize, f32)> =
                vecs.iter().enumerate().map(|(i, v)| (i + 1, v.iter().zip(qi).map(|(x, y)| x * y).sum())).collect();
            exact.select_nth_unstable_by(9, |a, b| b.1.total_cmp(&a.1));
            let top: std::collections::HashSet<i64> = exact[..10].iter().map(|e| e.0 as i64).collect();
            found += a.iter().filter(|(k, _)| top.contains(k)).count();
        }
        let recall = found as f64 / (10.0 * queries.len() as f64);
        // Peer: numpy brute force over the same vectors and queries.
        let vf = tmp.join("vectors.f32");
        let qf = tmp.join("queries.f32");
        let flat = |vs: &[Vec<f32>]| vs.iter().flatten().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(&vf, flat(&vecs)).unwrap();
        std::fs::write(&qf, flat(&queries)).unwrap();
        let numpy = match run_peer("numpy_search.py", &[&vf, &qf]) {
            Ok(v) => format!("{:.2}/{:.2}", v["p50_ms"].as_f64().unwrap_or(0.0), v["p99_ms"].as_f64().unwrap_or(0.0)),
            Err(e) => format!("n/a: {e}"),
        };
        let pp = |s: &[f64]| format!("{:.2}/{:.2}", percentile(s, 50.0), percentile(s, 99.0));
        println!(
            "{:>9} {:>10.1} {:>16} {:>16} {:>16} {:>10.3} {:>18} {:>9.0}",
            n,
            build,
            pp(&kw),
            pp(&vec_t),
            pp(&hy),
            recall,
            numpy,
            index_mb
        );
        std::io::stdout().flush().ok();
        drop(store);
        let _ = std::fs::remove_dir_all(&home);
    }
    println!("(times in ms; hybrid = keyword + vector + fusion + rows and snippets, query embedding excluded;");
    println!(" queries are 2-3 words of Zipf ranks 100-5000; build = bulk insert + HNSW build)");
}
