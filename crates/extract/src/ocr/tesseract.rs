//! Tesseract through libtesseract: one warm `TessBaseAPI` per pool worker, LSTM models for
//! Russian and English, lines read from its TSV output (level 4 = line box, level 5 = word
//! with confidence).

use super::{EngineInfo, EngineOptions, OcrEngine, OcrLine};
use crate::{ExtractError, Result};
use image::GrayImage;
use std::collections::BTreeMap;

const TESSDATA: [&str; 2] = ["/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata"];

fn tessdata() -> Option<&'static str> {
    TESSDATA.iter().copied().find(|d| ["rus", "eng"].iter().all(|l| std::path::Path::new(d).join(format!("{l}.traineddata")).is_file()))
}

pub(super) fn info() -> EngineInfo {
    let found = tessdata();
    EngineInfo {
        name: "tesseract",
        languages: "rus, eng",
        available: found.is_some(),
        reason: found.is_none().then(|| "rus/eng traineddata not found: apt-get install tesseract-ocr-rus tesseract-ocr-eng".into()),
        memory: 80 << 20,
    }
}

/// A warm engine. The API object is created once and reused for every image.
pub(super) struct Tess {
    api: Option<tesseract::Tesseract>,
    opts: EngineOptions,
}

// SAFETY: a TessBaseAPI has no thread affinity; it must only not be used by two threads at
// once, which the pool's Mutex (and &mut self) guarantee.
unsafe impl Send for Tess {}

impl Tess {
    pub(super) fn new(opts: &EngineOptions) -> Result<Tess> {
        Ok(Tess { api: Some(init(opts)?), opts: opts.clone() })
    }
}

fn init(opts: &EngineOptions) -> Result<tesseract::Tesseract> {
    let data = tessdata().ok_or_else(|| ExtractError::BadInput("tesseract: rus/eng traineddata not found".into()))?;
    let langs = opts.languages.join("+");
    let t = tesseract::Tesseract::new_with_oem(Some(data), Some(&langs), tesseract::OcrEngineMode::LstmOnly)
        .map_err(|e| ExtractError::BadInput(format!("tesseract failed to load ({langs}): {e}")))?;
    // Screenshots carry no resolution; a fixed one silences Tesseract's guessing and warnings.
    let t = t.set_variable("debug_file", "/dev/null").map_err(|e| ExtractError::BadInput(format!("tesseract: {e}")))?;
    // Dark themes are inverted before recognition (image.rs), so Tesseract's own second try
    // of each doubtful line in inverted colours is wasted time.
    let t = t.set_variable("tessedit_do_invert", "0").map_err(|e| ExtractError::BadInput(format!("tesseract: {e}")))?;
    Ok(t)
}

impl OcrEngine for Tess {
    fn name(&self) -> &'static str {
        "tesseract"
    }

    fn recognize(&mut self, img: &GrayImage) -> Result<Vec<OcrLine>> {
        let api = match self.api.take() {
            Some(a) => a,
            None => init(&self.opts)?,
        };
        let (w, h) = (img.width() as i32, img.height() as i32);
        let fail = |e: String| ExtractError::BadInput(format!("tesseract: {e}"));
        // The builder API consumes the engine; on error it is re-created next time.
        let api = api.set_frame(img.as_raw(), w, h, 1, w).map_err(|e| fail(e.to_string()))?.set_source_resolution(144);
        let mut api = api.recognize().map_err(|e| fail(e.to_string()))?;
        let tsv = api.get_tsv_text(0).map_err(|e| fail(e.to_string()))?;
        self.api = Some(api);
        Ok(parse_tsv(&tsv))
    }
}

/// Lines from Tesseract's TSV: `level page block par line word left top width height conf text`.
fn parse_tsv(tsv: &str) -> Vec<OcrLine> {
    struct Acc {
        bbox: [u32; 4],
        words: Vec<String>,
        confs: Vec<f32>,
    }
    let mut lines: BTreeMap<(u32, u32, u32), Acc> = BTreeMap::new();
    for row in tsv.lines() {
        let f: Vec<&str> = row.splitn(12, '\t').collect();
        if f.len() < 11 {
            continue;
        }
        let n = |i: usize| f[i].trim().parse::<i64>().unwrap_or(-1);
        let key = (n(2) as u32, n(3) as u32, n(4) as u32);
        match n(0) {
            4 => {
                let bbox = [n(6).max(0) as u32, n(7).max(0) as u32, n(8).max(0) as u32, n(9).max(0) as u32];
                lines.entry(key).or_insert(Acc { bbox, words: Vec::new(), confs: Vec::new() }).bbox = bbox;
            }
            5 => {
                let text = f.get(11).map(|t| t.trim()).unwrap_or("");
                let conf: f32 = f[10].trim().parse().unwrap_or(-1.0);
                if !text.is_empty() {
                    let acc = lines.entry(key).or_insert(Acc { bbox: [0; 4], words: Vec::new(), confs: Vec::new() });
                    acc.words.push(text.to_string());
                    if conf >= 0.0 {
                        acc.confs.push(conf);
                    }
                }
            }
            _ => {}
        }
    }
    lines
        .into_values()
        .filter(|a| !a.words.is_empty())
        .map(|a| OcrLine { text: a.words.join(" "), bbox: a.bbox, conf: if a.confs.is_empty() { 0.0 } else { a.confs.iter().sum::<f32>() / a.confs.len() as f32 } })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_lines_in_reading_order() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
                   4\t1\t1\t1\t1\t0\t10\t20\t300\t30\t-1\t\n\
                   5\t1\t1\t1\t1\t1\t10\t20\t100\t30\t96.5\tПривет,\n\
                   5\t1\t1\t1\t1\t2\t120\t20\t100\t30\t91.5\tworld\n\
                   4\t1\t1\t1\t2\t0\t10\t60\t80\t30\t-1\t\n\
                   5\t1\t1\t1\t2\t1\t10\t60\t80\t30\t88\t42\n";
        let lines = parse_tsv(tsv);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "Привет, world");
        assert_eq!(lines[0].bbox, [10, 20, 300, 30]);
        assert!((lines[0].conf - 94.0).abs() < 1e-4);
        assert_eq!(lines[1].text, "42");
    }
}
