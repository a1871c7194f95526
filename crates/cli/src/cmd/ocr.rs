//! `mnema ocr IMAGE... [--engine NAME] [--compare] [--truth FILE]`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::{bail, Result};
use mnema_extract::image::{decode_image, file_decode_cost, prepare_for_ocr, DecodeCost, Preprocess};
use mnema_extract::ocr::{engines_in, error_rates, join_lines, EngineOptions, OcrPool};
use mnema_server::wire::OcrOut;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
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
    let registry = engines_in(&mnema_extract::Runtime::from_config(&ctx.config));
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
    let mut failed = 0;
    // One engine per core, as many as the budget holds (the largest engine decides).
    let largest = registry.iter().filter(|e| e.available).map(|e| e.memory).max().unwrap_or(80 << 20).max(1);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(a.images.len().max(1))
        .min((ctx.models.budget() / largest).max(1) as usize);
    let est = |name: &str| registry.iter().find(|e| e.name == name).map_or(80 << 20, |e| e.memory) * workers as u64;
    // Pools are cached by engine and worker count: a pool of one is never used as two.
    let load = |name: &'static str| {
        ctx.models.acquire(&format!("ocr:{name}:{workers}"), est(name), || {
            OcrPool::new(name, &EngineOptions::new(&mnema_extract::Runtime::from_config(&ctx.config)), workers)
        })
    };
    // Images go in batches bounded by their pixels (read from each header), and within a
    // batch as many decode at once as the budget holds: decoded pages never outgrow
    // --memory-budget however many images are named.
    let cap = (ctx.models.budget() / 8).max(1);
    let steps = Preprocess::from_setting(&ctx.config.ocr_preprocess);
    let mut batches: Vec<Vec<(&PathBuf, DecodeCost)>> = vec![Vec::new()];
    for p in &a.images {
        let cost = file_decode_cost(p).unwrap_or_default();
        if let Some(e) = cost.refusal(steps, ctx.models.budget()) {
            failed += 1;
            unreadable(ctx, p, names.first().copied().unwrap_or(""), &e)?;
            continue;
        }
        let last = batches.last_mut().expect("one batch at least");
        if !last.is_empty() && (last.iter().map(|b| b.1.pixels).sum::<u64>() + cost.pixels > cap || last.len() >= 32) {
            batches.push(vec![(p, cost)]);
        } else {
            last.push((p, cost));
        }
    }
    for (round, name) in names.iter().copied().enumerate() {
        for batch in &batches {
            if batch.is_empty() {
                continue;
            }
            // Charged before any pixel is decoded: the batch's prepared pages until its OCR
            // ends, and as many decodes at once as fit beside them and the engine.
            let largest = batch.iter().map(|b| b.1.bytes).max().unwrap_or(0).max(1);
            let pages_bytes: u64 = batch.iter().map(|b| b.1.page_bytes(steps)).sum();
            let room = ctx.models.budget().saturating_sub(pages_bytes + est(name)) / largest;
            let at_once = (rayon::current_num_threads() as u64).min(room).max(1) as usize;
            let wait = std::time::Duration::from_secs(60);
            let _pages = ctx.models.reserve_within("prepared pages", pages_bytes, wait)?;
            // The engine starts while the first batch decodes (its load is a few tenths of a
            // second that would otherwise come before any recognition); a failure shows below.
            let prepared: Vec<_> = std::thread::scope(|s| {
                s.spawn(move || drop(load(name)));
                let _s = mnema_core::profile::stage("decode");
                let _decoding = ctx.models.reserve_within("image decoding", at_once as u64 * largest, wait)?;
                let mut out = Vec::with_capacity(batch.len());
                for group in batch.chunks(at_once) {
                    out.par_extend(group.par_iter().map(|(p, _)| decode_image(p, 256 << 20).map(|img| prepare_for_ocr(&img, steps))));
                }
                Ok::<_, mnema_models::ModelError>(out)
            })?;
            let mut paths = Vec::new();
            let mut pages = Vec::new();
            for ((p, _), r) in batch.iter().zip(prepared) {
                match r {
                    Ok(g) => {
                        paths.push(*p);
                        pages.push(g);
                    }
                    // Bad images are reported once, on the first engine's round.
                    Err(e) if round == 0 => {
                        failed += 1;
                        unreadable(ctx, p, name, &e.to_string())?;
                    }
                    Err(_) => {}
                }
            }
            if pages.is_empty() {
                continue;
            }
            let pool = load(name)?;
            let t0 = Instant::now();
            let results = pool.recognize_all(&pages);
            drop(pages);
            let per_image = t0.elapsed().as_secs_f64() * 1e3 / results.len().max(1) as f64;
            for (path, r) in paths.into_iter().zip(results) {
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
        }
        ctx.models.unload_all();
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}

/// Reports an image that could not be read or decoded: one line on stderr, and with `--json`
/// its record with the error.
fn unreadable(ctx: &Ctx, path: &Path, engine: &str, error: &str) -> Result<()> {
    eprintln!("mnema: {}: {error}", path.display());
    if ctx.json {
        out_json(&OcrOut {
            path: path.display().to_string(),
            engine: engine.to_string(),
            text: String::new(),
            lines: vec![],
            elapsed_ms: 0.0,
            peak_rss_mb: 0.0,
            cer: None,
            wer: None,
            error: Some(error.to_string()),
        })?;
    }
    Ok(())
}
