//! Model files: which models mnema knows, where their files live, whether they are intact,
//! how to read the formats they ship in, and how to fetch the originals from the Hugging Face
//! hub.
//!
//! **Architecture Invariant:** model files are opened only through this crate; engines in
//! `extract` receive parsed weights or verified paths, never look for files themselves.
#![deny(missing_docs)]

pub mod catalog;
pub mod ct2;
pub mod e5q4;
pub mod hub;
pub mod manager;

pub use catalog::{catalog, CatalogFile, FileStatus, ModelFiles};

use std::path::PathBuf;

/// Errors about model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The catalog has no model by that name.
    #[error("unknown model '{0}' (see `mnema models list`)")]
    Unknown(String),
    /// A file the model needs is not there.
    #[error("model {model} is missing {path}: run scripts/setup.sh (or `mnema models fetch {model}`)")]
    Missing {
        /// The model's name.
        model: String,
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file does not match its recorded checksum.
    #[error("model file {path} is corrupt (sha256 mismatch): run scripts/setup.sh to fetch it again")]
    Checksum {
        /// The damaged file.
        path: PathBuf,
    },
    /// A file could not be parsed.
    #[error("model file {path} is unreadable: {reason}: run scripts/setup.sh to fetch it again")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Reading a file failed.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A model does not fit in the memory budget.
    #[error("model {model} needs about {} but the memory budget is {} ({detail})", mnema_core::ByteSize(*cost), mnema_core::ByteSize(*budget))]
    OverBudget {
        /// The model.
        model: String,
        /// Its estimated cost in bytes.
        cost: u64,
        /// The budget in bytes.
        budget: u64,
        /// What holds the rest, or how to fix it.
        detail: String,
    },
    /// Transient working memory (decoded pixels, buffers) does not fit in what the budget
    /// has left after the models in use and other reservations.
    #[error("{what} needs about {} of working memory but only {} of the {} memory budget is free ({detail})", mnema_core::ByteSize(*bytes), mnema_core::ByteSize(*free), mnema_core::ByteSize(*budget))]
    NoRoom {
        /// What the memory is for (e.g. `decoding scan.png`).
        what: String,
        /// Bytes asked for.
        bytes: u64,
        /// Bytes of the budget not charged when it was asked.
        free: u64,
        /// The budget in bytes.
        budget: u64,
        /// What holds the rest, or how to fix it.
        detail: String,
    },
    /// The machine lacks free memory for a model.
    #[error("not loading model {model} (about {}): only {} of memory available; loading would swap. Close other programs or lower the load", mnema_core::ByteSize(*cost), mnema_core::ByteSize(*available))]
    LowMemory {
        /// The model.
        model: String,
        /// Its estimated cost.
        cost: u64,
        /// What the machine has available.
        available: u64,
    },
    /// The hub could not deliver a file.
    #[error("hub download of {repo}/{file} failed: {reason}")]
    Hub {
        /// The hub repository.
        repo: String,
        /// The file in it.
        file: String,
        /// Why.
        reason: String,
    },
}

impl ModelError {
    /// What sort of failure this is: a missing or damaged file is
    /// [`ModelFile`](mnema_core::ErrorKind::ModelFile), a full budget or machine
    /// [`Busy`](mnema_core::ErrorKind::Busy), a full disk [`DiskFull`](mnema_core::ErrorKind::DiskFull).
    pub fn kind(&self) -> mnema_core::ErrorKind {
        use mnema_core::ErrorKind as K;
        match self {
            ModelError::Unknown(_) => K::Input,
            ModelError::Missing { .. } | ModelError::Checksum { .. } | ModelError::Format { .. } => K::ModelFile,
            ModelError::Io { source, .. } => K::of_io(source, K::ModelFile),
            ModelError::OverBudget { .. } | ModelError::NoRoom { .. } | ModelError::LowMemory { .. } => K::Busy,
            ModelError::Hub { .. } => K::Unavailable,
        }
    }
}

/// Sets glibc's threshold above which allocations get their own mapping (returned to the
/// system whole when freed). The model manager lowers it to 4 MiB while a model loads, so the
/// load's large temporary buffers do not stay behind as heap fragments (measured: a process
/// that reloaded the embedder three times idled at 145 MiB instead of 70), and raises it to
/// 32 MiB (glibc's own ceiling) for inference, where a low threshold costs page faults on
/// every window (Whisper: 38 s → 52 s for 10 minutes of audio).
pub fn set_mmap_threshold(bytes: usize) {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // A fixed threshold also fixes the trim threshold, which glibc otherwise raises with it:
    // keep it at twice the mapping threshold, as glibc does, so freeing a window's buffers
    // does not hand the heap's top back only to fault it in again.
    mallopt(M_MMAP_THRESHOLD, bytes);
    mallopt(M_TRIM_THRESHOLD, bytes * 2);
}

/// Caps glibc's malloc arenas at one per core plus the main one. With glibc's default (up
/// to 8 per core) the pages of a model freed on a worker thread stay pinned by a few live
/// allocations in that thread's arena: after an ingest that loaded the embedder three times
/// the idle process kept 73-145 MiB. With a single arena the OCR workers (Tesseract
/// allocates constantly) queue on its lock: ~10,000 context switches and 15% more wall time
/// for 60 screenshots, against ~40 switches with an arena per worker. Call it before other
/// threads start (the binary does, first thing).
pub fn use_few_malloc_arenas(cores: usize) {
    const M_ARENA_MAX: i32 = -8;
    mallopt(M_ARENA_MAX, (cores + 1).min(64));
}

/// glibc's `mallopt` (allocator tuning; values past `i32::MAX` are capped); nothing elsewhere.
fn mallopt(param: i32, value: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tuning; any value in range is valid.
        unsafe {
            mallopt(param, value.min(i32::MAX as usize) as i32);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (param, value);
}

/// Hands freed heap memory back to the operating system, so RSS drops after a model is
/// unloaded or a load's temporary buffers are gone (glibc keeps freed memory otherwise).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns unused pages of the allocator's own arenas.
        unsafe {
            malloc_trim(0);
        }
    }
}
