//! `mnema ingest PATH...`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mnema_ingest::{collect, Ingester, Progress, Status};
use mnema_server::wire::IngestOut;
use mnema_store::Store as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or folders (folders are walked recursively; hidden entries are skipped).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let started = Instant::now();
    let (files, missing) = collect(&args.paths);
    let store = ctx.store()?;
    // What the user ingested here, `mnema serve` may ingest again (POST /api/ingest).
    for root in args.paths.iter().filter_map(|p| p.canonicalize().ok()) {
        store.add_root(&root)?;
    }
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} files, {elapsed} (eta {eta}) {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = |o: &mnema_ingest::Outcome| -> Result<()> {
        if ctx.json {
            bar.suspend(|| out_json(&IngestOut::from(o)))?;
        } else if let Some(e) = &o.error {
            bar.suspend(|| eprintln!("mnema: {}: {e}", o.path.display()));
        }
        Ok(())
    };
    let mut printed: Result<()> = Ok(());
    for o in &missing {
        printed = printed.and(report(o));
    }
    let mut ingester = Ingester::new(&ctx.config, &store, &ctx.models);
    // Long files report their chunks on the bar (stderr); stdout keeps one JSON object per
    // file, as the JSON contract says.
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let outcomes = ingester.run_with(&files, |p| match p {
        Progress::File(o) => {
            bar.inc(1);
            bar.set_message(name(&o.path));
            if printed.is_ok() {
                printed = report(o);
            }
        }
        Progress::Chunks { path, done, total } => bar.set_message(format!("{}: {done}/{total} chunks embedded", name(path))),
    });
    bar.finish_and_clear();
    printed?;
    let outcomes = outcomes?;
    let all: Vec<_> = missing.iter().chain(&outcomes).collect();
    let count = |s: Status| all.iter().filter(|o| o.status == s).count();
    let failed = count(Status::Failed);
    if !ctx.json {
        let chunks: usize = outcomes.iter().map(|o| o.chunks).sum();
        out(format!(
            "indexed {}, unchanged {}, failed {} ({} chunks) in {:.1}s",
            count(Status::Indexed),
            count(Status::Unchanged),
            failed,
            chunks,
            started.elapsed().as_secs_f64()
        ))?;
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}
