//! Configuration resolved once, in one place: flags, then environment, then defaults.
//!
//! Every path mnema touches is derived here, so the CLI, the server and the tests agree on
//! where the database and the models are.

use crate::ByteSize;
use std::path::{Path, PathBuf};

/// Default embedding model: multilingual, so Russian and English meet in one vector space.
pub const DEFAULT_EMBEDDER: &str = "multilingual-e5-small";

/// The resolved settings of one mnema process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: database, vector index. `--home`, `MNEMA_HOME`, else `$XDG_DATA_HOME/mnema`.
    pub home: PathBuf,
    /// Where model files are looked for. `MNEMA_MODELS`, else the first existing of
    /// `<home>/models`, `./models`, the source checkout's `models/`; else `<home>/models`.
    pub models_dir: PathBuf,
    /// Embedding model name (`MNEMA_EMBEDDER`); must be one the catalog knows.
    pub embedder: String,
    /// Files larger than this are refused at ingest (`MNEMA_MAX_FILE_SIZE`, default 10 MiB for
    /// text: a note that large is almost surely not a note).
    pub max_note_size: ByteSize,
    /// Target chunk length in model tokens (default 256, at most 510 to fit the 512-token
    /// context with the special tokens).
    pub chunk_tokens: usize,
    /// Tokens shared by consecutive chunks (default 32) so a sentence cut at a boundary is
    /// still found whole in one of them.
    pub chunk_overlap: usize,
    /// Texts per embedding batch (default 32); bounds peak activation memory.
    pub embed_batch: usize,
    /// Speech-to-text model (`MNEMA_SPEECH_MODEL`, default `whisper-base`).
    pub speech_model: String,
    /// Languages spoken in the recordings (`MNEMA_LANGUAGES`, default `ru,en`): language
    /// detection chooses among these; `auto` lets it choose among all Whisper knows.
    pub languages: String,
    /// Audio files larger than this are refused (`MNEMA_MAX_AUDIO_SIZE`, default 2 GiB).
    pub max_audio_size: ByteSize,
}

impl Config {
    /// Resolves the configuration from explicit overrides and the environment.
    pub fn resolve(home: Option<PathBuf>, models: Option<PathBuf>) -> Config {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home =
            home.or_else(|| env("MNEMA_HOME")).unwrap_or_else(|| dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("mnema"));
        let home = absolute(&home);
        let models_dir = models.or_else(|| env("MNEMA_MODELS")).map(|p| absolute(&p)).unwrap_or_else(|| {
            let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
            [home.join("models"), absolute(Path::new("models")), checkout]
                .into_iter()
                .find(|p| p.is_dir())
                .unwrap_or_else(|| home.join("models"))
        });
        let embedder = std::env::var("MNEMA_EMBEDDER").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_EMBEDDER.to_string());
        let max_note_size = std::env::var("MNEMA_MAX_FILE_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(ByteSize(10 << 20));
        let var = |k: &str, d: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| d.to_string());
        let max_audio_size = std::env::var("MNEMA_MAX_AUDIO_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(ByteSize(2 << 30));
        Config {
            home,
            models_dir,
            embedder,
            max_note_size,
            chunk_tokens: 256,
            chunk_overlap: 32,
            embed_batch: 32,
            speech_model: var("MNEMA_SPEECH_MODEL", "whisper-base"),
            languages: var("MNEMA_LANGUAGES", "ru,en"),
            max_audio_size,
        }
    }

    /// A configuration rooted at `home` with models from `models_dir` (tests, benches).
    pub fn at(home: &Path, models_dir: &Path) -> Config {
        let mut c = Config::resolve(Some(home.to_path_buf()), Some(models_dir.to_path_buf()));
        c.embedder = DEFAULT_EMBEDDER.to_string();
        c
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.home.join("mnema.db")
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
