//! The JSON shapes of the CLI contract. Internal types convert into these, so the contract
//! stays stable while internals change. Field names and meanings are documented in README.

use mnema_core::{Hit, Item};
use serde::Serialize;

/// `mnema --json search`.
#[derive(Serialize)]
pub struct SearchOut<'a> {
    pub query: &'a str,
    pub mode: &'a str,
    pub hits: Vec<HitOut>,
    pub elapsed_ms: f64,
}

/// One search hit.
#[derive(Serialize)]
pub struct HitOut {
    pub id: i64,
    pub path: String,
    pub kind: &'static str,
    pub score: f64,
    pub snippet: String,
    pub start_ms: Option<i64>,
    pub chunk_id: i64,
    pub mtime: String,
    /// Images: `[x, y, w, h]` of the matching OCR lines.
    pub boxes: Vec<[u32; 4]>,
}

impl From<Hit> for HitOut {
    fn from(h: Hit) -> Self {
        HitOut {
            id: h.id,
            path: h.path,
            kind: h.kind.as_str(),
            score: (h.score * 1e6).round() / 1e6,
            snippet: h.snippet,
            start_ms: h.start_ms,
            chunk_id: h.chunk_id,
            mtime: mnema_core::time::format(h.mtime),
            boxes: h.boxes,
        }
    }
}

/// `mnema --json ingest`: one per file per line.
#[derive(Serialize)]
pub struct IngestOut {
    pub path: String,
    pub id: Option<i64>,
    pub kind: Option<&'static str>,
    pub status: &'static str,
    pub error: Option<String>,
    pub chunks: usize,
}

impl From<&mnema_ingest::Outcome> for IngestOut {
    fn from(o: &mnema_ingest::Outcome) -> Self {
        IngestOut {
            path: o.path.to_string_lossy().into_owned(),
            id: o.id,
            kind: o.kind.map(|k| k.as_str()),
            status: o.status.as_str(),
            error: o.error.clone(),
            chunks: o.chunks,
        }
    }
}

/// An item in `show` and listings.
#[derive(Serialize)]
pub struct ItemOut {
    pub id: i64,
    pub path: String,
    pub kind: &'static str,
    pub sha256: String,
    pub size: u64,
    pub mtime: String,
    pub indexed_at: String,
    pub meta: serde_json::Value,
}

impl From<Item> for ItemOut {
    fn from(i: Item) -> Self {
        ItemOut {
            id: i.id,
            path: i.path,
            kind: i.kind.as_str(),
            sha256: i.sha256,
            size: i.size,
            mtime: mnema_core::time::format(i.mtime),
            indexed_at: mnema_core::time::format(i.indexed_at),
            meta: i.meta,
        }
    }
}

/// A chunk in `show`.
#[derive(Serialize)]
pub struct ChunkOut {
    pub seq: u32,
    pub text: String,
    pub start: u32,
    pub end: u32,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

impl From<mnema_core::Chunk> for ChunkOut {
    fn from(c: mnema_core::Chunk) -> Self {
        ChunkOut { seq: c.seq, text: c.text, start: c.start, end: c.end, start_ms: c.start_ms, end_ms: c.end_ms }
    }
}

/// `mnema --json show`.
#[derive(Serialize)]
pub struct ShowOut {
    pub item: ItemOut,
    pub chunks: Vec<ChunkOut>,
}

/// One check of `mnema doctor`.
#[derive(Serialize, Clone)]
pub struct CheckOut {
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    pub detail: String,
    pub hint: Option<String>,
}

/// `mnema --json doctor`.
#[derive(Serialize)]
pub struct DoctorOut {
    pub ok: bool,
    pub checks: Vec<CheckOut>,
}

/// A model in `models list|verify`.
#[derive(Serialize)]
pub struct ModelOut {
    pub name: String,
    pub present: bool,
    pub verified: Option<bool>,
    pub files: Vec<ModelFileOut>,
}

/// A model file.
#[derive(Serialize)]
pub struct ModelFileOut {
    pub file: String,
    pub path: String,
    pub present: bool,
    pub size: u64,
    pub verified: Option<bool>,
    pub source: String,
}

/// `mnema --json status` and `GET /api/status`.
pub fn status(
    config: &mnema_core::Config,
    budget: u64,
    models: &mnema_models::manager::ModelManager,
    store: &dyn mnema_store::Store,
) -> Result<serde_json::Value, mnema_store::StoreError> {
    use mnema_models::manager::{available_memory, process_rss};
    let stats = store.stats()?;
    let (total, swap_total, swap_used) = match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            (sys.total_memory(), sys.total_swap(), sys.used_swap())
        }
        Err(_) => (0, 0, 0),
    };
    let loaded: Vec<_> = models
        .loaded()
        .iter()
        .map(|m| serde_json::json!({ "name": m.name, "bytes": m.cost, "in_use": m.in_use, "idle_s": m.idle.as_secs_f64() }))
        .collect();
    let events: Vec<_> = models
        .events()
        .iter()
        .map(|e| match e {
            mnema_models::manager::Event::Load { name, cost, elapsed } => {
                serde_json::json!({ "event": "load", "model": name, "bytes": cost, "ms": elapsed.as_secs_f64() * 1e3 })
            }
            mnema_models::manager::Event::Unload { name, reason } => {
                serde_json::json!({ "event": "unload", "model": name, "reason": reason })
            }
        })
        .collect();
    Ok(serde_json::json!({
        "memory_budget_bytes": budget,
        "models_budget_bytes": models.budget(),
        "models_used_bytes": models.used(),
        "models": loaded,
        "model_events": events,
        "process_rss_bytes": process_rss(),
        "machine": { "total_bytes": total, "available_bytes": available_memory(), "swap_total_bytes": swap_total, "swap_used_bytes": swap_used },
        "store": { "home": config.home, "items": stats.items, "chunks": stats.chunks, "db_bytes": stats.db_bytes, "embedder": store.embedder()?.map(|e| e.0) },
    }))
}

/// Catalog file statuses grouped per model (`models list|verify`, `GET /api/models`).
pub fn models(statuses: Vec<mnema_models::FileStatus>, hashed: bool) -> Vec<ModelOut> {
    let mut models: Vec<ModelOut> = Vec::new();
    for s in statuses {
        let f = ModelFileOut {
            file: s.entry.file.into(),
            path: s.path.to_string_lossy().into_owned(),
            present: s.present,
            size: s.size,
            verified: s.verified,
            source: s.entry.packages.into(),
        };
        match models.iter_mut().find(|m| m.name == s.entry.model) {
            Some(m) => m.files.push(f),
            None => models.push(ModelOut { name: s.entry.model.into(), present: true, verified: None, files: vec![f] }),
        }
    }
    for m in &mut models {
        m.present = m.files.iter().all(|f| f.present);
        m.verified = hashed.then(|| m.files.iter().all(|f| f.verified == Some(true)));
    }
    models
}

/// One engine's reading of one image (`mnema --json ocr`, `POST /api/ocr`).
#[derive(Serialize)]
pub struct OcrOut {
    pub path: String,
    pub engine: String,
    pub text: String,
    pub lines: Vec<mnema_extract::ocr::OcrLine>,
    pub elapsed_ms: f64,
    pub peak_rss_mb: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cer: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wer: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A recording's transcript (`mnema --json transcribe`, `POST /api/transcribe`).
#[derive(Serialize)]
pub struct TranscribeOut {
    pub path: String,
    pub model: String,
    pub language: Option<String>,
    pub text: String,
    pub segments: Vec<mnema_extract::whisper::Segment>,
    pub audio_ms: i64,
    pub elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Peak resident memory of this process so far, MiB to one decimal (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    (mnema_models::manager::status_kb("VmHWM:") as f64 / 1048576.0 * 10.0).round() / 10.0
}
