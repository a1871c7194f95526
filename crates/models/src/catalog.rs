//! The model catalog: the files each model needs, with their sha256, compiled in from
//! `catalog.tsv` (the same table `scripts/setup.sh` fetches from).

use crate::ModelError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// One file of one model, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFile {
    /// Model name, e.g. `multilingual-e5-small`.
    pub model: &'static str,
    /// File name inside the model's directory.
    pub file: &'static str,
    /// Registry packages it comes from (`+`-joined parts are concatenated).
    pub packages: &'static str,
    /// Expected sha256, hex.
    pub sha256: &'static str,
}

static CATALOG: LazyLock<Vec<CatalogFile>> = LazyLock::new(|| {
    include_str!("../catalog.tsv")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&'static str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "catalog.tsv row with {} fields: {l}", f.len());
            CatalogFile { model: f[0], file: f[1], packages: f[2], sha256: f[4] }
        })
        .collect()
});

/// Every file of every model.
pub fn catalog() -> &'static [CatalogFile] {
    &CATALOG
}

/// Model names in catalog order, without repeats.
pub fn model_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for f in catalog() {
        if !names.contains(&f.model) {
            names.push(f.model);
        }
    }
    names
}

/// The state of one file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// The catalog entry.
    pub entry: CatalogFile,
    /// Where it should be.
    pub path: PathBuf,
    /// Whether the file exists.
    pub present: bool,
    /// Size in bytes, when present.
    pub size: u64,
    /// Checksum verdict, when it was computed.
    pub verified: Option<bool>,
}

/// The files of one model inside a models directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The model's name.
    pub model: String,
    /// `<models_dir>/<model>`.
    pub dir: PathBuf,
}

impl ModelFiles {
    /// Locates a model; fails with a hint at the setup script when a required file is absent.
    /// `any_of` lists alternatives of which one must exist (e.g. q4 or safetensors weights).
    pub fn require(models_dir: &Path, model: &str, required: &[&str], any_of: &[&str]) -> Result<ModelFiles, ModelError> {
        let dir = models_dir.join(model);
        for f in required {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(ModelError::Missing { model: model.into(), path: p });
            }
        }
        if !any_of.is_empty() && !any_of.iter().any(|f| dir.join(f).is_file()) {
            return Err(ModelError::Missing { model: model.into(), path: dir.join(any_of[0]) });
        }
        Ok(ModelFiles { model: model.into(), dir })
    }

    /// The path of one file of the model (whether or not it exists).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Checks the catalog files of `model` (all models when `None`) in `models_dir`.
/// With `hash`, every present file is read and its sha256 compared.
pub fn check(models_dir: &Path, model: Option<&str>, hash: bool) -> Result<Vec<FileStatus>, ModelError> {
    if let Some(m) = model {
        if !model_names().contains(&m) {
            return Err(ModelError::Unknown(m.into()));
        }
    }
    let mut out = Vec::new();
    for e in catalog().iter().filter(|e| model.is_none_or(|m| m == e.model)) {
        let path = models_dir.join(e.model).join(e.file);
        let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file());
        let verified = match (&meta, hash) {
            (Some(_), true) => Some(sha256_file(&path)? == e.sha256),
            _ => None,
        };
        out.push(FileStatus { entry: e.clone(), present: meta.is_some(), size: meta.map_or(0, |m| m.len()), verified, path });
    }
    Ok(out)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_rows_are_well_formed() {
        assert!(catalog().len() >= 8);
        for e in catalog() {
            assert_eq!(e.sha256.len(), 64, "{e:?}");
            assert!(e.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert!(model_names().contains(&"multilingual-e5-small"));
    }

    #[test]
    fn detects_missing_and_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("mnema-cat-{}", std::process::id()));
        let m = dir.join("all-minilm-l6-v2");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("config.json"), b"{}").unwrap();
        let st = check(&dir, Some("all-minilm-l6-v2"), true).unwrap();
        let cfg = st.iter().find(|s| s.entry.file == "config.json").unwrap();
        assert!(cfg.present);
        assert_eq!(cfg.verified, Some(false));
        assert!(st.iter().filter(|s| s.entry.file != "config.json").all(|s| !s.present && s.verified.is_none()));
        let err = ModelFiles::require(&dir, "all-minilm-l6-v2", &["tokenizer.json"], &[]).unwrap_err();
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
        assert!(matches!(check(&dir, Some("nope"), false), Err(ModelError::Unknown(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
