//! Speech to text with Whisper (multilingual base by default), in Rust over candle.
//!
//! The audio is read as a stream and transcribed in 30 s windows: each window's log-mel goes
//! through the encoder once, then the decoder writes timestamped text greedily (or by beam
//! search), and the next window starts where the last complete segment ended, so words cut
//! at a window's edge are heard whole in the next. A voice-activity pass skips silence before
//! the model sees it. The usual guards against invented text apply per window: a
//! no-speech probability with a log-probability check, temperature fallback when the output
//! is repetitive (gzip compression ratio) or improbable, and repeated segments dropped from a
//! window whose text stays a loop at every temperature.

pub mod mel;
pub mod model;

use crate::audio::{AudioStream, SAMPLE_RATE};
use crate::vad::Vad;
use crate::{ExtractError, Result};
use mel::{Mel, HOP};
use mnema_models::ModelFiles;
use model::WhisperModel;
use serde::Serialize;
use std::path::Path;
use tokenizers::Tokenizer;

/// Samples in one 30 s window.
pub const WINDOW: usize = 30 * SAMPLE_RATE as usize;
/// Seconds per timestamp token.
const TS_STEP: f64 = 0.02;

/// One stretch of speech with its time in the recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// Start, milliseconds from the beginning of the file.
    pub start_ms: i64,
    /// End, milliseconds.
    pub end_ms: i64,
    /// What was said.
    pub text: String,
}

/// A recording's transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    /// Language code (`ru`, `en`, …) the text is in.
    pub language: String,
    /// Segments in time order.
    pub segments: Vec<Segment>,
    /// Length of the audio, milliseconds.
    pub audio_ms: i64,
    /// Windows skipped as silence (by the voice-activity pass or the no-speech check).
    pub silent_windows: usize,
    /// Audio the model never saw because it was silence, milliseconds.
    pub skipped_ms: i64,
}

impl Transcript {
    /// The segments' text joined by spaces.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(" ")
    }
}

/// How to decode.
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// A language code, or `None` to detect it (among `candidates` when not empty).
    pub language: Option<String>,
    /// Languages detection may choose from (empty: all Whisper knows).
    pub candidates: Vec<String>,
    /// Beam width; 1 is greedy.
    pub beam: usize,
    /// Temperatures tried in order when a window's output fails the checks.
    pub temperatures: Vec<f32>,
    /// Above this gzip ratio the text is a repetition loop.
    pub compression_ratio_threshold: f64,
    /// Below this mean log-probability the text is a guess.
    pub logprob_threshold: f64,
    /// Above this no-speech probability (with a low log-probability) a window is silence.
    pub no_speech_threshold: f64,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            language: None,
            candidates: Vec::new(),
            beam: 1,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: 2.4,
            logprob_threshold: -1.0,
            no_speech_threshold: 0.6,
        }
    }
}

/// Special token ids, looked up in the tokenizer.
#[derive(Debug, Clone, Copy)]
struct Specials {
    eot: u32,
    sot: u32,
    transcribe: u32,
    no_speech: u32,
    no_timestamps: u32,
    ts_begin: u32,
    first_lang: u32,
    last_lang: u32,
}

/// A loaded speech recogniser: model, tokenizer, mel front end.
pub struct Whisper {
    name: String,
    model: WhisperModel,
    tokenizer: Tokenizer,
    mel: Mel,
    sp: Specials,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    languages: Vec<(String, u32)>,
}

/// Names of the speech models mnema can load (the list lives in `mnema-core`).
pub use mnema_core::config::SPEECH_MODELS;
pub use model::SpeechDtype;

/// Expected resident cost of a loaded Whisper model: weights held about as large as the fp16
/// file (8-bit layers, the token table as f16 rows plus 8-bit blocks), plus one window's
/// activations and the tokenizer (measured: ~100 MB over the weights for base).
pub fn estimate_cost(models_dir: &Path, name: &str) -> u64 {
    let dir = models_dir.join(name);
    let size = |f: &str| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
    let weights = match size("model.bin") {
        0 => size("model.safetensors") / 2,
        n => n,
    };
    weights + 130_000_000
}

fn language_codes() -> &'static [&'static str] {
    // Whisper's language tokens, in token order (50259 = en …); the list lives in
    // `mnema-core`, which checks `MNEMA_LANGUAGES` at start.
    &mnema_core::config::SPEECH_LANGUAGES
}

/// Loads a Whisper model by catalog name: CTranslate2 `model.bin` as shipped, or the hub's
/// `model.safetensors`, with `tokenizer.json` and (optionally) `config.json`.
pub fn load_whisper(rt: &crate::Runtime, name: &str) -> Result<Whisper> {
    let models_dir = rt.models_dir.as_path();
    if !SPEECH_MODELS.contains(&name) {
        return Err(mnema_models::ModelError::Unknown(format!("{name} (speech models: {})", SPEECH_MODELS.join(", "))).into());
    }
    let files = ModelFiles::require(models_dir, name, &["tokenizer.json"], &["model.bin", "model.safetensors"])?;
    let tk_path = files.path("tokenizer.json");
    let tokenizer = std::thread::spawn(move || {
        Tokenizer::from_file(&tk_path).map_err(|e| ExtractError::Tokenizer { path: tk_path.clone(), reason: e.to_string() })
    });
    let ct2 = files.path("model.bin");
    let model = if ct2.is_file() {
        WhisperModel::from_ct2(&mnema_models::ct2::Ct2File::open(&ct2)?, rt.speech)?
    } else {
        WhisperModel::from_safetensors(&files.path("model.safetensors"), 8, rt.speech)?
    };
    let tokenizer = tokenizer
        .join()
        .map_err(|_| ExtractError::Tokenizer { path: files.path("tokenizer.json"), reason: "loader panicked".into() })??;
    let id = |t: &str| tokenizer.token_to_id(t);
    let need = |t: &str| {
        id(t).ok_or_else(|| ExtractError::Tokenizer { path: files.path("tokenizer.json"), reason: format!("special token {t} missing") })
    };
    let no_timestamps = need("<|notimestamps|>")?;
    let sp = Specials {
        eot: need("<|endoftext|>")?,
        sot: need("<|startoftranscript|>")?,
        transcribe: need("<|transcribe|>")?,
        no_speech: id("<|nospeech|>")
            .or_else(|| id("<|nocaptions|>"))
            .ok_or_else(|| ExtractError::Tokenizer { path: files.path("tokenizer.json"), reason: "no-speech token missing".into() })?,
        no_timestamps,
        ts_begin: no_timestamps + 1,
        first_lang: need("<|en|>")?,
        last_lang: need("<|translate|>")? - 1,
    };
    // The list of non-speech tokens to suppress comes with the model (config.json), else
    // Whisper's defaults are derived from the special tokens alone.
    let config: Option<serde_json::Value> = std::fs::read(files.path("config.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let ids = |k: &str| -> Vec<u32> {
        config
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect())
            .unwrap_or_default()
    };
    // CTranslate2's config names them `suppress_ids*`, the hub's `*suppress_tokens`.
    let mut suppress = ids("suppress_ids");
    suppress.extend(ids("suppress_tokens"));
    for t in ["<|translate|>", "<|transcribe|>", "<|startoftranscript|>", "<|startofprev|>", "<|startoflm|>"] {
        suppress.extend(id(t));
    }
    suppress.push(sp.no_speech);
    let mut suppress_begin = ids("suppress_ids_begin");
    suppress_begin.extend(ids("begin_suppress_tokens"));
    if suppress_begin.is_empty() {
        suppress_begin = tokenizer.encode(" ", false).map(|e| e.get_ids().to_vec()).unwrap_or_default();
        suppress_begin.push(sp.eot);
    }
    let languages = language_codes()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), sp.first_lang + i as u32))
        .filter(|(_, t)| *t <= sp.last_lang)
        .collect();
    mnema_models::release_free_memory();
    let n_mels = model.shape.n_mels;
    Ok(Whisper { name: name.into(), model, tokenizer, mel: Mel::new(n_mels), sp, suppress, suppress_begin, languages })
}

/// One decoding attempt of a window.
struct Attempt {
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
    text: String,
    compression_ratio: f64,
}

fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + v.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    v.iter().map(|x| x - lse).collect()
}

/// gzip-style compression ratio of a text: high means repetitive (a decoding loop).
pub fn compression_ratio(text: &str) -> f64 {
    use std::io::Write;
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(text.as_bytes());
    let n = z.finish().map_or(1, |v| v.len().max(1));
    text.len() as f64 / n as f64
}

/// A small deterministic generator for temperature sampling.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Whisper {
    /// Catalog name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes
    }

    /// Language codes the model knows.
    pub fn language_codes(&self) -> Vec<&str> {
        self.languages.iter().map(|(c, _)| c.as_str()).collect()
    }

    fn lang_token(&self, code: &str) -> Result<u32> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, t)| *t)
            .ok_or_else(|| ExtractError::BadInput(format!("unknown language '{code}' (e.g. ru, en)")))
    }

    /// Encodes one window of samples (zero-padded to 30 s).
    fn encode_window(&self, samples: &[f32]) -> Result<candle_core::Tensor> {
        let mut w = samples.to_vec();
        w.resize(WINDOW, 0.0);
        let mel = {
            let _s = mnema_core::profile::stage("asr");
            self.mel.compute(&w)
        };
        self.model.encode(&mel, WINDOW / HOP)
    }

    /// The most likely language of encoded audio among `candidates` (all when empty).
    fn detect(&self, start: &model::DecoderState, candidates: &[String]) -> Result<(String, f32)> {
        let mut st = start.clone();
        let logits = self.model.step(&mut st, &[self.sp.sot], 1)?.squeeze(0)?.to_vec1::<f32>()?;
        let langs: Vec<&(String, u32)> = self.languages.iter().filter(|(c, _)| candidates.is_empty() || candidates.contains(c)).collect();
        let lp = log_softmax(&langs.iter().map(|(_, t)| logits[*t as usize]).collect::<Vec<_>>());
        let (i, p) = lp.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, p)| (i, p.exp())).unwrap_or((0, 0.0));
        Ok((langs.get(i).map_or("en".into(), |l| l.0.clone()), p))
    }

    /// Suppresses what Whisper's rules forbid at this point of the sequence; returns the
    /// log-probabilities of what is left.
    fn filter(&self, logits: &mut [f32], sampled: &[u32], max_initial_ts: u32) -> Vec<f32> {
        let sp = self.sp;
        let ninf = f32::NEG_INFINITY;
        for &t in &self.suppress {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = ninf;
            }
        }
        if sampled.is_empty() {
            for &t in &self.suppress_begin {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = ninf;
                }
            }
        }
        logits[sp.no_timestamps as usize] = ninf;
        let ts = sp.ts_begin as usize;
        let is_ts = |t: u32| t >= sp.ts_begin;
        let last_ts = sampled.last().is_some_and(|&t| is_ts(t));
        let penult_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_ts {
            if penult_ts {
                logits[ts..].fill(ninf); // after a pair, text (or the end) comes
            } else {
                logits[..sp.eot as usize].fill(ninf); // a lone timestamp must be closed
            }
        }
        // Timestamps never go backwards (and a closing one does not repeat the opening one).
        if let Some(&last) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            let floor = if last_ts && !penult_ts { last } else { last + 1 };
            let end = (floor as usize).min(logits.len());
            logits[ts..end].fill(ninf);
        }
        if sampled.is_empty() {
            logits[..ts].fill(ninf); // the text starts with a timestamp …
            let end = ts + max_initial_ts as usize + 1; // … within the first second
            if end < logits.len() {
                logits[end..].fill(ninf);
            }
        }
        // When timestamps together are likelier than any text token, take a timestamp.
        let lp = log_softmax(logits);
        let ts_mass = {
            let m = lp[ts..].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            if m == f32::NEG_INFINITY {
                m
            } else {
                m + lp[ts..].iter().map(|x| (x - m).exp()).sum::<f32>().ln()
            }
        };
        let text_max = lp[..ts].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut lp = lp;
        if ts_mass > text_max {
            logits[..ts].fill(ninf);
            // Renormalised over what is left: the timestamps' share becomes the whole.
            lp[..ts].fill(ninf);
            lp[ts..].iter_mut().for_each(|x| *x -= ts_mass);
        }
        lp
    }

    /// Decodes one window at one temperature.
    /// Beam search at temperature 0: `width` hypotheses, each with its own key/value cache
    /// (cloning shares the window's cross-attention keys); finished hypotheses are ranked by
    /// mean log-probability, as Whisper's length penalty of 1 does.
    fn decode_beam(&self, start: &model::DecoderState, lang: u32, width: usize) -> Result<Attempt> {
        let max_len = self.model.shape.text_ctx / 2;
        let (st, no_speech_prob, first) = self.prompt(start, lang)?;
        let max_initial_ts = (1.0 / TS_STEP) as u32;
        // (tokens, sum of log-probabilities, state, logits for the next token)
        let mut beams: Vec<(Vec<u32>, f64, model::DecoderState, Vec<f32>)> = vec![(Vec::new(), 0.0, st, first)];
        let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
        while !beams.is_empty() && finished.len() < width {
            let mut cands: Vec<(f64, usize, u32)> = Vec::new();
            for (b, (tokens, sum, _, logits)) in beams.iter_mut().enumerate() {
                let lp = self.filter(logits, tokens, max_initial_ts);
                let mut idx: Vec<usize> = (0..lp.len()).filter(|&i| lp[i].is_finite()).collect();
                let k = (width + 1).min(idx.len());
                if k == 0 {
                    continue;
                }
                idx.select_nth_unstable_by(k - 1, |&x, &y| lp[y].total_cmp(&lp[x]));
                cands.extend(idx[..k].iter().map(|&i| (*sum + lp[i] as f64, b, i as u32)));
            }
            cands.sort_by(|x, y| y.0.total_cmp(&x.0));
            let mut next = Vec::new();
            for (score, b, tok) in cands {
                if next.len() >= width {
                    break;
                }
                let tokens = &beams[b].0;
                if tok == self.sp.eot || tokens.len() >= max_len {
                    if finished.len() < width {
                        finished.push((tokens.clone(), score));
                    }
                    continue;
                }
                let mut st = beams[b].2.clone();
                if st.len + 1 >= self.model.shape.text_ctx {
                    finished.push((tokens.clone(), score));
                    continue;
                }
                let logits = self.model.step(&mut st, &[tok], 1)?.squeeze(0)?.to_vec1::<f32>()?;
                let mut t = tokens.clone();
                t.push(tok);
                next.push((t, score, st, logits));
            }
            beams = next;
        }
        if finished.is_empty() {
            finished.extend(beams.into_iter().map(|(t, s, _, _)| (t, s)));
        }
        let (tokens, sum) = finished
            .into_iter()
            .max_by(|a, b| (a.1 / (a.0.len() + 1) as f64).total_cmp(&(b.1 / (b.0.len() + 1) as f64)))
            .unwrap_or_default();
        Ok(self.attempt(tokens, sum, no_speech_prob))
    }

    /// Feeds the start-of-transcript prompt: the decoder state after it, the no-speech
    /// probability (read at the first position, as Whisper does) and the first token's logits.
    fn prompt(&self, start: &model::DecoderState, lang: u32) -> Result<(model::DecoderState, f64, Vec<f32>)> {
        let prompt = [self.sp.sot, lang, self.sp.transcribe];
        let mut st = start.clone();
        let logits = self.model.step(&mut st, &prompt, prompt.len())?;
        let no_speech_prob = log_softmax(&logits.get(0)?.to_vec1::<f32>()?)[self.sp.no_speech as usize].exp() as f64;
        Ok((st, no_speech_prob, logits.get(prompt.len() - 1)?.to_vec1::<f32>()?))
    }

    fn attempt(&self, tokens: Vec<u32>, sum_lp: f64, no_speech_prob: f64) -> Attempt {
        let text = self.text_of(&tokens);
        Attempt {
            avg_logprob: sum_lp / (tokens.len() + 1) as f64,
            no_speech_prob,
            compression_ratio: compression_ratio(&text),
            text,
            tokens,
        }
    }

    fn decode(&self, start: &model::DecoderState, lang: u32, temperature: f32, rng: &mut Rng) -> Result<Attempt> {
        let max_len = self.model.shape.text_ctx / 2;
        let (mut st, no_speech_prob, mut cur) = self.prompt(start, lang)?;
        let mut tokens: Vec<u32> = Vec::new();
        let mut sum_lp = 0f64;
        let max_initial_ts = (1.0 / TS_STEP) as u32;
        loop {
            let lp = self.filter(&mut cur, &tokens, max_initial_ts);
            let next = if temperature <= 0.0 {
                lp.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(self.sp.eot, |(i, _)| i as u32)
            } else {
                let w: Vec<f32> = lp.iter().map(|l| (l / temperature).exp()).collect();
                let total: f32 = w.iter().sum();
                let mut r = rng.next_f32() * total;
                let mut pick = self.sp.eot;
                for (i, x) in w.iter().enumerate() {
                    if *x > 0.0 {
                        pick = i as u32;
                        if r < *x {
                            break;
                        }
                        r -= x;
                    }
                }
                pick
            };
            sum_lp += lp[next as usize] as f64;
            if next == self.sp.eot || tokens.len() >= max_len || st.len + 1 >= self.model.shape.text_ctx {
                break;
            }
            tokens.push(next);
            cur = self.model.step(&mut st, &[next], 1)?.squeeze(0)?.to_vec1::<f32>()?;
        }
        Ok(self.attempt(tokens, sum_lp, no_speech_prob))
    }

    fn text_of(&self, tokens: &[u32]) -> String {
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.sp.eot).collect();
        self.tokenizer.decode(&text, true).unwrap_or_default().trim().to_string()
    }

    /// Transcribes a whole stream. `progress(done_ms, total_ms)` is called after each window.
    pub fn transcribe(
        &self,
        stream: &mut AudioStream,
        vad: Option<&mut dyn Vad>,
        opts: &TranscribeOptions,
        mut progress: impl FnMut(i64, Option<i64>),
    ) -> Result<Transcript> {
        let mut vad = vad;
        let total_ms = stream.duration_ms.map(|d| d as i64);
        let mut buf: Vec<f32> = Vec::with_capacity(WINDOW);
        let mut buf_start: usize = 0; // absolute sample index of buf[0]
        let mut seek: usize = 0;
        let mut eof = false;
        let mut language: Option<(String, u32)> = match &opts.language {
            Some(l) => Some((l.clone(), self.lang_token(l)?)),
            None => None,
        };
        let mut segments = Vec::new();
        let mut silent = 0;
        let mut skipped = 0usize; // samples
                                  // Speech probability per VAD frame, from the start of the file (4 bytes per 32 ms).
        let mut probs: Vec<f32> = Vec::new();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        loop {
            if seek > buf_start {
                let drop = (seek - buf_start).min(buf.len());
                buf.drain(..drop);
                buf_start += drop;
            }
            while !eof && buf.len() < WINDOW {
                let want = WINDOW - buf.len();
                if stream.read(&mut buf, want)? == 0 {
                    eof = true;
                }
            }
            let n = buf.len().min(WINDOW);
            // Too short to hold a word (≤ 0.1 s): the end.
            if n <= SAMPLE_RATE as usize / 10 {
                break;
            }
            // Where speech starts in this window, if anywhere: by the VAD, or without one at
            // least digital silence (below -60 dBFS) is kept from the model, which tends to
            // invent a "you" for it.
            let speech = match vad.as_deref_mut() {
                Some(v) => {
                    let _s = mnema_core::profile::stage("vad");
                    let frame = v.frame();
                    let end_frame = (buf_start + n) / frame;
                    if end_frame > probs.len() {
                        let from = probs.len() * frame;
                        let mut chunk = vec![0f32; buf_start.saturating_sub(from)];
                        chunk.extend_from_slice(&buf[from.saturating_sub(buf_start)..end_frame * frame - buf_start]);
                        probs.extend(v.probabilities(&chunk)?);
                    }
                    let first_frame = (buf_start / frame).min(end_frame);
                    probs[first_frame..end_frame].iter().position(|&p| p >= v.threshold()).map(|i| (first_frame + i) * frame)
                }
                None => buf[..n].iter().position(|x| x.abs() >= 1e-3).map(|i| buf_start + i),
            };
            let pad = SAMPLE_RATE as usize / 5; // keep 200 ms before speech
            match speech {
                None => {
                    // No speech in this window: skipped without running the model.
                    silent += 1;
                    skipped += n;
                    seek = buf_start + n;
                    progress((seek / 16) as i64, total_ms);
                    if eof && seek >= buf_start + buf.len() {
                        break;
                    }
                    continue;
                }
                Some(s) if vad.is_some() && s > buf_start + pad => {
                    skipped += s - pad - buf_start;
                    seek = s - pad;
                    continue;
                }
                _ => {}
            }
            let offset_s = buf_start as f64 / SAMPLE_RATE as f64;
            let t_enc = std::time::Instant::now();
            let audio = self.encode_window(&buf[..n])?;
            let start = self.model.start(&audio)?;
            drop(audio);
            let enc_ms = t_enc.elapsed().as_secs_f64() * 1e3;
            let t_dec = std::time::Instant::now();
            let mut attempts = 0;
            let lang = match &language {
                Some((_, t)) => *t,
                None => {
                    let (code, _p) = self.detect(&start, &opts.candidates)?;
                    let t = self.lang_token(&code)?;
                    language = Some((code, t));
                    t
                }
            };
            let mut tried: Vec<Attempt> = Vec::new();
            let mut accepted = None;
            for &t in &opts.temperatures {
                let a = if t <= 0.0 && opts.beam > 1 {
                    self.decode_beam(&start, lang, opts.beam)?
                } else {
                    self.decode(&start, lang, t, &mut rng)?
                };
                attempts += 1;
                let too_repetitive = a.compression_ratio > opts.compression_ratio_threshold;
                let too_unlikely = a.avg_logprob < opts.logprob_threshold;
                let silence = a.no_speech_prob > opts.no_speech_threshold;
                if !(too_repetitive || too_unlikely) || silence {
                    accepted = Some(a);
                    break;
                }
                tried.push(a);
            }
            // Every temperature failed the checks: keep the most probable attempt that is not
            // a loop (the last, hottest one is usually the wildest guess).
            let a = match accepted {
                Some(a) => a,
                None => {
                    let ratio_ok = |a: &Attempt| a.compression_ratio <= opts.compression_ratio_threshold;
                    let any_ok = tried.iter().any(ratio_ok);
                    tried
                        .into_iter()
                        .filter(|a| !any_ok || ratio_ok(a))
                        .max_by(|x, y| x.avg_logprob.total_cmp(&y.avg_logprob))
                        .expect("at least one temperature")
                }
            };
            tracing::debug!(
                "window at {offset_s:.1}s: encode {enc_ms:.0} ms, decode {} tokens in {:.0} ms ({attempts} attempts), no-speech {:.2}, logprob {:.2}, ratio {:.2}: {}",
                a.tokens.len(),
                t_dec.elapsed().as_secs_f64() * 1e3,
                a.no_speech_prob,
                a.avg_logprob,
                a.compression_ratio,
                a.text
            );
            let window_samples = n;
            let mut advance = window_samples;
            let skip = a.no_speech_prob > opts.no_speech_threshold && a.avg_logprob < opts.logprob_threshold;
            if skip {
                silent += 1;
            } else {
                let (mut segs, adv) = self.segments(&a.tokens, offset_s, window_samples);
                if a.compression_ratio > opts.compression_ratio_threshold {
                    // Still repetitive at every temperature: keep what was said once, not the
                    // loop (a segment repeating the one before it is dropped).
                    tracing::debug!("repetitive output at {offset_s:.1}s kept without repeats");
                    let mut prev: Option<String> = segments.last().map(|s: &Segment| s.text.clone());
                    segs.retain(|s| {
                        let dup = prev.as_deref() == Some(s.text.as_str());
                        prev = Some(s.text.clone());
                        !dup
                    });
                }
                advance = adv;
                segments.extend(segs);
            }
            seek = buf_start + advance.max(HOP);
            progress(((buf_start + advance) / 16) as i64, total_ms);
            if eof && seek >= buf_start + buf.len() {
                break;
            }
        }
        let audio_ms = (stream.position() * 1000 / SAMPLE_RATE as u64) as i64;
        let language = language.map_or_else(|| opts.language.clone().unwrap_or_else(|| "en".into()), |l| l.0);
        Ok(Transcript { language, segments, audio_ms, silent_windows: silent, skipped_ms: (skipped / 16) as i64 })
    }

    /// Cuts a window's tokens into timestamped segments; returns them and how many samples
    /// the window consumed (up to the last complete segment).
    fn segments(&self, tokens: &[u32], offset_s: f64, window_samples: usize) -> (Vec<Segment>, usize) {
        let is_ts = |t: u32| t >= self.sp.ts_begin;
        let ts_s = |t: u32| (t - self.sp.ts_begin) as f64 * TS_STEP;
        let window_s = window_samples as f64 / SAMPLE_RATE as f64;
        let mk = |start: f64, end: f64, toks: &[u32]| -> Option<Segment> {
            let text = self.text_of(toks);
            let (start, end) = (start.min(window_s), end.min(window_s));
            (!text.is_empty()).then(|| Segment {
                start_ms: ((offset_s + start) * 1000.0).round() as i64,
                end_ms: ((offset_s + end.max(start)) * 1000.0).round() as i64,
                text,
            })
        };
        let single_ending = tokens.len() >= 2 && !is_ts(tokens[tokens.len() - 2]) && is_ts(tokens[tokens.len() - 1]);
        let mut cuts: Vec<usize> = (1..tokens.len()).filter(|&i| is_ts(tokens[i - 1]) && is_ts(tokens[i])).collect();
        let mut out = Vec::new();
        if cuts.is_empty() {
            let ts: Vec<u32> = tokens.iter().copied().filter(|&t| is_ts(t)).collect();
            let end = match ts.last() {
                Some(&t) if t != self.sp.ts_begin => ts_s(t),
                _ => window_s,
            };
            let start = ts.first().map_or(0.0, |&t| ts_s(t));
            out.extend(mk(start, end, tokens));
            return (out, window_samples);
        }
        if single_ending {
            cuts.push(tokens.len());
        }
        let mut last = 0;
        for &c in &cuts {
            let s = &tokens[last..c];
            if let (Some(&a), Some(&b)) = (s.first(), s.last()) {
                if is_ts(a) && is_ts(b) {
                    out.extend(mk(ts_s(a), ts_s(b), s));
                }
            }
            last = c;
        }
        let advance = if single_ending {
            window_samples
        } else {
            // Resume from the last complete segment's end: the rest is heard again whole.
            let t = tokens[last - 1];
            ((ts_s(t) * SAMPLE_RATE as f64) as usize).clamp(HOP, window_samples)
        };
        (out, advance)
    }
}

/// Parses `auto`, a code, or a comma-separated candidate list into (language, candidates).
pub fn parse_language(s: &str) -> (Option<String>, Vec<String>) {
    let s = s.trim().to_lowercase();
    if s == "auto" || s.is_empty() {
        return (None, Vec::new());
    }
    let list: Vec<String> = s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
    if list.len() == 1 {
        (Some(list[0].clone()), Vec::new())
    } else {
        (None, list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_ratio_flags_loops() {
        let normal = "The quick brown fox jumps over the lazy dog near the river bank today.";
        let looped = "thank you. ".repeat(30);
        assert!(compression_ratio(normal) < 1.5, "{}", compression_ratio(normal));
        assert!(compression_ratio(&looped) > 2.4, "{}", compression_ratio(&looped));
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn language_argument() {
        assert_eq!(parse_language("auto"), (None, vec![]));
        assert_eq!(parse_language("RU"), (Some("ru".into()), vec![]));
        assert_eq!(parse_language("ru,en"), (None, vec!["ru".into(), "en".into()]));
    }
}
