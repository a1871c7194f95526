//! Configuration resolved once, in one place: flags, then environment, then defaults.
//!
//! Every path mnema touches is derived here, so the CLI, the server and the tests agree on
//! where the database and the models are. Every `MNEMA_*` setting is read and checked here,
//! at start: a malformed value is an error naming the variable and the accepted values,
//! never a silent fallback to the default.

use crate::ByteSize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default embedding model: multilingual, so Russian and English meet in one vector space.
pub const DEFAULT_EMBEDDER: &str = "multilingual-e5-small";

/// Names of the embedding models mnema can load.
pub const EMBEDDERS: [&str; 2] = ["multilingual-e5-small", "all-minilm-l6-v2"];

/// Names of the speech-to-text models mnema can load.
pub const SPEECH_MODELS: [&str; 1] = ["whisper-base"];

/// Whisper's language codes, in token order (50259 = en …).
pub const SPEECH_LANGUAGES: [&str; 100] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi", "vi", "he", "uk",
    "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn",
    "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn",
    "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my",
    "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
];

/// Image preparation before OCR (`MNEMA_OCR_PREPROCESS`).
pub const OCR_PREPROCESS: [&str; 4] = ["none", "invert", "upscale", "all"];

/// Arithmetic of the speech model (`MNEMA_SPEECH_DTYPE`).
pub const SPEECH_DTYPES: [&str; 4] = ["auto", "bf16", "q8", "f32"];

/// Arithmetic of the large products (`MNEMA_DENSE`).
pub const DENSE_MODES: [&str; 3] = ["auto", "bf16", "f32"];

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: {expected}")]
pub struct ConfigError {
    /// The environment variable (or flag).
    pub var: &'static str,
    /// The value found.
    pub value: String,
    /// What is accepted.
    pub expected: String,
}

impl ConfigError {
    /// Always [`Input`](crate::ErrorKind::Input): the user's setting is wrong.
    pub fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::Input
    }
}

/// The resolved settings of one mnema process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: database, vector index. `--home`, `MNEMA_HOME`, else `$XDG_DATA_HOME/mnema`.
    pub home: PathBuf,
    /// Where model files are looked for. `MNEMA_MODELS`, else the first existing of
    /// `<home>/models`, `./models`, the source checkout's `models/`; else `<home>/models`.
    pub models_dir: PathBuf,
    /// Embedding model name (`MNEMA_EMBEDDER`, one of [`EMBEDDERS`]).
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
    /// Models nobody used for this long are unloaded (`MNEMA_IDLE_UNLOAD`, default 5 minutes:
    /// `300`, `90s`, `500ms`, `5m`, `1h`; `off` keeps them loaded).
    pub idle_unload: Option<Duration>,
    /// Image preparation before OCR (`MNEMA_OCR_PREPROCESS`, one of [`OCR_PREPROCESS`],
    /// default `invert`).
    pub ocr_preprocess: String,
    /// Arithmetic of the speech model (`MNEMA_SPEECH_DTYPE`, one of [`SPEECH_DTYPES`],
    /// default `auto`: bfloat16 where the CPU has AVX-512 BF16, else 8-bit).
    pub speech_dtype: String,
    /// Arithmetic of the large products (`MNEMA_DENSE`, one of [`DENSE_MODES`], default
    /// `auto`: bfloat16 where the CPU has AVX-512 BF16, else f32).
    pub dense: String,
    /// The ONNX Runtime library (`ORT_DYLIB_PATH`, the variable ONNX Runtime's own loaders
    /// read), else `None`: the `onnxruntime` model files.
    pub onnxruntime: Option<PathBuf>,
}

/// An environment variable's value; unset and blank are the same (the default).
fn env_value(k: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(k) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_string())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(ConfigError { var: k, value: v.to_string_lossy().into_owned(), expected: "the value is not valid UTF-8".into() })
        }
    }
}

/// Every `MNEMA_*` variable mnema reads (besides `MNEMA_MEMORY_BUDGET`, a flag's
/// environment form, and `MNEMA_LOG`, the log filter, both checked by the CLI).
pub const SETTINGS: [&str; 13] = [
    "MNEMA_HOME",
    "MNEMA_MODELS",
    "MNEMA_EMBEDDER",
    "MNEMA_MAX_FILE_SIZE",
    "MNEMA_MAX_AUDIO_SIZE",
    "MNEMA_SPEECH_MODEL",
    "MNEMA_LANGUAGES",
    "MNEMA_IDLE_UNLOAD",
    "MNEMA_OCR_PREPROCESS",
    "MNEMA_SPEECH_DTYPE",
    "MNEMA_DENSE",
    "MNEMA_TOKEN",
    "MNEMA_MEMORY_BUDGET",
];

/// One of `accepted` (case-insensitive), lowercased.
fn one_of(var: &'static str, value: Option<String>, accepted: &[&str], default: &str) -> Result<String, ConfigError> {
    let Some(v) = value else { return Ok(default.to_string()) };
    let lower = v.to_lowercase();
    if accepted.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(ConfigError { var, value: v, expected: format!("expected one of {}", accepted.join(", ")) })
    }
}

/// A positive size such as `10MiB`.
fn size(var: &'static str, value: Option<String>, default: ByteSize) -> Result<ByteSize, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match v.parse::<ByteSize>() {
        Ok(b) if b.0 > 0 => Ok(b),
        _ => Err(ConfigError { var, value: v, expected: "expected a size above zero such as 512KiB, 10MiB or 2GiB".into() }),
    }
}

/// `auto`, or languages Whisper knows separated by commas (`ru,en`).
pub fn check_languages(var: &'static str, value: Option<String>) -> Result<String, ConfigError> {
    let Some(v) = value else { return Ok("ru,en".to_string()) };
    let lower = v.to_lowercase();
    if lower == "auto" {
        return Ok(lower);
    }
    let codes: Vec<&str> = lower.split(',').map(str::trim).collect();
    match codes.iter().find(|c| !SPEECH_LANGUAGES.contains(c)) {
        None => Ok(codes.join(",")),
        Some(bad) => Err(ConfigError {
            var,
            value: v.clone(),
            expected: format!(
                "'{bad}' is not a language Whisper knows: expected auto or codes separated by commas such as ru,en (ISO 639-1)"
            ),
        }),
    }
}

/// A duration: `300` (seconds), `90s`, `500ms`, `5m`, `1h`; `off`, `never` or `0`: none.
pub fn parse_duration(s: &str) -> Option<Option<Duration>> {
    let t = s.trim().to_lowercase();
    if matches!(t.as_str(), "off" | "never" | "0") {
        return Some(None);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero()).map(Some)
}

impl Config {
    /// Resolves the configuration from explicit overrides and the environment, checking
    /// every setting: the first malformed one is the error.
    pub fn resolve(home: Option<PathBuf>, models: Option<PathBuf>) -> Result<Config, ConfigError> {
        let path = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home =
            home.or_else(|| path("MNEMA_HOME")).unwrap_or_else(|| dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("mnema"));
        let models = models.or_else(|| path("MNEMA_MODELS"));
        let mut c = Config::defaults(&home, models.as_deref());
        c.embedder = one_of("MNEMA_EMBEDDER", env_value("MNEMA_EMBEDDER")?, &EMBEDDERS, DEFAULT_EMBEDDER)?;
        c.max_note_size = size("MNEMA_MAX_FILE_SIZE", env_value("MNEMA_MAX_FILE_SIZE")?, c.max_note_size)?;
        c.max_audio_size = size("MNEMA_MAX_AUDIO_SIZE", env_value("MNEMA_MAX_AUDIO_SIZE")?, c.max_audio_size)?;
        c.speech_model = one_of("MNEMA_SPEECH_MODEL", env_value("MNEMA_SPEECH_MODEL")?, &SPEECH_MODELS, &c.speech_model)?;
        c.languages = check_languages("MNEMA_LANGUAGES", env_value("MNEMA_LANGUAGES")?)?;
        if let Some(v) = env_value("MNEMA_IDLE_UNLOAD")? {
            c.idle_unload = parse_duration(&v).ok_or_else(|| ConfigError {
                var: "MNEMA_IDLE_UNLOAD",
                value: v.clone(),
                expected: "expected a duration such as 300, 90s, 500ms, 5m or 1h, or off".into(),
            })?;
        }
        c.ocr_preprocess = one_of("MNEMA_OCR_PREPROCESS", env_value("MNEMA_OCR_PREPROCESS")?, &OCR_PREPROCESS, &c.ocr_preprocess)?;
        c.speech_dtype = one_of("MNEMA_SPEECH_DTYPE", env_value("MNEMA_SPEECH_DTYPE")?, &SPEECH_DTYPES, &c.speech_dtype)?;
        c.dense = one_of("MNEMA_DENSE", env_value("MNEMA_DENSE")?, &DENSE_MODES, &c.dense)?;
        c.onnxruntime = path("ORT_DYLIB_PATH");
        // Read elsewhere (the server, the flag parser), but a value that is not text is caught here.
        env_value("MNEMA_TOKEN")?;
        Ok(c)
    }

    /// A configuration rooted at `home` with models from `models_dir` and every other setting
    /// at its default, whatever the environment says (tests, benches).
    pub fn at(home: &Path, models_dir: &Path) -> Config {
        Config::defaults(home, Some(models_dir))
    }

    fn defaults(home: &Path, models: Option<&Path>) -> Config {
        let home = absolute(home);
        let models_dir = models.map(absolute).unwrap_or_else(|| {
            let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
            [home.join("models"), absolute(Path::new("models")), checkout]
                .into_iter()
                .find(|p| p.is_dir())
                .unwrap_or_else(|| home.join("models"))
        });
        Config {
            home,
            models_dir,
            embedder: DEFAULT_EMBEDDER.to_string(),
            max_note_size: ByteSize(10 << 20),
            chunk_tokens: 256,
            chunk_overlap: 32,
            embed_batch: 32,
            speech_model: SPEECH_MODELS[0].to_string(),
            languages: "ru,en".to_string(),
            max_audio_size: ByteSize(2 << 30),
            idle_unload: Some(Duration::from_secs(300)),
            ocr_preprocess: "invert".to_string(),
            speech_dtype: "auto".to_string(),
            dense: "auto".to_string(),
            onnxruntime: None,
        }
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.home.join("mnema.db")
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The environment is process-wide: tests that set it run one at a time.
    static ENV: Mutex<()> = Mutex::new(());

    /// Resolves with `vars` set (and every other setting unset).
    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for k in SETTINGS {
            // The lock above serialises every test here that touches the environment.
            std::env::remove_var(k);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let r = Config::resolve(Some("/tmp/mnema-config-test".into()), Some("/tmp/mnema-config-test/models".into()));
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        r
    }

    #[test]
    fn each_malformed_setting_is_an_error_naming_the_variable_and_the_accepted_values() {
        let cases: &[(&str, &str, &str)] = &[
            ("MNEMA_MAX_FILE_SIZE", "abc", "512KiB"),
            ("MNEMA_MAX_FILE_SIZE", "0", "above zero"),
            ("MNEMA_MAX_AUDIO_SIZE", "12 parsecs", "2GiB"),
            ("MNEMA_OCR_PREPROCESS", "x", "none, invert, upscale, all"),
            ("MNEMA_LANGUAGES", "xx", "'xx'"),
            ("MNEMA_LANGUAGES", "ru,,en", "auto or codes"),
            ("MNEMA_LANGUAGES", "русский", "ru,en"),
            ("MNEMA_EMBEDDER", "unknown", "multilingual-e5-small, all-minilm-l6-v2"),
            ("MNEMA_SPEECH_MODEL", "whisper-huge", "whisper-base"),
            ("MNEMA_SPEECH_DTYPE", "f16", "auto, bf16, q8, f32"),
            ("MNEMA_DENSE", "fast", "auto, bf16, f32"),
            ("MNEMA_IDLE_UNLOAD", "soon", "5m"),
            ("MNEMA_IDLE_UNLOAD", "-3s", "5m"),
        ];
        for (var, value, accepted) in cases {
            let err = with(&[(var, value)]).expect_err(&format!("{var}={value} was accepted"));
            assert_eq!(err.var, *var);
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("{var}=")), "{msg}");
            assert!(msg.contains(value) && msg.contains(accepted), "{msg}");
            assert!(!msg.contains('\n'));
            assert_eq!(err.kind(), crate::ErrorKind::Input);
        }
    }

    #[test]
    fn good_settings_are_taken_and_blank_means_default() {
        let c = with(&[
            ("MNEMA_MAX_FILE_SIZE", "1KiB"),
            ("MNEMA_LANGUAGES", " RU, en "),
            ("MNEMA_OCR_PREPROCESS", "All"),
            ("MNEMA_IDLE_UNLOAD", "2s"),
            ("MNEMA_DENSE", "f32"),
            ("MNEMA_SPEECH_DTYPE", ""),
            ("MNEMA_EMBEDDER", "all-minilm-l6-v2"),
        ])
        .unwrap();
        assert_eq!(c.max_note_size, ByteSize(1024));
        assert_eq!(c.languages, "ru,en");
        assert_eq!(c.ocr_preprocess, "all");
        assert_eq!(c.idle_unload, Some(Duration::from_secs(2)));
        assert_eq!(c.dense, "f32");
        assert_eq!(c.speech_dtype, "auto");
        assert_eq!(c.embedder, "all-minilm-l6-v2");
        let d = with(&[]).unwrap();
        assert_eq!((d.max_note_size, d.languages.as_str(), d.idle_unload), (ByteSize(10 << 20), "ru,en", Some(Duration::from_secs(300))));
        assert_eq!(with(&[("MNEMA_IDLE_UNLOAD", "off")]).unwrap().idle_unload, None);
        assert_eq!(with(&[("MNEMA_LANGUAGES", "auto")]).unwrap().languages, "auto");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Some(Some(Duration::from_secs(300))));
        assert_eq!(parse_duration("500ms"), Some(Some(Duration::from_millis(500))));
        assert_eq!(parse_duration("1.5m"), Some(Some(Duration::from_secs(90))));
        assert_eq!(parse_duration("never"), Some(None));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration(""), None);
    }
}
