//! Image decoding with its size limits and EXIF orientation, then the OCR preprocessing and
//! the difference hash, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnema_extract::image::{decode_bytes, dhash, prepare_for_ocr, Preprocess, MAX_PIXELS, MAX_SIDE, MIN_SIDE};

const EXTS: [&str; 4] = ["png", "jpg", "heic", ""];
const MODES: [&str; 4] = ["none", "invert", "upscale", "all"];

fuzz_target!(|data: &[u8]| {
    let ext = EXTS[data.len() % EXTS.len()];
    let Ok(img) = decode_bytes(data, ext) else { return };
    let (w, h) = (img.width(), img.height());
    // Orientation may swap the sides; the limits hold either way.
    assert!(w <= MAX_SIDE && h <= MAX_SIDE && w as u64 * h as u64 <= MAX_PIXELS, "{w}×{h} passed the size limits");
    assert!(w >= MIN_SIDE && h >= MIN_SIDE, "{w}×{h} passed the minimum size");
    let _ = dhash(&img);
    let (g, scale) = prepare_for_ocr(&img, Preprocess::from_setting(MODES[(data.len() / 4) % MODES.len()]));
    assert!(scale == 1.0 || scale == 2.0, "scale {scale}");
    assert_eq!((g.width(), g.height()), ((w as f32 * scale) as u32, (h as f32 * scale) as u32));
});
