//! mnema's shared vocabulary: what an item, a chunk and a hit are, how configuration is
//! resolved, and the text analysis (word splitting + stemming) both indexing and querying use.
//!
//! **Architecture Invariant:** this crate does no IO beyond reading environment variables and
//! checking whether a directory exists; it has no heavy dependencies, so every other crate can
//! depend on it.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod profile;
pub mod size;
pub mod text;
pub mod time;

pub use config::Config;
pub use error::ErrorKind;
pub use size::ByteSize;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What sort of source an item came from; decides which extractor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Markdown or plain-text notes.
    Note,
    /// Screenshots and photos (text from OCR).
    Image,
    /// Voice memos and recordings (text from speech recognition).
    Audio,
}

impl Kind {
    /// All kinds, in display order.
    pub const ALL: [Kind; 3] = [Kind::Note, Kind::Image, Kind::Audio];

    /// The lowercase name used in the database, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Note => "note",
            Kind::Image => "image",
            Kind::Audio => "audio",
        }
    }

    /// Guesses the kind from a file extension (case-insensitive); `None` when unsupported.
    pub fn from_extension(ext: &str) -> Option<Kind> {
        match ext.to_ascii_lowercase().as_str() {
            "md" | "markdown" | "txt" | "text" | "org" | "rst" => Some(Kind::Note),
            "png" | "jpg" | "jpeg" | "webp" | "bmp" | "tif" | "tiff" | "gif" | "heic" => Some(Kind::Image),
            "wav" | "mp3" | "m4a" | "aac" | "ogg" | "opus" | "flac" => Some(Kind::Audio),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "note" | "notes" | "text" => Ok(Kind::Note),
            "image" | "images" | "screenshot" => Ok(Kind::Image),
            "audio" | "voice" => Ok(Kind::Audio),
            other => Err(format!("unknown kind '{other}' (expected note, image or audio)")),
        }
    }
}

/// A stored source file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// Stable id, assigned by the store.
    pub id: i64,
    /// Absolute path of the file when it was ingested.
    pub path: String,
    /// What sort of source it is.
    pub kind: Kind,
    /// sha256 of the file's bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// File modification time, Unix seconds.
    pub mtime: i64,
    /// When mnema indexed it, Unix seconds.
    pub indexed_at: i64,
    /// Free-form metadata (engine names, language, dimensions...).
    pub meta: serde_json::Value,
}

/// A piece of an item's text that is indexed and embedded on its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chunk {
    /// Position within the item, from 0.
    pub seq: u32,
    /// The text as the user would read it.
    pub text: String,
    /// Byte offset of the chunk in the item's extracted text.
    pub start: u32,
    /// Byte offset just past the chunk's end.
    pub end: u32,
    /// For audio: where the chunk starts in the recording, milliseconds.
    pub start_ms: Option<i64>,
    /// For audio: where the chunk ends in the recording, milliseconds.
    pub end_ms: Option<i64>,
}

/// How a query is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Keyword and semantic results fused by reciprocal rank.
    #[default]
    Hybrid,
    /// Cosine similarity of embeddings only.
    Semantic,
    /// Stemmed full-text search with BM25 only.
    Keyword,
}

impl FromStr for SearchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hybrid" => Ok(SearchMode::Hybrid),
            "semantic" => Ok(SearchMode::Semantic),
            "keyword" => Ok(SearchMode::Keyword),
            other => Err(format!("unknown mode '{other}' (expected hybrid, semantic or keyword)")),
        }
    }
}

/// Restrictions applied to every search mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Only these kinds (empty: all).
    pub kinds: Vec<Kind>,
    /// Only items whose path starts with this prefix.
    pub path_prefix: Option<String>,
    /// Only items modified at or after this Unix time.
    pub since: Option<i64>,
    /// Only items modified before this Unix time.
    pub until: Option<i64>,
}

impl Filters {
    /// True when nothing is restricted.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty() && self.path_prefix.is_none() && self.since.is_none() && self.until.is_none()
    }
}

/// One search result: a chunk of an item with its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The item's id.
    pub id: i64,
    /// The chunk's id (unique across the store).
    pub chunk_id: i64,
    /// The item's absolute path.
    pub path: String,
    /// The item's kind.
    pub kind: Kind,
    /// Higher is better; comparable only within one result list.
    pub score: f64,
    /// A short piece of the chunk around the match, matched words in `[` `]`.
    pub snippet: String,
    /// For audio: where the matching chunk starts, milliseconds.
    pub start_ms: Option<i64>,
    /// The item's modification time, Unix seconds.
    pub mtime: i64,
    /// For images: boxes `[x, y, w, h]` of the OCR lines that match (all lines of the chunk
    /// when no word matches).
    pub boxes: Vec<[u32; 4]>,
}
