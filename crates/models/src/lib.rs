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
