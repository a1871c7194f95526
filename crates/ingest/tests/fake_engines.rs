//! Ingest's own logic (what is embedded, skipped, copied or refused, and what is stored) on
//! small in-memory engines and the in-memory store: no model files, milliseconds a test.

use mnema_core::{text, Config, ErrorKind, Filters, Kind};
use mnema_engine::{Embedder, EngineError, Role, TokenCounter};
use mnema_ingest::{Ingester, Outcome, Status};
use mnema_models::manager::ModelManager;
use mnema_store::{MemoryStore, Store};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const DIM: usize = 16;

/// Words are tokens; a text's vector is its bag of words hashed into 16 buckets, so texts that
/// share words are near. Records every text it embeds; fails on a text holding `fail_on`.
#[derive(Default)]
struct FakeEmbedder {
    embedded: Mutex<Vec<String>>,
    fail_on: Option<&'static str>,
}

impl TokenCounter for FakeEmbedder {
    fn token_offsets(&self, text: &str) -> mnema_engine::Result<Vec<(usize, usize)>> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

fn bag_of_words(t: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for w in t.split_whitespace() {
        let h = w.to_lowercase().bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        v[(h % DIM as u64) as usize] += 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.into_iter().map(|x| x / n).collect()
}

impl Embedder for FakeEmbedder {
    fn name(&self) -> &str {
        "fake-bag-of-words"
    }
    fn dim(&self) -> usize {
        DIM
    }
    fn max_content_tokens(&self) -> usize {
        512
    }
    fn tokens(&self) -> &dyn TokenCounter {
        self
    }
    fn embed(&self, texts: &[&str], _role: Role) -> mnema_engine::Result<Vec<Vec<f32>>> {
        if let Some(bad) = self.fail_on.filter(|b| texts.iter().any(|t| t.contains(b))) {
            return Err(EngineError::new(ErrorKind::Internal, format!("the engine broke on {bad}")));
        }
        self.embedded.lock().unwrap().extend(texts.iter().map(|t| t.to_string()));
        Ok(texts.iter().map(|t| bag_of_words(t)).collect())
    }
    fn weight_bytes(&self) -> usize {
        0
    }
    fn set_max_batch_tokens(&self, _tokens: usize) {}
}

struct Env {
    dir: tempfile::TempDir,
    config: Config,
    store: MemoryStore,
    models: ModelManager,
    embedder: Arc<FakeEmbedder>,
}

impl Env {
    fn new(fail_on: Option<&'static str>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::at(&dir.path().join("home"), &dir.path().join("no-models"));
        // Eight words a chunk (the chunker's least), no overlap: chunks are easy to predict.
        config.chunk_tokens = 8;
        config.chunk_overlap = 0;
        let embedder = Arc::new(FakeEmbedder { fail_on, ..Default::default() });
        Env { dir, config, store: MemoryStore::new(), models: ModelManager::new(1 << 30), embedder }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn run(&self, files: &[PathBuf]) -> Result<Vec<Outcome>, mnema_ingest::IngestError> {
        // The ingester takes the manager's shared form of an embedder.
        struct Shared(Arc<FakeEmbedder>);
        impl Embedder for Shared {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn dim(&self) -> usize {
                self.0.dim()
            }
            fn max_content_tokens(&self) -> usize {
                self.0.max_content_tokens()
            }
            fn tokens(&self) -> &dyn TokenCounter {
                self.0.tokens()
            }
            fn embed(&self, texts: &[&str], role: Role) -> mnema_engine::Result<Vec<Vec<f32>>> {
                self.0.embed(texts, role)
            }
            fn weight_bytes(&self) -> usize {
                0
            }
            fn set_max_batch_tokens(&self, _tokens: usize) {}
        }
        let e: Arc<Box<dyn Embedder>> = Arc::new(Box::new(Shared(self.embedder.clone())));
        Ingester::new(&self.config, &self.store, &self.models).with_embedder(e).run(files, |_| {})
    }

    fn embedded(&self) -> usize {
        self.embedder.embedded.lock().unwrap().len()
    }

    fn keyword_paths(&self, q: &str) -> Vec<String> {
        let hits = self.store.keyword_candidates(&text::query_terms(q), &Filters::default(), 50).unwrap();
        let mut paths: Vec<String> =
            self.store.chunk_rows(&hits.iter().map(|h| h.0).collect::<Vec<_>>()).unwrap().into_iter().map(|r| r.path).collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

fn status_of<'a>(out: &'a [Outcome], p: &Path) -> &'a Outcome {
    out.iter().find(|o| o.path == p).unwrap_or_else(|| panic!("no outcome for {}: {out:?}", p.display()))
}

#[test]
fn notes_are_cut_embedded_stored_and_found() {
    let env = Env::new(None);
    let a = env.write("garden.md", "полить томаты вечером и подвязать огурцы на грядке у забора".as_bytes());
    let b = env.write("soup.txt", b"beet soup needs dill");
    let out = env.run(&[a.clone(), b.clone()]).unwrap();
    assert!(out.iter().all(|o| o.status == Status::Indexed && o.kind == Some(Kind::Note)), "{out:?}");
    // 10 words in chunks of 8, and 4 words in one.
    assert_eq!((status_of(&out, &a).chunks, status_of(&out, &b).chunks), (2, 1));
    assert_eq!(env.embedded(), 3, "every chunk embedded once");
    assert_eq!(env.store.embedder().unwrap(), Some(("fake-bag-of-words".to_string(), DIM)));
    let stored = env.store.item_by_path(a.to_str().unwrap()).unwrap().unwrap();
    assert_eq!(stored.meta["chars"], 59);
    let chunks = env.store.chunks(stored.id).unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.0.text.as_str()).collect::<Vec<_>>(),
        ["полить томаты вечером и подвязать огурцы на грядке", "у забора"]
    );
    // Each chunk is stored with its own vector, found first by it.
    for (c, v) in &chunks {
        assert_eq!(v.as_deref(), Some(bag_of_words(&c.text).as_slice()));
    }
    let near = env.store.vector_candidates(&bag_of_words("beet soup"), &Filters::default(), 1).unwrap();
    assert_eq!(env.store.chunk_rows(&[near[0].0]).unwrap()[0].path, b.to_str().unwrap());
    assert_eq!(env.keyword_paths("огурцы"), [a.to_str().unwrap()]);
}

#[test]
fn unchanged_files_and_copies_are_not_embedded_again() {
    let env = Env::new(None);
    let a = env.write("a.md", "одна и та же заметка в двух местах".as_bytes());
    env.run(std::slice::from_ref(&a)).unwrap();
    let first = env.embedded();
    // The same file again: nothing to do.
    let again = env.run(std::slice::from_ref(&a)).unwrap();
    assert_eq!(again[0].status, Status::Unchanged);
    assert_eq!(env.embedded(), first);
    // The same bytes under another name: stored, its chunks copied, nothing embedded.
    let copy = env.write("copy.md", "одна и та же заметка в двух местах".as_bytes());
    let out = env.run(std::slice::from_ref(&copy)).unwrap();
    assert_eq!((out[0].status, out[0].chunks), (Status::Indexed, 1));
    assert_eq!(env.embedded(), first, "a copy is not embedded again");
    let (ia, ic) =
        (env.store.item_by_path(a.to_str().unwrap()).unwrap().unwrap(), env.store.item_by_path(copy.to_str().unwrap()).unwrap().unwrap());
    assert_ne!(ia.id, ic.id);
    assert_eq!(env.store.chunks(ia.id).unwrap(), env.store.chunks(ic.id).unwrap());
    // A changed file is embedded again and its old text is gone.
    std::fs::write(&a, "совсем другой текст".as_bytes()).unwrap();
    let out = env.run(std::slice::from_ref(&a)).unwrap();
    assert_eq!(out[0].status, Status::Indexed);
    assert_eq!(env.embedded(), first + 1);
    assert_eq!(env.keyword_paths("местах"), [copy.to_str().unwrap()]);
    assert_eq!(env.keyword_paths("другой"), [a.to_str().unwrap()]);
    assert_eq!(env.store.stats().unwrap().items, 2);
}

#[test]
fn bad_files_fail_alone_each_with_its_reason() {
    let env = Env::new(None);
    let good = env.write("good.md", b"a perfectly fine note");
    let binary = env.write("binary.md", b"text\0with a NUL");
    let latin1 = env.write("latin1.txt", b"caf\xe9 au lait");
    let empty = env.write("empty.md", b"  \n\t\n");
    let missing = env.dir.path().join("missing.md");
    let folder = env.dir.path().join("folder.md");
    std::fs::create_dir(&folder).unwrap();
    let odd = env.write("data.xyz", b"some bytes");
    let files = [binary.clone(), good.clone(), latin1.clone(), empty.clone(), missing.clone(), folder.clone(), odd.clone()];
    let out = env.run(&files).unwrap();
    assert_eq!(out.len(), files.len(), "one outcome per file");
    assert_eq!(status_of(&out, &good).status, Status::Indexed);
    for (p, reason) in [
        (&binary, "binary file"),
        (&latin1, "not valid UTF-8 text (invalid byte at offset 3)"),
        (&empty, "empty file"),
        (&missing, "no such file or directory"),
        (&folder, "not a regular file"),
        (&odd, "unsupported file type '.xyz'"),
    ] {
        let o = status_of(&out, p);
        assert_eq!(o.status, Status::Failed, "{}", p.display());
        let e = o.error.as_deref().unwrap_or_default();
        assert!(e.contains(reason), "{}: {e:?} lacks {reason:?}", p.display());
        assert!(o.id.is_none());
        assert!(env.store.item_by_path(p.to_str().unwrap()).unwrap().is_none(), "{} stored", p.display());
    }
    assert_eq!(env.store.stats().unwrap().items, 1);
}

#[test]
fn an_engine_failure_stops_the_run_with_its_kind_and_stores_nothing_half() {
    let mut env = Env::new(Some("BOOM"));
    // One chunk a batch: the file before the failing one is stored whole.
    env.config.embed_batch = 1;
    let a = env.write("a.md", b"fine words here");
    let b = env.write("b.md", b"this one goes BOOM");
    let c = env.write("c.md", b"never reached");
    let e = env.run(&[a.clone(), b.clone(), c.clone()]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    assert!(e.to_string().contains("BOOM"), "{e}");
    let stored = env.store.item_by_path(a.to_str().unwrap()).unwrap().expect("the file before the failure is stored");
    let chunks = env.store.chunks(stored.id).unwrap();
    assert!(!chunks.is_empty() && chunks.iter().all(|c| c.1.is_some()), "stored with every vector");
    for p in [&b, &c] {
        assert!(env.store.item_by_path(p.to_str().unwrap()).unwrap().is_none(), "{} stored", p.display());
    }
    assert_eq!(env.store.stats().unwrap().items, 1);
}

/// An embedder given to the ingester is the one used throughout, also for the text of
/// images, which are read after the loaded model was released for the OCR engines (real
/// Tesseract here): ingest must not look for a model named after the fake.
#[test]
fn a_given_embedder_stays_in_use_across_kinds() {
    let env = Env::new(None);
    let a = env.write("a.md", b"first note");
    let shot = env.dir.path().join("shot.png");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/screenshots/vector-index.png"), &shot).unwrap();
    let broken = env.write("broken.png", b"\x89PNG\r\n\x1a\n not really");
    let out = env.run(&[a.clone(), shot.clone(), broken.clone()]).unwrap();
    assert_eq!(status_of(&out, &broken).status, Status::Failed, "{out:?}");
    let o = status_of(&out, &shot);
    assert!(o.status == Status::Indexed && o.chunks > 0, "{out:?}");
    assert_eq!(status_of(&out, &a).status, Status::Indexed);
    assert_eq!(env.embedded(), 1 + o.chunks, "the note and the screenshot's text, all by the given embedder");
}
