//! Ingest: files → text → chunks → vectors → store, file by file.
//!
//! Each file is committed in its own transaction, so a run killed halfway keeps everything
//! finished before it and a rerun skips those files (same path and sha256 = `unchanged`).
//! Files whose content is already stored under another path reuse its chunks and vectors.
//! A bad file yields a failed [`Outcome`] with a one-line reason; the batch goes on.
#![deny(missing_docs)]

use mnema_core::{Chunk, Config, Kind};
use mnema_extract::chunk::{chunk_text, ChunkSpec};
use mnema_extract::note::io_reason;
use mnema_core::profile::stage;
use mnema_extract::{load_embedder, Embedder, ExtractError, Role};
use mnema_models::manager::ModelManager;
use std::sync::Arc;
use mnema_store::{NewItem, Store};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Newly indexed, or re-indexed after a change.
    Indexed,
    /// Already stored with the same content: nothing done.
    Unchanged,
    /// Not indexed; see the error.
    Failed,
}

impl Status {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Indexed => "indexed",
            Status::Unchanged => "unchanged",
            Status::Failed => "failed",
        }
    }
}

/// The result for one file.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The file (absolute when it could be resolved).
    pub path: PathBuf,
    /// The item id, when stored.
    pub id: Option<i64>,
    /// The kind, when known.
    pub kind: Option<Kind>,
    /// What happened.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// Chunks stored.
    pub chunks: usize,
}

impl Outcome {
    fn failed(path: PathBuf, kind: Option<Kind>, error: impl Into<String>) -> Outcome {
        Outcome { path, id: None, kind, status: Status::Failed, error: Some(error.into()), chunks: 0 }
    }
}

/// Errors that stop a whole ingest run (per-file problems are [`Outcome`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] mnema_store::StoreError),
    /// The embedding model could not be loaded.
    #[error(transparent)]
    Model(#[from] ExtractError),
}

/// Expands the given paths into the files to ingest: directories are walked recursively
/// (hidden entries and unsupported extensions skipped); files named explicitly are always
/// attempted. Missing paths come back as failures.
pub fn collect(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Outcome>) {
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Err(e) => failed.push(Outcome::failed(absolute(p), None, io_reason(&e))),
            Ok(m) if m.is_dir() => walk(p, &mut files, &mut failed),
            Ok(_) => files.push(absolute(p)),
        }
    }
    (files, failed)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, failed: &mut Vec<Outcome>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return failed.push(Outcome::failed(absolute(dir), None, io_reason(&e))),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            walk(&p, files, failed);
        } else if kind_of(&p).is_some() {
            files.push(absolute(&p));
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}

fn kind_of(p: &Path) -> Option<Kind> {
    p.extension().and_then(|e| e.to_str()).and_then(Kind::from_extension)
}

/// A file read and cut into chunks, waiting for its vectors.
struct Pending {
    item: NewItem,
    chunks: Vec<Chunk>,
}

/// The embedding model `name` through the memory budget. Its batch size is set from the
/// budget left once it is loaded.
pub fn acquire_embedder(config: &Config, models: &ModelManager, name: &str) -> Result<Arc<Box<dyn Embedder>>, ExtractError> {
    let estimate = mnema_extract::embed::estimate_cost(&config.models_dir, name);
    let e = models.acquire(name, estimate, || {
        let _s = stage("load-model");
        load_embedder(&config.models_dir, name)
    })?;
    // Activations cost about 24 KB per token in a batch (384-wide model, 1536-wide FFN).
    e.set_max_batch_tokens((models.free() / (24 << 10)).clamp(256, 4096) as usize);
    Ok(e)
}

/// Runs ingest over a store, loading the embedding model (through the memory budget) only if
/// some file needs it.
pub struct Ingester<'a> {
    config: &'a Config,
    store: &'a mut Store,
    models: &'a ModelManager,
    embedder: Option<Arc<Box<dyn Embedder>>>,
}

impl<'a> Ingester<'a> {
    /// An ingester writing into `store`, loading models through `models`.
    pub fn new(config: &'a Config, store: &'a mut Store, models: &'a ModelManager) -> Ingester<'a> {
        Ingester { config, store, models, embedder: None }
    }

    fn embedder(&mut self) -> Result<Arc<Box<dyn Embedder>>, IngestError> {
        if self.embedder.is_none() {
            // A store keeps the model it was built with, whatever the configuration says now.
            let name = self.store.embedder()?.map(|e| e.0).unwrap_or_else(|| self.config.embedder.clone());
            self.embedder = Some(acquire_embedder(self.config, self.models, &name)?);
        }
        Ok(self.embedder.clone().expect("loaded above"))
    }

    /// Ingests `files`, calling `progress` with each file's outcome as it completes.
    pub fn run(&mut self, files: &[PathBuf], mut progress: impl FnMut(&Outcome)) -> Result<Vec<Outcome>, IngestError> {
        let mut out = Vec::with_capacity(files.len());
        let mut pending: Vec<Pending> = Vec::new();
        let mut pending_chunks = 0;
        for path in files {
            match self.prepare(path)? {
                Prepared::Done(o) => {
                    progress(&o);
                    out.push(o);
                }
                Prepared::Embed(p) => {
                    pending_chunks += p.chunks.len();
                    pending.push(p);
                    // Several small files share one embedding batch.
                    if pending_chunks >= self.config.embed_batch {
                        self.flush(&mut pending, &mut out, &mut progress)?;
                        pending_chunks = 0;
                    }
                }
            }
        }
        self.flush(&mut pending, &mut out, &mut progress)?;
        self.store.flush()?;
        Ok(out)
    }

    fn prepare(&mut self, path: &Path) -> Result<Prepared, IngestError> {
        let kind = kind_of(path);
        let fail = |e: String| Ok(Prepared::Done(Outcome::failed(path.to_path_buf(), kind, e)));
        let meta = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return fail("not a regular file".into()),
            Err(e) => return fail(io_reason(&e)),
        };
        let kind = match kind {
            Some(Kind::Note) => Kind::Note,
            Some(k) => return fail(format!("{k} files are not supported by this build yet")),
            None => match path.extension().and_then(|e| e.to_str()) {
                Some(ext) => return fail(format!("unsupported file type '.{ext}'")),
                None => Kind::Note, // extension-less files are tried as text
            },
        };
        if meta.len() > self.config.max_note_size.0 {
            return fail(format!("file too large: {} (limit {}; set MNEMA_MAX_FILE_SIZE)", mnema_core::ByteSize(meta.len()), self.config.max_note_size));
        }
        let decode = stage("decode");
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return fail(io_reason(&e)),
        };
        let sha = mnema_models::catalog::hex(&Sha256::digest(&bytes));
        let path_str = path.to_string_lossy().into_owned();
        let existing = self.store.item_by_path(&path_str)?;
        if let Some(it) = &existing {
            if it.sha256 == sha {
                return Ok(Prepared::Done(Outcome { path: path.into(), id: Some(it.id), kind: Some(it.kind), status: Status::Unchanged, error: None, chunks: 0 }));
            }
        }
        let text = match mnema_extract::note::note_text(bytes) {
            Ok(t) => t,
            Err(e) => return fail(e.to_string()),
        };
        drop(decode);
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs() as i64);
        let item = NewItem {
            path: path_str.clone(),
            kind,
            sha256: sha.clone(),
            size: meta.len(),
            mtime,
            meta: serde_json::json!({ "title": title(&text), "chars": text.chars().count() }),
        };
        // Same content under another path: reuse its chunks and vectors.
        if let Some(twin) = self.store.item_by_sha256(&sha, &path_str)? {
            let stored = self.store.chunks(twin.id)?;
            if !stored.is_empty() && stored.iter().all(|(_, v)| v.is_some()) {
                let name = self.store.embedder()?.map(|e| e.0).unwrap_or_default();
                let (chunks, vecs): (Vec<Chunk>, Vec<Vec<f32>>) = stored.into_iter().map(|(c, v)| (c, v.unwrap_or_default())).unzip();
                let _s = stage("store");
                let id = self.store.put_item(&item, &chunks, &vecs, &name)?;
                return Ok(Prepared::Done(Outcome { path: path.into(), id: Some(id), kind: Some(kind), status: Status::Indexed, error: None, chunks: chunks.len() }));
            }
        }
        let spec = ChunkSpec { max_tokens: self.config.chunk_tokens, overlap: self.config.chunk_overlap };
        let embedder = self.embedder()?;
        let chunks = match chunk_text(embedder.tokenizer(), &text, spec) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return fail("no text to index".into()),
            Err(e) => return fail(e.to_string()),
        };
        Ok(Prepared::Embed(Pending { item, chunks }))
    }

    fn flush(&mut self, pending: &mut Vec<Pending>, out: &mut Vec<Outcome>, progress: &mut impl FnMut(&Outcome)) -> Result<(), IngestError> {
        if pending.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = pending.iter().flat_map(|p| p.chunks.iter().map(|c| c.text.as_str())).collect();
        let embedder = self.embedder()?;
        let vectors = {
            let _s = stage("embed");
            embedder.embed(&texts, Role::Passage)?
        };
        let name = embedder.name().to_string();
        let mut it = vectors.into_iter();
        for p in pending.drain(..) {
            let vecs: Vec<Vec<f32>> = it.by_ref().take(p.chunks.len()).collect();
            let _s = stage("store");
            let id = self.store.put_item(&p.item, &p.chunks, &vecs, &name)?;
            let o = Outcome { path: PathBuf::from(&p.item.path), id: Some(id), kind: Some(p.item.kind), status: Status::Indexed, error: None, chunks: p.chunks.len() };
            progress(&o);
            out.push(o);
        }
        Ok(())
    }
}

enum Prepared {
    Done(Outcome),
    Embed(Pending),
}

/// A title for a note: its first Markdown heading, else its first non-empty line (≤ 80 chars).
fn title(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('#'))
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("");
    line.trim_start_matches('#').trim().chars().take(80).collect()
}
