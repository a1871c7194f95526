//! Expanding the paths given to `ingest` into files.
//!
//! Folders are walked with `walkdir`, following symbolic links with its loop detection (a link
//! back to an ancestor is not entered again), and every file is kept once by its canonical
//! path, however many links lead to it. Hidden entries (`.name`) are skipped; entries come in
//! name order. Inside folders a file is taken when its content or extension names a kind
//! mnema reads, or when it has no extension and its start is UTF-8 text (a note); binary
//! extension-less files (programs, caches) are passed over without a line, as files with
//! unsupported extensions are. A file named explicitly is always attempted.

use crate::kind::{kind_of_extension, kind_of_file, looks_like_text};
use crate::Outcome;
use mnema_extract::note::io_reason;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Expands the given paths into the files to ingest, each once; paths that cannot be read
/// (missing, permission, too long) come back as failures naming them.
pub fn collect(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Outcome>) {
    let mut files = Vec::new();
    let mut failed = Vec::new();
    let mut seen = HashSet::new();
    let mut keep = |p: PathBuf, files: &mut Vec<PathBuf>| {
        if seen.insert(p.clone()) {
            files.push(p);
        }
    };
    for p in paths {
        match std::fs::metadata(p) {
            Err(e) => failed.push(Outcome::failed(absolute(p), None, io_reason(&e))),
            Ok(m) if m.is_dir() => {
                for r in walk(p) {
                    match r {
                        Ok(f) => keep(f, &mut files),
                        Err(o) => failed.push(o),
                    }
                }
            }
            Ok(_) => keep(absolute(p), &mut files),
        }
    }
    (files, failed)
}

/// The files under `dir` that ingest reads, canonical, in walk order (duplicates possible
/// when links lead to one file twice; [`collect`] drops them).
fn walk(dir: &Path) -> Vec<Result<PathBuf, Outcome>> {
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().as_encoded_bytes().starts_with(b"."));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.loop_ancestor().is_some() => {
                // A link back to a folder being walked: its files are reached the other way.
                tracing::debug!(
                    "{}: symbolic link loop, not followed",
                    e.path().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
                );
                continue;
            }
            Err(e) => {
                let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf());
                let reason = e.io_error().map(io_reason).unwrap_or_else(|| e.to_string().to_lowercase());
                out.push(Err(Outcome::failed(absolute(&path), None, reason)));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let p = entry.path();
        let wanted = match p.extension() {
            Some(_) => kind_of_extension(p).is_some(),
            None => kind_of_file(p).is_some() || looks_like_text(p),
        };
        if wanted {
            out.push(Ok(absolute(p)));
        }
    }
    out
}

/// The canonical path (links resolved) when it can be found, else the path made absolute.
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}
