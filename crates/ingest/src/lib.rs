//! Ingest: files → text → chunks → vectors → store, file by file.
//!
//! Each file is committed in its own transaction, so a run killed halfway keeps everything
//! finished before it and a rerun skips those files (same path and sha256 = `unchanged`).
//! Files whose content is already stored under another path reuse its chunks and vectors.
//! A bad file yields a failed [`Outcome`] with a one-line reason; the batch goes on.
#![deny(missing_docs)]

use mnema_core::profile::stage;
use mnema_core::{Chunk, Config, Kind};
use mnema_engine::chunk::{chunk_text, ChunkSpec};
use mnema_engine::{Embedder, Role};
use mnema_extract::note::io_reason;
use mnema_extract::ocr::{join_lines, EngineOptions, OcrPool};
use mnema_extract::vad::Vad;
use mnema_extract::whisper::{parse_language, TranscribeOptions, Transcript, Whisper};
use mnema_extract::{load_embedder, ExtractError, Runtime};
use mnema_models::manager::ModelManager;
use mnema_store::{CopyMeta, NewItem, Store};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

mod budget;
mod images;
pub mod kind;
mod walk;

pub use walk::collect;

/// What [`Ingester::run_with`] reports while it works.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A file is done.
    File(&'a Outcome),
    /// Chunks of a long file embedded so far (reported between embedding batches).
    Chunks {
        /// The file.
        path: &'a Path,
        /// Chunks embedded.
        done: usize,
        /// Chunks in the file.
        total: usize,
    },
}

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

    /// `path` is stored as `item` with the same content: nothing to do.
    fn unchanged(path: &Path, item: &mnema_core::Item) -> Outcome {
        Outcome { path: path.to_path_buf(), id: Some(item.id), kind: Some(item.kind), status: Status::Unchanged, error: None, chunks: 0 }
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
    /// An engine failed while running.
    #[error(transparent)]
    Engine(#[from] mnema_engine::EngineError),
}

impl IngestError {
    /// What sort of failure this is: the store's or the model's own kind.
    pub fn kind(&self) -> mnema_core::ErrorKind {
        match self {
            IngestError::Store(e) => e.kind(),
            IngestError::Model(e) => e.kind(),
            IngestError::Engine(e) => e.kind(),
        }
    }
}

/// A file read and cut into chunks, waiting for its vectors.
struct Pending {
    item: NewItem,
    chunks: Vec<Chunk>,
}

/// The embedding model `name` through the memory budget. Its batch size is set from the
/// budget left once it is loaded.
pub fn acquire_embedder(config: &Config, models: &ModelManager, name: &str) -> Result<Arc<Box<dyn Embedder>>, ExtractError> {
    let rt = Runtime::from_config(config);
    let estimate = mnema_extract::embed::estimate_cost(&rt, name);
    let e = models.acquire(name, estimate, || {
        let _s = stage("load-model");
        load_embedder(&rt, name)
    })?;
    // Activations cost about 24 KB per token in a batch (384-wide model, 1536-wide FFN).
    e.set_max_batch_tokens((models.free() / (24 << 10)).clamp(256, mnema_extract::embed::MAX_BATCH_TOKENS as u64) as usize);
    Ok(e)
}

/// The speech model `name` through the memory budget.
pub fn acquire_whisper(config: &Config, models: &ModelManager, name: &str) -> Result<Arc<Whisper>, ExtractError> {
    let estimate = mnema_extract::whisper::estimate_cost(&config.models_dir, name);
    models.acquire(&format!("asr:{name}"), estimate, || {
        let _s = stage("load-model");
        mnema_extract::whisper::load_whisper(&Runtime::from_config(config), name)
    })
}

/// The voice-activity detector through the memory budget (Silero, or the loudness gate when
/// ONNX Runtime cannot load). About 30 MB with ONNX Runtime.
pub fn acquire_vad(config: &Config, models: &ModelManager) -> Result<Arc<Mutex<Box<dyn Vad>>>, ExtractError> {
    models.acquire("vad:silero", 40 << 20, || {
        let _s = stage("load-model");
        Ok::<_, ExtractError>(Mutex::new(mnema_extract::vad::load_vad(&Runtime::from_config(config))))
    })
}

/// Decoding options from the configuration: `languages` is `auto`, one code, or a list to
/// detect among.
pub fn transcribe_options(languages: &str) -> TranscribeOptions {
    let (language, candidates) = parse_language(languages);
    TranscribeOptions { language, candidates, ..TranscribeOptions::default() }
}

/// Transcribes one audio file with the given engines.
pub fn transcribe_file(
    path: &Path,
    whisper: &Whisper,
    vad: Option<&Mutex<Box<dyn Vad>>>,
    opts: &TranscribeOptions,
    progress: impl FnMut(i64, Option<i64>),
) -> Result<Transcript, ExtractError> {
    let mut stream = {
        let _s = stage("decode");
        mnema_extract::audio::AudioStream::open(path)?
    };
    match vad {
        Some(v) => {
            let mut guard = v.lock().unwrap_or_else(|e| e.into_inner());
            guard.reset();
            whisper.transcribe(&mut stream, Some(guard.as_mut()), opts, progress)
        }
        None => whisper.transcribe(&mut stream, None, opts, progress),
    }
}

/// Groups transcript segments into chunks of at most ~`max_chars` characters and 60 s, each
/// keeping the time of its first and last segment. Byte offsets are into `Transcript::text()`.
pub fn audio_chunks(t: &Transcript, max_chars: usize) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut at = 0u32;
    for s in &t.segments {
        let start = at;
        let end = start + s.text.len() as u32;
        at = end + 1;
        match chunks.last_mut() {
            Some(c) if c.text.chars().count() + 1 + s.text.chars().count() <= max_chars && s.end_ms - c.start_ms.unwrap_or(0) <= 60_000 => {
                c.text.push(' ');
                c.text.push_str(&s.text);
                c.end = end;
                c.end_ms = Some(s.end_ms);
            }
            _ => chunks.push(Chunk {
                seq: chunks.len() as u32,
                text: s.text.clone(),
                start,
                end,
                start_ms: Some(s.start_ms),
                end_ms: Some(s.end_ms),
            }),
        }
    }
    chunks
}

/// Runs ingest over a store, loading the embedding model (through the memory budget) only if
/// some file needs it.
pub struct Ingester<'a> {
    config: &'a Config,
    store: &'a dyn Store,
    models: &'a ModelManager,
    /// The loaded model, released while OCR or speech needs the memory.
    embedder: Option<Arc<Box<dyn Embedder>>>,
    /// An embedder given by the caller ([`Ingester::with_embedder`]): always used, never
    /// released or reloaded.
    given: Option<Arc<Box<dyn Embedder>>>,
}

impl<'a> Ingester<'a> {
    /// An ingester writing into `store`, loading models through `models`.
    pub fn new(config: &'a Config, store: &'a dyn Store, models: &'a ModelManager) -> Ingester<'a> {
        Ingester { config, store, models, embedder: None, given: None }
    }

    /// Embeds with `embedder` instead of loading the configured model (tests with small
    /// in-memory engines; a front end that already holds the model).
    pub fn with_embedder(mut self, embedder: Arc<Box<dyn Embedder>>) -> Ingester<'a> {
        self.given = Some(embedder);
        self
    }

    fn embedder(&mut self) -> Result<Arc<Box<dyn Embedder>>, IngestError> {
        if let Some(e) = &self.given {
            return Ok(e.clone());
        }
        if self.embedder.is_none() {
            // A store keeps the model it was built with, whatever the configuration says now.
            let name = self.store.embedder()?.map(|e| e.0).unwrap_or_else(|| self.config.embedder.clone());
            self.embedder = Some(acquire_embedder(self.config, self.models, &name)?);
        }
        Ok(self.embedder.clone().expect("loaded above"))
    }

    /// Ingests `files`, calling `progress` with each file's outcome as it completes.
    pub fn run(&mut self, files: &[PathBuf], mut progress: impl FnMut(&Outcome)) -> Result<Vec<Outcome>, IngestError> {
        self.run_with(files, |p| {
            if let Progress::File(o) = p {
                progress(o)
            }
        })
    }

    /// Ingests `files`, calling `progress` with each file's outcome as it completes and with
    /// the chunks embedded so far of long files.
    pub fn run_with(&mut self, files: &[PathBuf], mut progress: impl FnMut(Progress<'_>)) -> Result<Vec<Outcome>, IngestError> {
        let progress: &mut dyn FnMut(Progress<'_>) = &mut progress;
        let mut out = Vec::with_capacity(files.len());
        let mut pending: Vec<Pending> = Vec::new();
        let mut pending_chunks = 0;
        // Work is grouped by model: notes first (embedder), then images in batches (OCR
        // engines, then the embedder), so each model loads once per batch, not per file.
        // The kind comes from the content (a PNG named `.m4a` is an image).
        let (mut images, mut audio, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for path in files {
            if path.to_str().is_none() {
                // Stored paths are text; a lossy name could merge two files into one item.
                let o = Outcome::failed(
                    path.clone(),
                    None,
                    format!("file name {} is not valid UTF-8: not indexed (rename the file to index it)", escaped(path)),
                );
                progress(Progress::File(&o));
                out.push(o);
                continue;
            }
            match kind::kind_of_file(path) {
                Some(Kind::Image) => images.push(path),
                Some(Kind::Audio) => audio.push(path),
                k => others.push((path, k)),
            }
        }
        for (path, kind) in others {
            match self.prepare(path, kind)? {
                Prepared::Done(o) => {
                    progress(Progress::File(&o));
                    out.push(o);
                }
                Prepared::Embed(p) => {
                    pending_chunks += p.chunks.len();
                    pending.push(p);
                    // Several small files share one embedding batch.
                    if pending_chunks >= self.config.embed_batch {
                        self.flush(&mut pending, &mut out, progress)?;
                        pending_chunks = 0;
                    }
                }
            }
        }
        self.flush(&mut pending, &mut out, progress)?;
        let mut queue: std::collections::VecDeque<&PathBuf> = images.into();
        // Batches are bounded by their pixels (read from each header), not only by count: the
        // prepared pages of a batch are held until its OCR ends.
        let batch_pixels = (self.models.budget() / IMAGE_BATCH_BUDGET_SHARE).max(1);
        while !queue.is_empty() {
            let (mut n, mut pixels) = (0, 0u64);
            while n < queue.len().min(MAX_IMAGE_BATCH) {
                let px = mnema_extract::image::file_decode_cost(queue[n]).map_or(0, |c| c.pixels);
                if n > 0 && pixels + px > batch_pixels {
                    break;
                }
                pixels += px;
                n += 1;
            }
            let batch: Vec<&PathBuf> = queue.drain(..n).collect();
            let deferred = self.images(&batch, &mut pending, &mut out, progress)?;
            self.flush(&mut pending, &mut out, progress)?;
            // Near-duplicates of images in this batch: now their original is stored.
            for p in deferred.into_iter().rev() {
                queue.push_front(p);
            }
        }
        // Audio last, a few files at a time: the speech model is held while they are
        // transcribed, then released so the embedder can have the memory back.
        for batch in audio.chunks(8) {
            self.audio(batch, &mut pending, &mut out, progress)?;
            self.flush(&mut pending, &mut out, progress)?;
        }
        self.store.flush()?;
        Ok(out)
    }

    /// Stores an item that has no text (a photo, a silent recording): kept so it is not
    /// extracted again, with nothing to search.
    fn store_textless(&mut self, item: &NewItem) -> Result<Outcome, IngestError> {
        let _s = stage("store");
        let id = self.store.put_item(item, &[], &[], "")?;
        Ok(Outcome {
            path: PathBuf::from(&item.path),
            id: Some(id),
            kind: Some(item.kind),
            status: Status::Indexed,
            error: None,
            chunks: 0,
        })
    }

    /// Transcribes a batch of recordings, queueing their transcript chunks for embedding.
    fn audio(
        &mut self,
        batch: &[&PathBuf],
        pending: &mut Vec<Pending>,
        out: &mut Vec<Outcome>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), IngestError> {
        let mut todo: Vec<(NewItem, &PathBuf)> = Vec::new();
        let mut done = |o: Outcome, out: &mut Vec<Outcome>| {
            progress(Progress::File(&o));
            out.push(o);
        };
        for path in batch {
            let fail = |e: String| Outcome::failed(path.to_path_buf(), Some(Kind::Audio), e);
            let limit = self.config.max_audio_size.0;
            let checked = checked_meta(path, limit, "; set MNEMA_MAX_AUDIO_SIZE").and_then(|meta| {
                // Hashed as a stream: a recording is never read into memory whole.
                let _s = stage("decode");
                mnema_models::catalog::sha256_file(path).map(|sha| (meta, sha)).map_err(|e| e.to_string())
            });
            let (meta, sha) = match checked {
                Ok(x) => x,
                Err(e) => {
                    done(fail(e), out);
                    continue;
                }
            };
            let path_str = path.to_string_lossy().into_owned();
            if let Some(it) = self.store.item_by_path(&path_str)?.filter(|it| it.sha256 == sha) {
                done(Outcome::unchanged(path, &it), out);
                continue;
            }
            let item = NewItem {
                path: path_str.clone(),
                kind: Kind::Audio,
                sha256: sha.clone(),
                size: meta.len(),
                mtime: mtime(&meta),
                meta: serde_json::json!({}),
            };
            if let Some(twin) = self.store.item_by_content(&sha, Kind::Audio, &path_str)? {
                if let Some(o) = self.reuse(&item, twin.id, &twin.sha256)? {
                    done(o, out);
                    continue;
                }
            }
            todo.push((item, path));
        }
        if todo.is_empty() {
            return Ok(());
        }
        // Give the embedder's memory up while the speech model works (it is reloaded after
        // if both do not fit the budget).
        self.embedder = None;
        let name = self.config.speech_model.clone();
        let whisper = acquire_whisper(self.config, self.models, &name)?;
        let vad = acquire_vad(self.config, self.models)?;
        let opts = transcribe_options(&self.config.languages);
        let mut transcribed = Vec::new();
        for (mut item, path) in todo {
            let t0 = std::time::Instant::now();
            match transcribe_file(path, &whisper, Some(&vad), &opts, |_, _| {}) {
                Ok(t) => {
                    let secs = t0.elapsed().as_secs_f64();
                    tracing::info!("{}: {:.1}s of audio in {secs:.1}s", path.display(), t.audio_ms as f64 / 1000.0);
                    item.meta = serde_json::json!({
                        "model": name,
                        "language": t.language,
                        "audio_ms": t.audio_ms,
                        "segments": t.segments,
                        "title": t.text().chars().take(80).collect::<String>(),
                    });
                    transcribed.push((item, t));
                }
                Err(e) => done(Outcome::failed(path.to_path_buf(), Some(Kind::Audio), e.to_string()), out),
            }
        }
        drop(whisper);
        drop(vad);
        for (item, t) in transcribed {
            let chunks = audio_chunks(&t, 600);
            if chunks.is_empty() {
                // Silence or no words: kept (so it is not transcribed again), nothing to search.
                done(self.store_textless(&item)?, out);
                continue;
            }
            pending.push(Pending { item, chunks });
        }
        Ok(())
    }

    /// Stores `item` with the chunks and vectors of the stored item `from` (same content, or
    /// a near-identical screenshot): no extraction, no model.
    /// Stores `item` with the chunks and vectors of item `from` (content `from_sha256`), read
    /// and written in one transaction; `None` when the twin is gone or changed meanwhile, so
    /// the caller extracts instead.
    fn reuse(&mut self, item: &NewItem, from: i64, from_sha256: &str) -> Result<Option<Outcome>, IngestError> {
        let copy = match item.kind {
            // The source's OCR lines (with boxes) come along.
            Kind::Image => CopyMeta::Keys(&["lines", "engine"]),
            // A recording's metadata (duration, language) is all derived from its bytes.
            Kind::Audio => CopyMeta::All,
            _ => CopyMeta::Keys(&[]),
        };
        let _s = stage("store");
        let Some((id, chunks)) = self.store.put_item_copy(item, from, from_sha256, copy)? else { return Ok(None) };
        Ok(Some(Outcome {
            path: PathBuf::from(&item.path),
            id: Some(id),
            kind: Some(item.kind),
            status: Status::Indexed,
            error: None,
            chunks,
        }))
    }

    fn prepare(&mut self, path: &Path, kind: Option<Kind>) -> Result<Prepared, IngestError> {
        let fail = |e: String| Ok(Prepared::Done(Outcome::failed(path.to_path_buf(), kind, e)));
        let meta = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return fail("not a regular file".into()),
            Err(e) => return fail(io_reason(&e)),
        };
        let kind = match kind {
            Some(Kind::Note) => Kind::Note,
            Some(k) => return fail(format!("{k} files are not supported by this build yet")),
            // Images go through `images`; only a caller passing one here lands on this arm.
            None => match path.extension().and_then(|e| e.to_str()) {
                Some(ext) => return fail(format!("unsupported file type '.{ext}'")),
                None => Kind::Note, // extension-less files are tried as text
            },
        };
        if meta.len() > self.config.max_note_size.0 {
            return fail(format!(
                "file too large: {} (limit {}; set MNEMA_MAX_FILE_SIZE)",
                mnema_core::ByteSize(meta.len()),
                self.config.max_note_size
            ));
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
                return Ok(Prepared::Done(Outcome::unchanged(path, it)));
            }
        }
        let text = match mnema_extract::note::note_text(bytes) {
            Ok(t) => t,
            Err(e) => return fail(e.to_string()),
        };
        drop(decode);
        let mtime = mtime(&meta);
        let item = NewItem {
            path: path_str.clone(),
            kind,
            sha256: sha.clone(),
            size: meta.len(),
            mtime,
            meta: serde_json::json!({ "title": title(&text), "chars": text.chars().count() }),
        };
        // Same content under another path: reuse its chunks and vectors.
        if let Some(twin) = self.store.item_by_content(&sha, kind, &path_str)? {
            if let Some(o) = self.reuse(&item, twin.id, &twin.sha256)? {
                return Ok(Prepared::Done(o));
            }
        }
        let spec = ChunkSpec { max_tokens: self.config.chunk_tokens, overlap: self.config.chunk_overlap };
        let embedder = self.embedder()?;
        let chunks = match chunk_text(embedder.tokens(), &text, spec) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return fail("no text to index".into()),
            Err(e) => return fail(e.to_string()),
        };
        Ok(Prepared::Embed(Pending { item, chunks }))
    }

    fn flush(
        &mut self,
        pending: &mut Vec<Pending>,
        out: &mut Vec<Outcome>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), IngestError> {
        if pending.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = pending.iter().flat_map(|p| p.chunks.iter().map(|c| c.text.as_str())).collect();
        let embedder = self.embedder()?;
        // Embedded a slice at a time so a long file reports how far it got.
        let mut vectors = Vec::with_capacity(texts.len());
        for slice in texts.chunks(PROGRESS_CHUNKS) {
            {
                let _s = stage("embed");
                vectors.extend(embedder.embed(slice, Role::Passage)?);
            }
            if texts.len() > PROGRESS_CHUNKS && vectors.len() < texts.len() {
                // The file the last embedded chunk belongs to, and how far into it.
                let mut before = 0;
                for p in pending.iter() {
                    if vectors.len() <= before + p.chunks.len() {
                        let path = Path::new(&p.item.path);
                        progress(Progress::Chunks { path, done: vectors.len() - before, total: p.chunks.len() });
                        break;
                    }
                    before += p.chunks.len();
                }
            }
        }
        let name = embedder.name().to_string();
        let mut it = vectors.into_iter();
        for p in pending.drain(..) {
            let vecs: Vec<Vec<f32>> = it.by_ref().take(p.chunks.len()).collect();
            let _s = stage("store");
            let id = self.store.put_item(&p.item, &p.chunks, &vecs, &name)?;
            let o = Outcome {
                path: PathBuf::from(&p.item.path),
                id: Some(id),
                kind: Some(p.item.kind),
                status: Status::Indexed,
                error: None,
                chunks: p.chunks.len(),
            };
            progress(Progress::File(&o));
            out.push(o);
        }
        Ok(())
    }
}

/// A file's bytes, metadata and sha256 (hex).
type ReadFile = (Vec<u8>, std::fs::Metadata, String);

/// Chunks embedded between two progress reports of a long file.
const PROGRESS_CHUNKS: usize = 256;

/// Most images OCRed in one batch.
const MAX_IMAGE_BATCH: usize = 32;
/// A batch's pixels (one byte each once prepared) stay within this share of the budget.
const IMAGE_BATCH_BUDGET_SHARE: u64 = 8;

/// Image files larger than this are refused before decoding.
pub const MAX_IMAGE_FILE: u64 = 64 << 20;

/// The file's metadata if it is a regular file within `max` bytes; `hint` says how to raise
/// the limit, when it can be.
fn checked_meta(path: &Path, max: u64, hint: &str) -> Result<std::fs::Metadata, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Err("not a regular file".into()),
        Err(e) => return Err(io_reason(&e)),
    };
    if meta.len() > max {
        return Err(format!("file too large: {} (limit {}{hint})", mnema_core::ByteSize(meta.len()), mnema_core::ByteSize(max)));
    }
    Ok(meta)
}

fn read_file(path: &Path, max: u64) -> Result<(Vec<u8>, std::fs::Metadata), String> {
    let meta = checked_meta(path, max, "")?;
    let _s = stage("decode");
    std::fs::read(path).map(|b| (b, meta)).map_err(|e| io_reason(&e))
}

fn mtime(meta: &std::fs::Metadata) -> i64 {
    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs() as i64)
}

enum Prepared {
    Done(Outcome),
    Embed(Pending),
}

/// A path with its bytes that are not UTF-8 written `\xNN` (and `\` as `\\`), quoted: two
/// names that differ only in such bytes read differently in messages.
fn escaped(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::from("\"");
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
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
