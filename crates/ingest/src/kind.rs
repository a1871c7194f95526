//! What a file is, decided by its content: the first bytes name the format (PNG, JPEG, GIF,
//! WebP, BMP, TIFF, HEIC for images; RIFF-WAVE, ID3, an MP3 frame, an MP4 `ftyp` box, Ogg,
//! FLAC for recordings). The extension decides only when the content names no format we know.

use mnema_core::Kind;
use std::io::Read;
use std::path::Path;

/// Bytes read to recognise a format.
const SNIFF: usize = 16;

/// The kind the leading bytes of a file announce, if any.
pub fn kind_of_bytes(b: &[u8]) -> Option<Kind> {
    let at = |i: usize, m: &[u8]| b.get(i..i + m.len()) == Some(m);
    if at(0, b"\x89PNG\r\n\x1a\n")
        || at(0, b"\xff\xd8\xff")
        || at(0, b"GIF87a")
        || at(0, b"GIF89a")
        || (at(0, b"RIFF") && at(8, b"WEBP"))
        || at(0, b"II*\0")
        || at(0, b"MM\0*")
        || is_bmp(b)
    {
        return Some(Kind::Image);
    }
    if at(4, b"ftyp") {
        // ISO media: HEIF/AVIF brands are still images, the rest (M4A, MP4, 3GP) recordings.
        let brand = b.get(8..12).unwrap_or_default();
        let image = [b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"].iter().any(|m| brand == *m);
        return Some(if image { Kind::Image } else { Kind::Audio });
    }
    if (at(0, b"RIFF") && at(8, b"WAVE")) || at(0, b"ID3") || at(0, b"OggS") || at(0, b"fLaC") || is_mpeg_frame(b) {
        return Some(Kind::Audio);
    }
    None
}

/// "BM", then a size and an info-header size BMP files actually use (two letters alone would
/// also start a text note).
fn is_bmp(b: &[u8]) -> bool {
    b.len() >= 18 && b.starts_with(b"BM") && [12, 40, 52, 56, 64, 108, 124].contains(&u32::from_le_bytes([b[14], b[15], b[16], b[17]]))
}

/// An MPEG audio frame header (MP3 without ID3 tag, ADTS AAC): 11 sync bits, a valid layer or
/// ADTS, a valid bitrate and sample rate index.
fn is_mpeg_frame(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
        return false;
    }
    let layer = (b[1] >> 1) & 3;
    if layer == 0 {
        // ADTS (AAC): version bits, layer 0, sampling index below 13.
        return b[1] & 0xF6 == 0xF0 && (b[2] >> 2) & 0xF < 13;
    }
    let version = (b[1] >> 3) & 3;
    let bitrate = b[2] >> 4;
    let rate = (b[2] >> 2) & 3;
    version != 1 && bitrate != 0 && bitrate != 15 && rate != 3
}

/// The kind named by the extension alone.
pub fn kind_of_extension(p: &Path) -> Option<Kind> {
    p.extension().and_then(|e| e.to_str()).and_then(Kind::from_extension)
}

/// The file's kind: its content when that names a format, else its extension. `None` when
/// neither says (an unsupported or extension-less file) or it cannot be read.
pub fn kind_of_file(p: &Path) -> Option<Kind> {
    let mut head = [0u8; SNIFF];
    let n = std::fs::File::open(p).and_then(|mut f| read_up_to(&mut f, &mut head)).unwrap_or(0);
    kind_of_bytes(&head[..n]).or_else(|| kind_of_extension(p))
}

/// Whether an extension-less file found in a folder looks like a text note: its first 8 KiB
/// have no NUL byte and are UTF-8 (up to a character cut at the end).
pub fn looks_like_text(p: &Path) -> bool {
    let mut head = vec![0u8; 8 << 10];
    let Ok(n) = std::fs::File::open(p).and_then(|mut f| read_up_to(&mut f, &mut head)) else { return false };
    let head = &head[..n];
    if n == 0 || head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // A character cut by the 8 KiB window is fine; an invalid byte is not.
        Err(e) => e.error_len().is_none(),
    }
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_content() {
        assert_eq!(kind_of_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(Kind::Image));
        assert_eq!(kind_of_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some(Kind::Image));
        assert_eq!(kind_of_bytes(b"RIFF\0\0\0\0WEBPVP8 "), Some(Kind::Image));
        assert_eq!(kind_of_bytes(b"\0\0\0\x18ftypheic\0\0\0\0"), Some(Kind::Image));
        assert_eq!(kind_of_bytes(b"RIFF\0\0\0\0WAVEfmt "), Some(Kind::Audio));
        assert_eq!(kind_of_bytes(b"\0\0\0\x20ftypM4A \0\0\0\0"), Some(Kind::Audio));
        assert_eq!(kind_of_bytes(b"ID3\x04\0\0\0\0\0\0"), Some(Kind::Audio));
        assert_eq!(kind_of_bytes(&[0xFF, 0xFB, 0x90, 0x64]), Some(Kind::Audio), "MPEG-1 layer III frame");
        assert_eq!(kind_of_bytes(&[0xFF, 0xF1, 0x50, 0x80]), Some(Kind::Audio), "ADTS AAC");
        assert_eq!(kind_of_bytes(b"OggS\0\x02"), Some(Kind::Audio));
        assert_eq!(kind_of_bytes(b"fLaC\0\0\0\x22"), Some(Kind::Audio));
        assert_eq!(kind_of_bytes(b"BMW service notes, spring"), None, "two letters are not a bitmap");
        assert_eq!(kind_of_bytes("# Заметка".as_bytes()), None);
        assert_eq!(kind_of_bytes(b""), None);
    }
}
