//! Reading notes (Markdown, plain text): UTF-8 only, text only, bounded size.

use crate::{ExtractError, Result};
use mnema_core::ByteSize;
use std::path::Path;

/// Reads a note file, refusing what is not a usable text: binary data, invalid UTF-8, an
/// empty (or whitespace-only) file, or a file larger than `max`.
pub fn read_note(path: &Path, max: ByteSize) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| ExtractError::BadInput(io_reason(&e)))?;
    if meta.len() > max.0 {
        return Err(ExtractError::BadInput(format!(
            "file too large: {} (limit {} for notes; set MNEMA_MAX_FILE_SIZE)",
            ByteSize(meta.len()),
            max
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| ExtractError::BadInput(io_reason(&e)))?;
    note_text(bytes)
}

/// Validates note bytes and returns the text (a leading BOM removed).
pub fn note_text(bytes: Vec<u8>) -> Result<String> {
    if bytes.contains(&0) {
        return Err(ExtractError::BadInput("binary file (contains NUL bytes), not a text note".into()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| ExtractError::BadInput(format!("not valid UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ExtractError::BadInput("empty file (no text to index)".into()));
    }
    Ok(text)
}

/// A short, lowercase reason for an IO error.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unusable_notes_with_reasons() {
        let err = |b: &[u8]| note_text(b.to_vec()).unwrap_err().to_string();
        assert!(err(b"abc\0def").contains("binary"));
        assert!(err(&[0x41, 0xC3, 0x28]).contains("UTF-8"));
        assert!(err(b"   \n\t").contains("empty"));
        assert!(err(b"").contains("empty"));
        assert_eq!(note_text("\u{feff}Привет".as_bytes().to_vec()).unwrap(), "Привет");
    }

    #[test]
    fn enforces_size_limit_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("mnema-note-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("big.txt");
        std::fs::write(&p, "a".repeat(2048)).unwrap();
        let e = read_note(&p, ByteSize(1024)).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert_eq!(read_note(&p, ByteSize(4096)).unwrap().len(), 2048);
        let e = read_note(&dir.join("nope.md"), ByteSize(4096)).unwrap_err().to_string();
        assert_eq!(e, "no such file or directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
