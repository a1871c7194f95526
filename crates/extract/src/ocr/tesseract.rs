//! Tesseract through libtesseract: one warm `TessBaseAPI` per pool worker, LSTM models for
//! Russian and English, lines read from its TSV output (level 4 = line box, level 5 = word
//! with confidence).

use super::script;
use super::{EngineInfo, EngineOptions, OcrEngine, OcrLine};
use crate::{ExtractError, Result};
use image::GrayImage;
use std::collections::BTreeMap;
use tesseract::plumbing::{tesseract_sys as sys, TessBaseApi};

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

/// A warm engine: one `TessBaseAPI`, created once and reused for every image.
///
/// Tesseract reads a line in its first language and, when the result is doubtful, again in
/// the others, keeping the better words; the language that won is tried first on the next
/// line. On a page whose lines alternate between Russian and English that guess is always
/// wrong, and every line is read twice. So the page's lines are first sorted by script from
/// their shapes ([`script`](super::script)); when the scripts alternate often, the Latin lines
/// and the others are read as two pages (copies showing only those lines), so that the guess
/// is right from the second line of each on. Lines whose script the shapes do not show go with
/// the page's majority, and a wrong guess costs only the second reading Tesseract would have
/// done anyway: the text is the same kind of reading, a line at a time, with fewer retries.
pub(super) struct Tess {
    api: TessBaseApi,
    /// Whether the languages mix Latin and Cyrillic scripts (only then is splitting useful).
    mixed_scripts: bool,
}

// SAFETY: a TessBaseAPI has no thread affinity; it must only not be used by two threads at
// once, which the pool's Mutex (and &mut self) guarantee.
unsafe impl Send for Tess {}

impl Tess {
    pub(super) fn new(opts: &EngineOptions) -> Result<Tess> {
        let has = |l: &str| opts.languages.iter().any(|x| x == l);
        Ok(Tess { api: init(&opts.languages.join("+"))?, mixed_scripts: has("eng") && has("rus") })
    }
}

fn init(langs: &str) -> Result<TessBaseApi> {
    let data = tessdata().ok_or_else(|| ExtractError::BadInput("tesseract: rus/eng traineddata not found".into()))?;
    let cstr = |s: &str| std::ffi::CString::new(s).map_err(|_| ExtractError::BadInput(format!("tesseract: bad setting {s:?}")));
    let mut api = TessBaseApi::create();
    api.init_4(Some(&cstr(data)?), Some(&cstr(langs)?), sys::TessOcrEngineMode_OEM_LSTM_ONLY)
        .map_err(|_| ExtractError::BadInput(format!("tesseract failed to load {langs} from {data}")))?;
    // Dark themes are inverted before recognition (image.rs), so Tesseract's own second try
    // of each doubtful line in inverted colours is wasted time.
    for (k, v) in [("debug_file", "/dev/null"), ("tessedit_do_invert", "0")] {
        api.set_variable(&cstr(k)?, &cstr(v)?).map_err(|_| ExtractError::BadInput(format!("tesseract: cannot set {k}")))?;
    }
    // One uniform block of text, read top to bottom without column analysis: on the bench's
    // screenshots a third of the errors of automatic layout (CER 0.0023 against 0.0072) at
    // the same speed.
    api.set_page_seg_mode(sys::TessPageSegMode_PSM_SINGLE_BLOCK);
    Ok(api)
}

/// Reads a whole grey page: its lines, top to bottom.
fn read(api: &mut TessBaseApi, img: &GrayImage) -> Result<Vec<OcrLine>> {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let fail = |what: String| ExtractError::BadInput(format!("tesseract: {what}"));
    api.set_image(img.as_raw(), w, h, 1, w).map_err(|e| fail(e.to_string()))?;
    // Screenshots carry no resolution; a fixed one silences Tesseract's guessing and warnings.
    api.set_source_resolution(144);
    api.recognize().map_err(|_| fail("recognition failed".into()))?;
    let tsv = api.get_tsv_text(0).map_err(|_| fail("no text output".into()))?;
    Ok(parse_tsv(&tsv.as_ref().to_string_lossy()))
}

impl OcrEngine for Tess {
    fn name(&self) -> &'static str {
        "tesseract"
    }

    fn recognize(&mut self, img: &GrayImage) -> Result<Vec<OcrLine>> {
        if !self.mixed_scripts {
            return read(&mut self.api, img);
        }
        let bands = script::bands(img);
        let Some(latin) = script::latin_split(&bands) else { return read(&mut self.api, img) };
        let [others, latin] = script::halves(img, &bands, &latin);
        let mut lines = read(&mut self.api, &others)?;
        lines.extend(read(&mut self.api, &latin)?);
        // Both halves come top to bottom; a stable sort by the line's middle interleaves them.
        lines.sort_by_key(|l| l.bbox[1] + l.bbox[3] / 2);
        Ok(lines)
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
        .map(|a| OcrLine {
            text: a.words.join(" "),
            bbox: a.bbox,
            conf: if a.confs.is_empty() { 0.0 } else { a.confs.iter().sum::<f32>() / a.confs.len() as f32 },
        })
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

    #[test]
    fn alternating_scripts_are_read_in_two_halves_as_whole() {
        if tessdata().is_none() {
            panic!("Tesseract's rus/eng traineddata are missing (scripts/setup.sh installs them)");
        }
        let truth = [
            "Отменить подписку можно в настройках",
            "Search by meaning and by words",
            "Встреча перенесена на четверг",
            "Weather tomorrow: sunny, 21 degrees",
            "Новое сообщение от Анны Петровой",
            "Terminal: cargo build --release",
        ];
        let img = crate::ocr::script::tests::page(&truth, 24, "DejaVu-Sans", true);
        let bands = script::bands(&img);
        assert!(script::latin_split(&bands).is_some(), "this page is split: {bands:?}");
        let mut tess = Tess::new(&EngineOptions::new(&crate::Runtime::new(std::path::Path::new("models")))).unwrap();
        let split = tess.recognize(&img).unwrap();
        let whole = read(&mut tess.api, &img).unwrap();
        // Every line, in order, with its own box in the page's coordinates.
        assert_eq!(split.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), truth);
        assert_eq!(split.len(), whole.len());
        for (s, w) in split.iter().zip(&whole) {
            assert!(s.bbox.iter().zip(w.bbox).all(|(a, b)| a.abs_diff(b) <= 2), "{:?} vs {:?}", s.bbox, w.bbox);
        }
    }
}
