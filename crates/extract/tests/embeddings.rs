//! Embedding correctness on the real model files: agreement with vectors computed by
//! independent implementations, and similarity orderings within and across languages.

use mnema_extract::chunk::{chunk_text, ChunkSpec};
use mnema_extract::{load_embedder, Embedder, Role};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

struct Reference {
    role: Role,
    text: String,
    vector: Vec<f32>,
}

fn reference(file: &str) -> (String, Vec<Reference>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(file);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let items = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Reference {
            role: if i["role"] == "query" { Role::Query } else { Role::Passage },
            text: i["text"].as_str().unwrap().to_string(),
            vector: i["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect();
    (v["source"].as_str().unwrap().to_string(), items)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn embed_all(e: &dyn Embedder, refs: &[Reference]) -> Vec<Vec<f32>> {
    // Embedded together in one batch (mixed lengths: exercises padding and the mask).
    let passages: Vec<&str> = refs.iter().filter(|r| r.role == Role::Passage).map(|r| r.text.as_str()).collect();
    let queries: Vec<&str> = refs.iter().filter(|r| r.role == Role::Query).map(|r| r.text.as_str()).collect();
    let mut p = e.embed(&passages, Role::Passage).unwrap().into_iter();
    let mut q = e.embed(&queries, Role::Query).unwrap().into_iter();
    refs.iter().map(|r| if r.role == Role::Query { q.next().unwrap() } else { p.next().unwrap() }).collect()
}

#[test]
fn e5_matches_independent_reference_engine() {
    let e = load_embedder(&mnema_extract::Runtime::new(&models_dir()), "multilingual-e5-small").unwrap();
    let (source, refs) = reference("e5_reference.json");
    let ours = embed_all(e.as_ref(), &refs);
    for (r, v) in refs.iter().zip(&ours) {
        assert_eq!(v.len(), 384);
        assert!((dot(v, v) - 1.0).abs() < 1e-4, "not normalised");
        let cos = dot(v, &r.vector);
        assert!(cos > 0.995, "cosine {cos} against {source} for {:?}", r.text);
    }
    // One at a time gives the same vector as in a padded batch.
    let single = e.embed(&[refs[6].text.as_str()], refs[6].role).unwrap();
    assert!(dot(&single[0], &ours[6]) > 0.9999);
}

#[test]
fn e5_ranks_matching_passages_first_across_languages() {
    let e = load_embedder(&mnema_extract::Runtime::new(&models_dir()), "multilingual-e5-small").unwrap();
    let passages = [
        "Как приготовить борщ: свёкла, капуста, картофель и морковь варятся в бульоне два часа.",
        "Отменить подписку можно в настройках аккаунта в любой момент.",
        "Сад нужно поливать каждый вечер, особенно в жару.",
        "The quarterly report shows revenue growth in the European market.",
    ];
    let pv = e.embed(&passages, Role::Passage).unwrap();
    // (query, index of the passage it must rank first)
    let cases = [
        ("beet soup recipe", 0),
        ("рецепт борща", 0),
        ("how do I cancel my subscription", 1),
        ("сколько стоит подписка и как её отменить", 1),
        ("watering plants in summer", 2),
        ("отчёт о выручке в Европе", 3),
    ];
    for (q, want) in cases {
        let qv = &e.embed(&[q], Role::Query).unwrap()[0];
        let scores: Vec<f32> = pv.iter().map(|p| dot(qv, p)).collect();
        let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        assert_eq!(best, want, "query {q:?}: scores {scores:?}");
    }
    // A Russian sentence and its English translation are close; unrelated text is not.
    let v = e
        .embed(
            &["Сад нужно поливать каждый вечер.", "The garden needs water every evening.", "The quarterly report shows revenue growth."],
            Role::Passage,
        )
        .unwrap();
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.05);
}

#[test]
fn minilm_matches_sentence_transformers() {
    let e = load_embedder(&mnema_extract::Runtime::new(&models_dir()), "all-minilm-l6-v2").unwrap();
    let (source, refs) = reference("minilm_reference.json");
    let ours = embed_all(e.as_ref(), &refs);
    for (r, v) in refs.iter().zip(&ours) {
        let cos = dot(v, &r.vector);
        assert!(cos > 0.999, "cosine {cos} against {source} for {:?}", r.text);
    }
}

#[test]
fn chunks_respect_token_limit_and_overlap() {
    let e = load_embedder(&mnema_extract::Runtime::new(&models_dir()), "multilingual-e5-small").unwrap();
    let para = "Векторный поиск находит заметки по смыслу, а не по словам. Vector search finds notes by meaning.\n";
    let text = para.repeat(40);
    let spec = ChunkSpec { max_tokens: 64, overlap: 8 };
    let chunks = chunk_text(e.tokens(), &text, spec).unwrap();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    for c in &chunks {
        let n = e.tokens().count_tokens(c.text.as_str()).unwrap();
        assert!(n <= 64 + 2, "chunk of {n} tokens");
        assert_eq!(&text[c.start as usize..c.end as usize], c.text);
    }
    for w in chunks.windows(2) {
        assert!(w[1].start < w[0].end, "no overlap between {} and {}", w[0].seq, w[1].seq);
        assert!(w[1].start > w[0].start);
    }
    assert_eq!(chunks.last().unwrap().end as usize, text.trim_end().len());
    // Short text: one chunk, the whole text.
    let one = chunk_text(e.tokens(), "  короткая заметка ", spec).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].text, "короткая заметка");
}

/// Found by the 1M-input note_reader campaign (`fuzz/corpus/note_reader/gap-between-chunks.md`):
/// with no overlap, a chunk ended where its last token ended and the next began at its first
/// token, and a letter the tokenizer's offsets skipped (after a leading control character)
/// fell between the two, in no chunk. Every word of a note is in some chunk.
#[test]
fn no_text_falls_between_chunks() {
    let e = load_embedder(&mnema_extract::Runtime::new(&models_dir()), "multilingual-e5-small").unwrap();
    let bytes =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/note_reader/gap-between-chunks.md")).unwrap();
    let text = mnema_extract::note::note_text(bytes.clone()).unwrap();
    let words = |s: &str| s.chars().any(char::is_alphanumeric);
    for (max_tokens, overlap) in [(bytes.len() % 40, bytes.len() % 7), (6, 0), (8, 0), (12, 1), (16, 0)] {
        let chunks = chunk_text(e.tokens(), &text, ChunkSpec { max_tokens, overlap }).unwrap();
        assert!(chunks.len() > 1);
        assert!(!words(&text[..chunks[0].start as usize]));
        assert!(!words(&text[chunks.last().unwrap().end as usize..]));
        for w in chunks.windows(2) {
            let gap = &text[(w[0].end as usize).min(w[1].start as usize)..w[1].start as usize];
            assert!(!words(gap), "max {max_tokens}, overlap {overlap}: {gap:?} between chunks {} and {}", w[0].seq, w[1].seq);
        }
    }
}
