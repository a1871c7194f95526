//! `mnema transcribe AUDIO... [--model NAME] [--language auto|ru|en|ru,en] [--no-vad]`

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mnema_server::wire::TranscribeOut;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Audio or video files (WAV, MP3, M4A/AAC, MP4, Ogg Vorbis, FLAC).
    #[arg(required = true, value_name = "AUDIO")]
    files: Vec<PathBuf>,
    /// Speech model. Default: $MNEMA_SPEECH_MODEL, else whisper-base.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Language: a code (ru, en, …), a list to detect among (ru,en), or auto (any language).
    /// Default: $MNEMA_LANGUAGES, else ru,en.
    #[arg(long, value_name = "LANG")]
    language: Option<String>,
    /// Do not skip silence with voice-activity detection (slower on recordings with pauses).
    #[arg(long)]
    no_vad: bool,
    /// Beam width (1: greedy, the default; 5 is Whisper's usual beam, about 1.6× slower here).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    beam: u16,
}

fn clock(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    let m = (s / 60.0).floor();
    if m >= 60.0 {
        format!("{}:{:02}:{:05.2}", (m / 60.0).floor(), m as i64 % 60, s - m * 60.0)
    } else {
        format!("{:02}:{:05.2}", m as i64, s - m * 60.0)
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result<u8> {
    let model = a.model.unwrap_or_else(|| ctx.config.speech_model.clone());
    let mut opts = mnema_ingest::transcribe_options(a.language.as_deref().unwrap_or(&ctx.config.languages));
    opts.beam = a.beam as usize;
    let whisper = mnema_ingest::acquire_whisper(&ctx.config, &ctx.models, &model)?;
    let vad = if a.no_vad { None } else { Some(mnema_ingest::acquire_vad(&ctx.config, &ctx.models)?) };
    let mut failed = 0;
    for path in &a.files {
        let t0 = Instant::now();
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let r = mnema_ingest::transcribe_file(path, &whisper, vad.as_deref(), &opts, |done, total| {
            if let Some(t) = total {
                bar.set_length(t.max(1) as u64);
            }
            bar.set_position(done.max(0) as u64);
            bar.set_message(format!("{name}: {} transcribed", clock(done)));
        });
        bar.finish_and_clear();
        let elapsed_ms = (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        match r {
            Ok(t) => {
                let o = TranscribeOut {
                    path: path.display().to_string(),
                    model: model.clone(),
                    language: Some(t.language.clone()),
                    text: t.text(),
                    segments: t.segments.clone(),
                    audio_ms: t.audio_ms,
                    elapsed_ms,
                    error: None,
                };
                if ctx.json {
                    out_json(&o)?;
                } else {
                    let speed = if elapsed_ms > 0.0 { t.audio_ms as f64 / elapsed_ms } else { 0.0 };
                    out(format!(
                        "== {} [{}, {} of audio in {:.1}s, {speed:.1}× real time]",
                        o.path,
                        t.language,
                        clock(t.audio_ms),
                        elapsed_ms / 1000.0
                    ))?;
                    if t.segments.is_empty() {
                        out("(no speech)")?;
                    }
                    for s in &t.segments {
                        out(format!("[{} → {}] {}", clock(s.start_ms), clock(s.end_ms), s.text))?;
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("mnema: {}: {e}", path.display());
                if ctx.json {
                    out_json(&TranscribeOut {
                        path: path.display().to_string(),
                        model: model.clone(),
                        language: None,
                        text: String::new(),
                        segments: vec![],
                        audio_ms: 0,
                        elapsed_ms,
                        error: Some(e.to_string()),
                    })?;
                }
            }
        }
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}
