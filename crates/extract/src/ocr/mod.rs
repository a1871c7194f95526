//! OCR engines behind one interface, a registry that says which engines this machine can
//! run (and why not), and a pool that keeps warm engines and spreads images over the cores.
//!
//! Engines: `tesseract` (default; Debian's libtesseract with Russian + English, LSTM);
//! `paddle-ocr` (PP-OCRv4 through ONNX Runtime; Chinese/English only); `apple-vision` is
//! listed for macOS but not implemented in this build.

mod paddle;
#[cfg(feature = "tesseract")]
mod script;
#[cfg(feature = "tesseract")]
mod tesseract;

use crate::{ExtractError, Result};
use image::GrayImage;
use serde::Serialize;
use std::sync::Mutex;

/// One recognised line: text, box in the original image's pixels, confidence 0-100.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OcrLine {
    /// The line's text.
    pub text: String,
    /// `[x, y, width, height]` in the original image.
    pub bbox: [u32; 4],
    /// Mean word confidence, 0-100.
    pub conf: f32,
}

/// Lines in reading order joined by newlines.
pub fn join_lines(lines: &[OcrLine]) -> String {
    lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n")
}

/// Per-engine load settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Languages, e.g. `["rus", "eng"]`.
    pub languages: Vec<String>,
    /// Threads inside one engine (1: the pool runs engines in parallel instead).
    pub threads: usize,
    /// `cpu` (the only device here).
    pub device: String,
    /// Where engines that need model files (and ONNX Runtime) find them.
    pub runtime: crate::Runtime,
}

impl EngineOptions {
    /// Russian and English, one thread, on the CPU, with the runtime's model files.
    pub fn new(rt: &crate::Runtime) -> EngineOptions {
        EngineOptions { languages: vec!["rus".into(), "eng".into()], threads: 1, device: "cpu".into(), runtime: rt.clone() }
    }
}

/// A loaded OCR engine.
pub trait OcrEngine: Send {
    /// Registry name.
    fn name(&self) -> &'static str;
    /// Recognises the lines of a prepared grayscale image.
    fn recognize(&mut self, img: &GrayImage) -> Result<Vec<OcrLine>>;
}

/// What the registry says about an engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    /// Registry name.
    pub name: &'static str,
    /// Languages it reads.
    pub languages: &'static str,
    /// Whether it can run on this machine.
    pub available: bool,
    /// Why not, when it cannot.
    pub reason: Option<String>,
    /// Approximate memory of one warm instance, bytes.
    pub memory: u64,
}

/// Every engine mnema knows, with its availability given the runtime's model files.
pub fn engines_in(rt: &crate::Runtime) -> Vec<EngineInfo> {
    let mut v = Vec::new();
    #[cfg(feature = "tesseract")]
    v.push(tesseract::info());
    #[cfg(not(feature = "tesseract"))]
    v.push(EngineInfo {
        name: "tesseract",
        languages: "rus, eng",
        available: false,
        reason: Some("built without the `tesseract` feature".into()),
        memory: 0,
    });
    v.push(paddle::info(rt));
    v.push(EngineInfo {
        name: "apple-vision",
        languages: "rus, eng, …",
        available: false,
        reason: Some(if cfg!(target_os = "macos") { "not implemented in this build yet".into() } else { "macOS only".into() }),
        memory: 0,
    });
    v
}

/// Loads one engine by name.
pub fn load_engine(name: &str, opts: &EngineOptions) -> Result<Box<dyn OcrEngine>> {
    let all = engines_in(&opts.runtime);
    let info = all.iter().find(|e| e.name == name).cloned().ok_or_else(|| {
        ExtractError::BadInput(format!(
            "unknown OCR engine '{name}' (engines: {})",
            all.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    if !info.available {
        return Err(ExtractError::BadInput(format!("OCR engine {name} is unavailable: {}", info.reason.unwrap_or_default())));
    }
    match name {
        #[cfg(feature = "tesseract")]
        "tesseract" => Ok(Box::new(tesseract::Tess::new(opts)?)),
        "paddle-ocr" => Ok(Box::new(paddle::Paddle::new(opts)?)),
        _ => Err(ExtractError::BadInput(format!("OCR engine {name} is unavailable"))),
    }
}

/// Warm engines of one kind, one per worker; images are spread over them.
pub struct OcrPool {
    name: &'static str,
    engines: Vec<Mutex<Box<dyn OcrEngine>>>,
}

impl OcrPool {
    /// Loads `workers` engines of `name` (one per core is the fast setting: Tesseract's own
    /// OpenMP threads busy-wait and slow it down on few cores, so mnema sets
    /// `OMP_THREAD_LIMIT=1` and parallelises across images instead).
    pub fn new(name: &str, opts: &EngineOptions, workers: usize) -> Result<OcrPool> {
        // Engines initialise in parallel (Tesseract's rus+eng load is ~0.17 s each).
        let engines = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers.max(1)).map(|_| s.spawn(|| load_engine(name, opts).map(Mutex::new))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(ExtractError::BadInput(format!("OCR engine {name} panicked while loading")))))
                .collect::<Result<Vec<_>>>()
        })?;
        let name = engines[0].lock().map(|e| e.name()).unwrap_or("ocr");
        Ok(OcrPool { name, engines })
    }

    /// The engine's registry name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Recognises many prepared images in parallel; results in input order. `scales` maps
    /// boxes back to the original images.
    pub fn recognize_all(&self, images: &[(GrayImage, f32)]) -> Vec<Result<Vec<OcrLine>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Vec<OcrLine>>>>> = images.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for engine in &self.engines {
                let (next, results) = (&next, &results);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((img, scale)) = images.get(i) else { break };
                    let _st = mnema_core::profile::stage("ocr");
                    let r =
                        engine.lock().map_err(|_| ExtractError::BadInput("OCR engine poisoned".into())).and_then(|mut e| e.recognize(img));
                    let r = r.map(|lines| lines.into_iter().map(|l| unscale(l, *scale)).collect());
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| Err(ExtractError::BadInput("not recognised".into())))
            })
            .collect()
    }
}

fn unscale(mut l: OcrLine, scale: f32) -> OcrLine {
    if scale != 1.0 {
        l.bbox = l.bbox.map(|v| (v as f32 / scale).round() as u32);
    }
    l
}

/// Character and word error rates of `got` against `truth` (Levenshtein distance over the
/// reference length; whitespace runs count as one space).
pub fn error_rates(got: &str, truth: &str) -> (f64, f64) {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (g, t) = (norm(got), norm(truth));
    let gc: Vec<char> = g.chars().collect();
    let tc: Vec<char> = t.chars().collect();
    let gw: Vec<&str> = g.split(' ').filter(|w| !w.is_empty()).collect();
    let tw: Vec<&str> = t.split(' ').filter(|w| !w.is_empty()).collect();
    let cer = levenshtein(&gc, &tc) as f64 / tc.len().max(1) as f64;
    let wer = levenshtein(&gw, &tw) as f64 / tw.len().max(1) as f64;
    (cer, wer)
}

fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_count_edits() {
        assert_eq!(error_rates("hello world", "hello world"), (0.0, 0.0));
        let (cer, wer) = error_rates("helo  world", "hello world");
        assert!((cer - 1.0 / 11.0).abs() < 1e-9);
        assert!((wer - 0.5).abs() < 1e-9);
        assert_eq!(error_rates("", "абв").0, 1.0);
    }

    #[test]
    fn registry_explains_unavailable_engines() {
        let none = crate::Runtime::new(&std::env::temp_dir().join("mnema-no-models"));
        let all = engines_in(&none);
        assert!(all.iter().any(|e| e.name == "paddle-ocr" && !e.available), "paddle-ocr needs its model files");
        assert!(all.iter().any(|e| e.name == "tesseract"));
        for e in all.iter().filter(|e| !e.available) {
            assert!(e.reason.as_deref().is_some_and(|r| !r.is_empty()), "{e:?}");
            let err = load_engine(e.name, &EngineOptions::new(&none)).err().unwrap().to_string();
            assert!(err.contains("unavailable"), "{err}");
        }
        assert!(load_engine("nope", &EngineOptions::new(&none)).is_err());
    }
}
