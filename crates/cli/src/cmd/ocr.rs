//! `mnema ocr IMAGE... [--engine NAME] [--compare] [--truth FILE]`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::{bail, Result};
use mnema_extract::image::{decode_image, prepare_for_ocr};
use mnema_extract::ocr::{engines_in, error_rates, join_lines, EngineOptions, OcrPool};
use mnema_server::wire::OcrOut;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images (PNG, JPEG, WebP, BMP, TIFF, GIF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Engine to use (see --list). Default: tesseract.
    #[arg(long, default_value = "tesseract")]
    engine: String,
    /// Run every available engine on each image and compare text, time and memory.
    #[arg(long)]
    compare: bool,
    /// Ground truth text (one file for all images): adds CER and WER.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<u8> {
    let truth = match &a.truth {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?),
        None => None,
    };
    // The registry looks for model files and ONNX Runtime: asked once.
    let registry = engines_in(&ctx.config.models_dir);
    let names: Vec<&'static str> = if a.compare {
        registry.iter().filter(|e| e.available).map(|e| e.name).collect()
    } else {
        match registry.iter().find(|e| e.name == a.engine) {
            Some(e) if e.available => vec![e.name],
            Some(e) => bail!("OCR engine {} is unavailable: {}", e.name, e.reason.clone().unwrap_or_default()),
            None => {
                bail!("unknown OCR engine '{}' (engines: {})", a.engine, registry.iter().map(|e| e.name).collect::<Vec<_>>().join(", "))
            }
        }
    };
    if a.compare && !ctx.json {
        for e in registry.iter().filter(|e| !e.available) {
            out(format!("(engine {} unavailable: {})", e.name, e.reason.clone().unwrap_or_default()))?;
        }
    }
    // Decode everything once, on all cores; bad images are reported and skipped.
    let mut failed = 0;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(a.images.len().max(1));
    let est = |name: &str| registry.iter().find(|e| e.name == name).map_or(80 << 20, |e| e.memory) * workers as u64;
    let load = |name: &'static str| {
        ctx.models
            .acquire(&format!("ocr:{name}"), est(name), || OcrPool::new(name, &EngineOptions::with_models(&ctx.config.models_dir), workers))
    };
    // The first engine starts while the images decode (its load is a few tenths of a second
    // that would otherwise come before any recognition); a failure shows again below.
    let prepared: Vec<_> = std::thread::scope(|s| {
        if let Some(&first) = names.first() {
            s.spawn(move || drop(load(first)));
        }
        let _s = mnema_core::profile::stage("decode");
        a.images.par_iter().map(|p| decode_image(p, 256 << 20).map(|img| prepare_for_ocr(&img))).collect()
    });
    let mut decoded = Vec::new();
    for (p, r) in a.images.iter().zip(prepared) {
        match r {
            Ok(g) => decoded.push((p.clone(), g)),
            Err(e) => {
                failed += 1;
                eprintln!("mnema: {}: {e}", p.display());
                if ctx.json {
                    out_json(&OcrOut {
                        path: p.display().to_string(),
                        engine: names.first().copied().unwrap_or("").to_string(),
                        text: String::new(),
                        lines: vec![],
                        elapsed_ms: 0.0,
                        peak_rss_mb: 0.0,
                        cer: None,
                        wer: None,
                        error: Some(e.to_string()),
                    })?;
                }
            }
        }
    }
    for name in names {
        let pool = load(name)?;
        let images: Vec<_> = decoded.iter().map(|(_, g)| g.clone()).collect();
        let t0 = Instant::now();
        let results = pool.recognize_all(&images);
        let per_image = t0.elapsed().as_secs_f64() * 1e3 / images.len().max(1) as f64;
        for ((path, _), r) in decoded.iter().zip(results) {
            let (lines, error) = match r {
                Ok(l) => (l, None),
                Err(e) => {
                    failed += 1;
                    eprintln!("mnema: {}: {e}", path.display());
                    (vec![], Some(e.to_string()))
                }
            };
            let text = join_lines(&lines);
            let (cer, wer) = truth.as_deref().map(|t| error_rates(&text, t)).unzip();
            let o = OcrOut {
                path: path.display().to_string(),
                engine: name.to_string(),
                text,
                lines,
                elapsed_ms: (per_image * 10.0).round() / 10.0,
                peak_rss_mb: mnema_server::wire::peak_rss_mb(),
                cer,
                wer,
                error,
            };
            if ctx.json {
                out_json(&o)?;
            } else {
                let quality = o.cer.map(|c| format!(", CER {:.3}, WER {:.3}", c, o.wer.unwrap_or(0.0))).unwrap_or_default();
                out(format!("== {} [{}] {:.0} ms/image, peak RSS {:.0} MiB{quality}", o.path, name, o.elapsed_ms, o.peak_rss_mb))?;
                out(&o.text)?;
            }
        }
        drop(pool);
        ctx.models.unload_all();
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}
