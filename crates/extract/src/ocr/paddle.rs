//! PaddleOCR (PP-OCRv4 mobile) through ONNX Runtime: a DB text detector finds line boxes, a
//! CRNN recogniser reads each box (CTC over the 6623-character dictionary stored in the
//! recogniser's metadata). Chinese and English only: no Cyrillic recognition model exists for
//! it, so Russian text comes out wrong; it is here to compare against, and its detector is
//! language-neutral.
//!
//! Post-processing is kept simple for screen text, which is horizontal: connected regions of
//! the probability map above 0.3 become axis-aligned boxes, scored by their mean probability
//! (≥ 0.5 kept) and grown by area × 1.6 / perimeter on each side, as the DB paper's unclip.

use super::{EngineInfo, EngineOptions, OcrEngine, OcrLine};
use crate::vad::onnxruntime_path;
use crate::{ExtractError, Result};
use image::GrayImage;
use mnema_models::ModelFiles;
use std::path::Path;

const MODEL: &str = "paddle-ocr";
const DET: &str = "det.onnx";
const REC: &str = "rec.onnx";

pub(super) fn info(rt: &crate::Runtime) -> EngineInfo {
    let missing = ModelFiles::require(&rt.models_dir, MODEL, &[DET, REC], &[]).err();
    let ort = onnxruntime_path(rt).err();
    let reason = match (missing, ort) {
        (Some(e), _) => Some(e.to_string()),
        (_, Some(e)) => Some(e.to_string()),
        _ => None,
    };
    EngineInfo {
        name: "paddle-ocr",
        languages: "chi, eng (no Cyrillic model exists)",
        available: reason.is_none(),
        reason,
        memory: 150 << 20,
    }
}

/// A warm PP-OCR engine: detector and recogniser sessions.
pub(super) struct Paddle {
    det: ort::session::Session,
    rec: ort::session::Session,
    chars: Vec<String>,
}

fn session(env: &ort::environment::Environment, path: &Path, threads: usize) -> Result<ort::session::Session> {
    let fail = |e: String| ExtractError::Model(mnema_models::ModelError::Format { path: path.into(), reason: e });
    ort::session::Session::builder(env)
        .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        // Input sizes change with every image: a memory pattern planned for one is wasted.
        .and_then(|b| b.with_memory_pattern(false).map_err(Into::into))
        .map_err(|e| fail(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| fail(e.to_string()))
}

impl Paddle {
    pub(super) fn new(opts: &EngineOptions) -> Result<Paddle> {
        let files = ModelFiles::require(&opts.runtime.models_dir, MODEL, &[DET, REC], &[])?;
        let env = crate::vad::ort_env(&onnxruntime_path(&opts.runtime)?)?;
        let det = session(env, &files.path(DET), opts.threads)?;
        let rec = session(env, &files.path(REC), opts.threads)?;
        let dict = rec.metadata().ok().and_then(|m| m.custom("character")).ok_or_else(|| {
            ExtractError::Model(mnema_models::ModelError::Format {
                path: files.path(REC),
                reason: "no character dictionary in the model's metadata".into(),
            })
        })?;
        // CTC class 0 is the blank; then the dictionary; then a space.
        let mut chars = vec![String::new()];
        chars.extend(dict.lines().map(str::to_string));
        chars.push(" ".into());
        Ok(Paddle { det, rec, chars })
    }

    /// Probability map of text at the detector's resolution, and that resolution.
    fn detect(&mut self, img: &GrayImage) -> Result<(Vec<f32>, usize, usize)> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        // Screen text is already large enough: keep the size, only shrink the longer side to
        // 1280 (PaddleOCR's own screen setting; memory and time grow with the area), and
        // round both sides to multiples of 32.
        let ratio = if w.max(h) > 1280 { 1280.0 / w.max(h) as f64 } else { 1.0 };
        let rw = (((w as f64 * ratio) / 32.0).round() as usize).max(1) * 32;
        let rh = (((h as f64 * ratio) / 32.0).round() as usize).max(1) * 32;
        let input = planes(img, rw, rh);
        let fail = |e: ort::Error| ExtractError::BadInput(format!("paddle-ocr detector: {e}"));
        let x = ort::value::Tensor::from_array(([1usize, 3, rh, rw], input)).map_err(fail)?;
        let out = self.det.run(ort::inputs![x]).map_err(fail)?;
        let (_, p) = out[0].try_extract_tensor::<f32>().map_err(fail)?;
        Ok((p.to_vec(), rw, rh))
    }

    /// Reads one line image (grey), returns text and mean character confidence.
    fn read(&mut self, line: &GrayImage) -> Result<(String, f32)> {
        let h = 48usize;
        let w = ((line.width() as f64 * h as f64 / line.height().max(1) as f64).ceil() as usize).clamp(16, 2400);
        let input = planes(line, w, h);
        let fail = |e: ort::Error| ExtractError::BadInput(format!("paddle-ocr recogniser: {e}"));
        let x = ort::value::Tensor::from_array(([1usize, 3, h, w], input)).map_err(fail)?;
        let out = self.rec.run(ort::inputs![x]).map_err(fail)?;
        let (shape, probs) = out[0].try_extract_tensor::<f32>().map_err(fail)?;
        let classes = *shape.last().unwrap_or(&1) as usize;
        Ok(ctc_decode(probs, classes.max(1), &self.chars))
    }
}

/// The grey image resized to `w`×`h`, scaled to [-1, 1] and repeated as three colour planes
/// (CHW), as both networks take it.
fn planes(img: &GrayImage, w: usize, h: usize) -> Vec<f32> {
    let r = image::imageops::resize(img, w as u32, h as u32, image::imageops::FilterType::Triangle);
    let plane: Vec<f32> = r.as_raw().iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
    let mut input = Vec::with_capacity(3 * plane.len());
    for _ in 0..3 {
        input.extend_from_slice(&plane);
    }
    input
}

/// Greedy CTC: best class per step, repeats collapsed, blanks (class 0) dropped.
fn ctc_decode(probs: &[f32], classes: usize, chars: &[String]) -> (String, f32) {
    let mut text = String::new();
    let mut confs = Vec::new();
    let mut prev = 0usize;
    for step in probs.chunks_exact(classes) {
        let (best, p) = step.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        if best != 0 && best != prev {
            if let Some(c) = chars.get(best) {
                text.push_str(c);
                confs.push(p);
            }
        }
        prev = best;
    }
    let conf = if confs.is_empty() { 0.0 } else { confs.iter().sum::<f32>() / confs.len() as f32 };
    (text.trim().to_string(), conf)
}

/// Axis-aligned boxes `[x0, y0, x1, y1]` (map pixels) of connected regions above `thresh`
/// whose mean probability reaches `box_thresh`, grown by the unclip distance.
fn boxes(p: &[f32], w: usize, h: usize, thresh: f32, box_thresh: f32) -> Vec<[f32; 4]> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if seen[start] || p[start] <= thresh {
            continue;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        let (mut sum, mut n) = (0f64, 0usize);
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
            sum += p[i] as f64;
            n += 1;
            let mut push = |j: usize| {
                if !seen[j] && p[j] > thresh {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
        }
        let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
        if bw.min(bh) < 3.0 || ((sum / n as f64) as f32) < box_thresh {
            continue;
        }
        let d = bw * bh * 1.6 / (2.0 * (bw + bh));
        out.push([
            (x0 as f32 - d).max(0.0),
            (y0 as f32 - d).max(0.0),
            (x1 as f32 + 1.0 + d).min(w as f32),
            (y1 as f32 + 1.0 + d).min(h as f32),
        ]);
    }
    out
}

impl OcrEngine for Paddle {
    fn name(&self) -> &'static str {
        "paddle-ocr"
    }

    fn recognize(&mut self, img: &GrayImage) -> Result<Vec<OcrLine>> {
        let (map, mw, mh) = self.detect(img)?;
        let (sx, sy) = (img.width() as f32 / mw as f32, img.height() as f32 / mh as f32);
        let mut lines = Vec::new();
        for b in boxes(&map, mw, mh, 0.3, 0.5) {
            let x = (b[0] * sx).floor() as u32;
            let y = (b[1] * sy).floor() as u32;
            let bw = ((b[2] * sx).ceil() as u32).min(img.width()).saturating_sub(x);
            let bh = ((b[3] * sy).ceil() as u32).min(img.height()).saturating_sub(y);
            if bw < 4 || bh < 4 {
                continue;
            }
            let crop = image::imageops::crop_imm(img, x, y, bw, bh).to_image();
            let (text, conf) = self.read(&crop)?;
            if !text.is_empty() {
                lines.push(OcrLine { text, bbox: [x, y, bw, bh], conf: conf * 100.0 });
            }
        }
        // Reading order: top to bottom by line, left to right within a line.
        lines.sort_by_key(|l| (l.bbox[1] + l.bbox[3] / 2, l.bbox[0]));
        let mut ordered: Vec<OcrLine> = Vec::with_capacity(lines.len());
        for l in lines {
            match ordered.last_mut() {
                // Same line (vertical centres within half a height): merge left to right.
                Some(prev)
                    if (prev.bbox[1] + prev.bbox[3] / 2).abs_diff(l.bbox[1] + l.bbox[3] / 2) < l.bbox[3] / 2
                        && l.bbox[0] >= prev.bbox[0] =>
                {
                    let right = (l.bbox[0] + l.bbox[2]).max(prev.bbox[0] + prev.bbox[2]);
                    let top = prev.bbox[1].min(l.bbox[1]);
                    let bottom = (prev.bbox[1] + prev.bbox[3]).max(l.bbox[1] + l.bbox[3]);
                    prev.text = format!("{} {}", prev.text, l.text);
                    prev.conf = (prev.conf + l.conf) / 2.0;
                    prev.bbox = [prev.bbox[0], top, right - prev.bbox[0], bottom - top];
                }
                _ => ordered.push(l),
            }
        }
        Ok(ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctc_collapses_repeats_and_drops_blanks() {
        let chars: Vec<String> = ["", "a", "b"].iter().map(|s| s.to_string()).collect();
        // steps: a a blank a b b
        let steps = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]];
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let (t, c) = ctc_decode(&flat, 3, &chars);
        assert_eq!(t, "aab");
        assert!((c - (0.8 + 0.7 + 0.8) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn regions_become_grown_boxes() {
        let (w, h) = (40, 20);
        let mut p = vec![0f32; w * h];
        for y in 5..10 {
            for x in 4..24 {
                p[y * w + x] = 0.9;
            }
        }
        p[18 * w + 38] = 0.95; // a speck: too small
        let b = boxes(&p, w, h, 0.3, 0.5);
        assert_eq!(b.len(), 1);
        let d = 20.0 * 5.0 * 1.6 / 50.0;
        assert_eq!(b[0], [4.0 - d, 5.0 - d, 24.0 + d, 10.0 + d]);
    }
}
