//! Image decoding for OCR: format from content (not extension), size limits checked before
//! pixels are allocated, EXIF orientation applied, GIFs read at their first frame.

use crate::{ExtractError, Result};
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits};
use std::io::Cursor;
use std::path::Path;

/// Largest side accepted, in pixels (a 16k screenshot is already extreme).
pub const MAX_SIDE: u32 = 16_384;
/// Largest image accepted, in pixels (about 64 MP: 256 MB as RGBA).
pub const MAX_PIXELS: u64 = 64_000_000;
/// Smallest side that can hold a line of text.
pub const MIN_SIDE: u32 = 8;

fn bad(s: impl Into<String>) -> ExtractError {
    ExtractError::BadInput(s.into())
}

/// Decodes an image file, refusing what cannot be or should not be decoded.
pub fn decode_image(path: &Path, max_file: u64) -> Result<DynamicImage> {
    let meta = std::fs::metadata(path).map_err(|e| bad(crate::note::io_reason(&e)))?;
    if meta.len() == 0 {
        return Err(bad("empty file (zero bytes)"));
    }
    if meta.len() > max_file {
        return Err(bad(format!("file too large: {} (limit {})", mnema_core::ByteSize(meta.len()), mnema_core::ByteSize(max_file))));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(crate::note::io_reason(&e)))?;
    decode_bytes(&bytes, path.extension().and_then(|e| e.to_str()).unwrap_or(""))
}

/// Decodes image bytes; `ext` only improves the error for formats this build cannot read.
pub fn decode_bytes(bytes: &[u8], ext: &str) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(bad("empty file (zero bytes)"));
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        let heic = matches!(ext.to_ascii_lowercase().as_str(), "heic" | "heif")
            || bytes.get(4..12).is_some_and(|b| b.starts_with(b"ftyphei") || b.starts_with(b"ftypmif"));
        return Err(bad(if heic {
            "unsupported format: HEIC/HEIF cannot be decoded by this build (convert to JPEG or PNG)".to_string()
        } else {
            "not an image this build can read (expected PNG, JPEG, WebP, BMP, TIFF or GIF)".to_string()
        }));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| bad(format!("corrupt image: {e}")))?;
    check_size(w, h)?;
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4 + (16 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(format!("corrupt image: {e}")))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(format!("corrupt or truncated image: {e}")))?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn check_size(w: u32, h: u32) -> Result<()> {
    if w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        return Err(bad(format!(
            "image too large to decode safely: {w}×{h} (limits: {MAX_SIDE} px per side, {} MP)",
            MAX_PIXELS / 1_000_000
        )));
    }
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(bad(format!("image too small to hold text: {w}×{h}")));
    }
    Ok(())
}

/// What decoding an image holds in memory, read from its header alone (no pixel is
/// decoded), to charge it to the memory budget first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeCost {
    /// Pixels of the image.
    pub pixels: u64,
    /// Bytes held at the peak of decoding and preparing it: the encoded file (read whole), the
    /// decoded image in its own sample format (16-bit RGBA is 8 bytes a pixel, 32-bit float
    /// RGB 12; twice for TIFF, whose decoder copies its buffer), a rotated copy when EXIF
    /// orientation turns it, its grey copy and the prepared page.
    pub bytes: u64,
}

impl DecodeCost {
    /// Bytes of its prepared page: one a pixel, four when `steps` enlarge small pages 2×.
    pub fn page_bytes(&self, steps: Preprocess) -> u64 {
        self.pixels * if steps.upscale { 4 } else { 1 }
    }

    /// Why the image cannot be decoded within `budget` (the decode and its page at once), or
    /// `None` when it can.
    pub fn refusal(&self, steps: Preprocess, budget: u64) -> Option<String> {
        let need = self.bytes + self.page_bytes(steps);
        (need > budget).then(|| {
            format!(
                "needs {} of memory to decode ({} pixels), more than the memory budget leaves for it ({}); raise --memory-budget",
                mnema_core::ByteSize(need),
                self.pixels,
                mnema_core::ByteSize(budget)
            )
        })
    }

    fn of(encoded: u64, w: u32, h: u32, bytes_per_pixel: u64, copies: u64) -> DecodeCost {
        let pixels = u64::from(w) * u64::from(h);
        DecodeCost { pixels, bytes: encoded + pixels * (bytes_per_pixel * copies + 2) }
    }
}

/// The [`DecodeCost`] of image bytes.
pub fn decode_cost(bytes: &[u8]) -> Result<DecodeCost> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    cost_of(reader, bytes.len() as u64)
}

/// The [`DecodeCost`] of an image file, from its header and its size.
pub fn file_decode_cost(path: &Path) -> Option<DecodeCost> {
    let size = std::fs::metadata(path).ok()?.len();
    cost_of(ImageReader::open(path).ok()?.with_guessed_format().ok()?, size).ok()
}

fn cost_of<R: std::io::BufRead + std::io::Seek>(reader: ImageReader<R>, encoded: u64) -> Result<DecodeCost> {
    let Some(format) = reader.format() else { return Err(bad("not an image this build can read")) };
    let mut decoder = reader.into_decoder().map_err(|e| bad(format!("corrupt image: {e}")))?;
    let (w, h) = decoder.dimensions();
    let turned = decoder.orientation().is_ok_and(|o| o != image::metadata::Orientation::NoTransforms);
    let copies = 1 + u64::from(turned) + u64::from(format == image::ImageFormat::Tiff);
    Ok(DecodeCost::of(encoded, w, h, u64::from(decoder.color_type().bytes_per_pixel()), copies))
}

/// Side of the square tiles [`differing_tiles`] compares, in pixels.
pub const TILE: u32 = 32;

/// The tiles (`[x, y, w, h]`) where two pages of the same size differ at a resolution that
/// resolves text, or `None` when their sizes differ. Both are compared at half resolution
/// (2×2 means, which absorbs JPEG re-compression noise around glyph edges); a tile differs
/// when one of its half-resolution pixels moved by more than [`TILE_MAX_DELTA`] grey levels
/// or their mean moved by more than [`TILE_MEAN_DELTA`]. A changed digit moves dozens of
/// pixels by well over a hundred levels; JPEG q90 of a screenshot moves them by a few.
pub fn differing_tiles(a: &GrayImage, b: &GrayImage) -> Option<Vec<[u32; 4]>> {
    if a.dimensions() != b.dimensions() {
        return None;
    }
    let (w, h) = a.dimensions();
    let half = |g: &GrayImage, x: u32, y: u32| -> i32 {
        let p = |x: u32, y: u32| i32::from(g.get_pixel(x.min(w - 1), y.min(h - 1))[0]);
        (p(x, y) + p(x + 1, y) + p(x, y + 1) + p(x + 1, y + 1) + 2) / 4
    };
    let mut out = Vec::new();
    for ty in (0..h).step_by(TILE as usize) {
        for tx in (0..w).step_by(TILE as usize) {
            let (tw, th) = (TILE.min(w - tx), TILE.min(h - ty));
            let (mut max, mut sum, mut n) = (0, 0i64, 0i64);
            for y in (ty..ty + th).step_by(2) {
                for x in (tx..tx + tw).step_by(2) {
                    let d = (half(a, x, y) - half(b, x, y)).abs();
                    max = max.max(d);
                    sum += i64::from(d);
                    n += 1;
                }
            }
            if max > TILE_MAX_DELTA || sum > TILE_MEAN_DELTA * n.max(1) {
                out.push([tx, ty, tw, th]);
            }
        }
    }
    Some(out)
}

/// Largest change of one half-resolution pixel (grey levels) a tile may have and still be
/// the same; see [`differing_tiles`].
pub const TILE_MAX_DELTA: i32 = 64;
/// Largest mean change of a tile's half-resolution pixels (grey levels) that is still the same.
pub const TILE_MEAN_DELTA: i64 = 4;

/// A 64-bit difference hash: near-identical screenshots differ in few bits.
pub fn dhash(img: &DynamicImage) -> u64 {
    let small = image::imageops::resize(&img.to_luma8(), 9, 8, image::imageops::FilterType::Triangle);
    let mut h = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            h = (h << 1) | u64::from(small.get_pixel(x, y)[0] > small.get_pixel(x + 1, y)[0]);
        }
    }
    h
}

/// The steps that prepare a page for OCR (`MNEMA_OCR_PREPROCESS`, read into
/// `Config::ocr_preprocess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocess {
    /// Invert mostly dark pages (dark themes).
    pub invert: bool,
    /// Enlarge small pages 2×.
    pub upscale: bool,
}

impl Preprocess {
    /// The default: invert dark pages, no enlarging.
    pub const DEFAULT: Preprocess = Preprocess { invert: true, upscale: false };

    /// From a setting (`none`, `invert`, `upscale`, `all`; the value is checked at start by
    /// `Config::resolve`, anything else is the default).
    pub fn from_setting(s: &str) -> Preprocess {
        match s {
            "none" => Preprocess { invert: false, upscale: false },
            "upscale" => Preprocess { invert: false, upscale: true },
            "all" => Preprocess { invert: true, upscale: true },
            _ => Preprocess::DEFAULT,
        }
    }
}

/// Grayscale for OCR, inverted when the image is mostly dark, and the scale factor applied.
///
/// Kept by measurement (`bench/ocr.sh`, 60 generated screenshots): inverting dark themes
/// makes Tesseract 1.4× faster (it otherwise retries dark lines inverted itself) at the same
/// error rate; enlarging small images 2× *doubled* the character error rate on 13-16 px text
/// (0.0057 → 0.0134), so it is off by default.
pub fn prepare_for_ocr(img: &DynamicImage, steps: Preprocess) -> (GrayImage, f32) {
    let mut g = img.to_luma8();
    let mean = g.pixels().map(|p| p[0] as u64).sum::<u64>() / (g.width() as u64 * g.height() as u64).max(1);
    if steps.invert && mean < 110 {
        image::imageops::invert(&mut g);
    }
    if steps.upscale && g.height().min(g.width()) < 400 {
        return (upscale2(&g), 2.0);
    }
    (g, 1.0)
}

/// Twice the size, Catmull-Rom. `fast_image_resize` does it with SIMD row by row: the `image`
/// crate's generic resampler (f32 RGBA per pixel) took 2.6 s for a 160×12588 strip, this ~1%
/// of that.
fn upscale2(g: &GrayImage) -> GrayImage {
    // The resizer refuses only buffers of the wrong size, which a GrayImage never has.
    fast_upscale2(g).unwrap_or_else(|| image::imageops::resize(g, g.width() * 2, g.height() * 2, image::imageops::FilterType::CatmullRom))
}

fn fast_upscale2(g: &GrayImage) -> Option<GrayImage> {
    use fast_image_resize as fr;
    let (w, h) = (g.width() * 2, g.height() * 2);
    let src = fr::images::ImageRef::new(g.width(), g.height(), g.as_raw(), fr::PixelType::U8).ok()?;
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8);
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new().resize(&src, &mut dst, &opts).ok()?;
    GrayImage::from_raw(w, h, dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast upscale is the same Catmull-Rom resampling as the `image` crate's: on a
    /// tall strip of text-like strokes the mean error is a fraction of a grey level, several
    /// times below what another filter (nearest neighbour) would give.
    #[test]
    fn upscale_matches_the_reference_resampler() {
        let glyph = |x: u32, y: u32| y % 24 >= 6 && y % 24 < 18 && (x % 9 < 2 || y % 24 == 11 || (x + y).is_multiple_of(13));
        let g = GrayImage::from_fn(61, 480, |x, y| image::Luma([if glyph(x, y) { 20 } else { 245 }]));
        let mean_diff = |a: &GrayImage, b: &GrayImage| {
            assert_eq!(a.dimensions(), b.dimensions());
            a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / a.as_raw().len() as f64
        };
        let reference = image::imageops::resize(&g, 122, 960, image::imageops::FilterType::CatmullRom);
        let nearest = image::imageops::resize(&g, 122, 960, image::imageops::FilterType::Nearest);
        let fast = fast_upscale2(&g).expect("the fast path itself, not the fallback");
        let (ours, other) = (mean_diff(&fast, &reference), mean_diff(&nearest, &reference));
        assert!(ours < 1.5 && ours * 4.0 < other, "mean difference {ours} (nearest neighbour: {other})");
    }

    /// The charge follows the decoded sample format: a 16-bit RGBA PNG holds 8 bytes a
    /// pixel once decoded, twice an 8-bit one's 4, and both are at least what decoding holds.
    #[test]
    fn decode_cost_follows_the_sample_format() {
        let encode = |img: DynamicImage| {
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        let rgba8 = encode(DynamicImage::new_rgba8(300, 200));
        let rgba16 = encode(DynamicImage::new_rgba16(300, 200));
        let grey = encode(DynamicImage::new_luma8(300, 200));
        let c8 = decode_cost(&rgba8).unwrap();
        let c16 = decode_cost(&rgba16).unwrap();
        assert_eq!(c8.pixels, 60_000);
        assert_eq!(c8.bytes, rgba8.len() as u64 + 60_000 * (4 + 2));
        assert_eq!(c16.bytes, rgba16.len() as u64 + 60_000 * (8 + 2));
        assert_eq!(decode_cost(&grey).unwrap().bytes, grey.len() as u64 + 60_000 * (1 + 2));
        for (bytes, cost) in [(&rgba8, c8), (&rgba16, c16)] {
            let img = decode_bytes(bytes, "png").unwrap();
            let held = img.as_bytes().len() as u64 + 2 * u64::from(img.width() * img.height());
            assert!(held <= cost.bytes, "decoding holds {held} bytes, charged {}", cost.bytes);
        }
        assert!(decode_cost(b"not an image").is_err());
        // The page: one byte a pixel, four when small pages are enlarged; refused only past the budget.
        let upscale = Preprocess { invert: false, upscale: true };
        assert_eq!(c8.page_bytes(Preprocess::DEFAULT), 60_000);
        assert_eq!(c8.page_bytes(upscale), 240_000);
        assert!(c8.refusal(Preprocess::DEFAULT, c8.bytes + 60_000).is_none());
        let why = c8.refusal(upscale, c8.bytes + 60_000).expect("over the budget");
        assert!(why.contains("60000 pixels") && why.contains("raise --memory-budget"), "{why}");
        // TIFF's decoder copies its buffer: two copies of the pixels.
        let mut tiff = Cursor::new(Vec::new());
        DynamicImage::new_rgba8(300, 200).write_to(&mut tiff, image::ImageFormat::Tiff).unwrap();
        let tiff = tiff.into_inner();
        assert_eq!(decode_cost(&tiff).unwrap().bytes, tiff.len() as u64 + 60_000 * (2 * 4 + 2));
        // A JPEG that EXIF turns (orientation 6, spliced in after SOI) is charged the rotated
        // copy too; the same JPEG without the tag is not.
        let mut jpeg = Cursor::new(Vec::new());
        DynamicImage::new_rgb8(300, 200).write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let plain = jpeg.into_inner();
        let mut app1 = vec![0xFF, 0xE1, 0x00, 0x22];
        app1.extend_from_slice(b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0");
        let turned = [&plain[..2], &app1[..], &plain[2..]].concat();
        assert_eq!(decode_cost(&plain).unwrap().bytes, plain.len() as u64 + 60_000 * (3 + 2));
        let c = decode_cost(&turned).unwrap();
        let img = decode_bytes(&turned, "jpg").unwrap();
        let bpp = img.color().bytes_per_pixel() as u64;
        assert_eq!(c.bytes, turned.len() as u64 + c.pixels * (2 * bpp + 2));
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::new_luma8(w, h);
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// PNG's CRC-32 (over a chunk's type and data), to forge a valid oversized header.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn refuses_bad_images_with_reasons() {
        let e = |b: &[u8], ext: &str| decode_bytes(b, ext).unwrap_err().to_string();
        assert!(e(b"hello, I am text", "png").contains("not an image"));
        assert!(e(b"\0\0\0\x18ftypheic\0\0\0\0", "heic").contains("HEIC"));
        let full = png(64, 64);
        assert!(e(&full[..full.len() / 2], "png").contains("corrupt"));
        assert!(e(&png(1, 1), "png").contains("too small"));
        // 20000×20000 is refused from the header, before any pixel is allocated.
        let mut big = png(64, 64);
        big[16..20].copy_from_slice(&20000u32.to_be_bytes());
        big[20..24].copy_from_slice(&20000u32.to_be_bytes());
        let crc = crc32(&big[12..29]);
        big[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(e(&big, "png").contains("too large"), "{}", e(&big, "png"));
        assert_eq!(decode_bytes(&png(64, 32), "jpg").unwrap().width(), 64, "content decides, not extension");
    }

    #[test]
    fn dark_images_are_inverted_and_kept_at_their_size() {
        let dark = DynamicImage::new_luma8(100, 50);
        let (g, scale) = prepare_for_ocr(&dark, Preprocess::DEFAULT);
        assert_eq!(scale, 1.0);
        assert_eq!(g.dimensions(), (100, 50));
        assert_eq!(g.get_pixel(0, 0)[0], 255);
        let light = DynamicImage::ImageLuma8(GrayImage::from_pixel(100, 50, image::Luma([230])));
        assert_eq!(prepare_for_ocr(&light, Preprocess::DEFAULT).0.get_pixel(0, 0)[0], 230);
        let a = DynamicImage::ImageLuma8(GrayImage::from_fn(64, 64, |x, _| image::Luma([(x * 4) as u8])));
        let b = DynamicImage::ImageLuma8(GrayImage::from_fn(64, 64, |x, y| image::Luma([(x * 4) as u8 ^ u8::from(x == 3 && y == 3)])));
        let c = DynamicImage::ImageLuma8(GrayImage::from_fn(64, 64, |x, _| image::Luma([255 - (x * 4) as u8])));
        assert!((dhash(&a) ^ dhash(&b)).count_ones() <= 2);
        assert!((dhash(&a) ^ dhash(&c)).count_ones() > 32);
    }
}
