//! Speech to text on the real Whisper base weights (CTranslate2 file as shipped) and Silero
//! VAD, over audio made here with espeak-ng, sox and ffmpeg. English espeak speech is what
//! Whisper base reads well (WER ≈ 0.1 for the reference implementation), so accuracy is judged
//! on it; timing, silence and bad input do not depend on the language.

use mnema_extract::audio::{decode_file, AudioStream};
use mnema_extract::ocr::error_rates;
use mnema_extract::vad::{SileroVad, Vad};
use mnema_extract::whisper::{load_whisper, TranscribeOptions, Transcript, Whisper};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn models_dir() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn whisper() -> &'static Whisper {
    static W: OnceLock<Whisper> = OnceLock::new();
    W.get_or_init(|| load_whisper(&mnema_extract::Runtime::new(&models_dir()), "whisper-base").expect("whisper-base: run scripts/setup.sh"))
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnema-speech-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Speaks `text` (espeak-ng, voice `lang`) into a 16 kHz WAV with `before`/`after` seconds of
/// silence around it.
fn speech(name: &str, lang: &str, text: &str, before: f32, after: f32) -> PathBuf {
    let raw = dir().join(format!("{name}.raw.wav"));
    let out = dir().join(format!("{name}.wav"));
    assert!(Command::new("espeak-ng").args(["-v", lang, "-s", "150", "-w"]).arg(&raw).arg(text).status().unwrap().success());
    assert!(Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1"])
        .arg(&out)
        .args(["pad", &before.to_string(), &after.to_string()])
        .status()
        .unwrap()
        .success());
    out
}

fn concat(name: &str, parts: &[&Path]) -> PathBuf {
    let out = dir().join(format!("{name}.wav"));
    assert!(Command::new("sox").args(parts).arg(&out).status().unwrap().success());
    out
}

fn transcribe(path: &Path, vad: bool, opts: &TranscribeOptions) -> Transcript {
    let mut stream = AudioStream::open(path).unwrap();
    if vad {
        let mut v = SileroVad::load(&mnema_extract::Runtime::new(&models_dir())).expect("silero VAD and onnxruntime: run scripts/setup.sh");
        whisper().transcribe(&mut stream, Some(&mut v as &mut dyn Vad), opts, |_, _| {}).unwrap()
    } else {
        whisper().transcribe(&mut stream, None, opts, |_, _| {}).unwrap()
    }
}

fn ru_en() -> TranscribeOptions {
    TranscribeOptions { candidates: vec!["ru".into(), "en".into()], ..Default::default() }
}

const FOX: &str = "The quick brown fox jumps over the lazy dog.";
const NOTES: &str = "Yesterday I wrote down some ideas about searching my notes by meaning.";
const TRAIN: &str = "The train to the city leaves at seven in the morning.";

#[test]
fn english_speech_with_timestamps_and_language() {
    let p = speech("fox", "en", &format!("{FOX} {NOTES}"), 3.0, 1.0);
    let t = transcribe(&p, true, &ru_en());
    assert_eq!(t.language, "en");
    let (_, wer) =
        error_rates(&t.text().to_lowercase().replace(['.', ','], ""), &format!("{FOX} {NOTES}").to_lowercase().replace(['.', ','], ""));
    assert!(wer <= 0.25, "WER {wer:.2}: {}", t.text());
    // Speech starts after 3 s of silence: the first segment says so (±0.7 s).
    let first = &t.segments[0];
    assert!((2300..=3700).contains(&first.start_ms), "first segment at {} ms", first.start_ms);
    assert!(t.segments.windows(2).all(|w| w[0].end_ms <= w[1].start_ms + 50), "segments in order: {:?}", t.segments);
    let len_ms = decode_file(&p).unwrap().len() as i64 / 16;
    assert_eq!(t.audio_ms, len_ms);
    assert!(t.segments.last().unwrap().end_ms <= len_ms + 100);
}

#[test]
fn long_recording_seeks_across_windows_and_skips_silence() {
    // A sentence, 40 s of silence, another sentence, 25 s of silence, a third: three
    // windows' worth, with the second sentence straddling nothing and the silences skipped.
    let a = speech("a", "en", FOX, 0.5, 40.0);
    let b = speech("b", "en", NOTES, 0.0, 25.0);
    let c = speech("c", "en", TRAIN, 0.0, 0.5);
    let long = concat("long", &[&a, &b, &c]);
    let t = transcribe(&long, true, &ru_en());
    let find = |word: &str| {
        t.segments.iter().find(|s| s.text.to_lowercase().contains(word)).unwrap_or_else(|| panic!("no '{word}' in {:?}", t.segments))
    };
    let dur = |p: &Path| decode_file(p).unwrap().len() as i64 / 16;
    let (ta, tb) = (dur(&a), dur(&b));
    let fox = find("fox");
    let notes = find("notes");
    let train = find("train");
    assert!(fox.start_ms < 2000, "{fox:?}");
    assert!((notes.start_ms - ta).abs() < 1500, "notes at {} ms, spoken at {ta} ms", notes.start_ms);
    assert!((train.start_ms - (ta + tb)).abs() < 1500, "train at {} ms, spoken at {} ms", train.start_ms, ta + tb);
    assert!(t.skipped_ms >= 30_000, "silence was skipped: {t:?}");
    // Nothing invented in the silences.
    assert!(t.segments.len() <= 6, "{:?}", t.segments);
}

#[test]
fn silence_and_noise_give_no_text() {
    let silence = dir().join("silence.wav");
    assert!(Command::new("sox").args(["-n", "-r", "16000", "-c", "1"]).arg(&silence).args(["trim", "0", "45"]).status().unwrap().success());
    let noise = dir().join("noise.wav");
    assert!(Command::new("sox")
        .args(["-n", "-r", "16000", "-c", "1"])
        .arg(&noise)
        .args(["synth", "20", "brownnoise", "vol", "0.05"])
        .status()
        .unwrap()
        .success());
    for (p, vad) in [(&silence, true), (&silence, false), (&noise, true)] {
        let t = transcribe(p, vad, &ru_en());
        assert!(t.segments.is_empty(), "{} (vad {vad}): invented {:?}", p.display(), t.segments);
    }
}

#[test]
fn containers_and_codecs() {
    let wav = speech("fmt", "en", TRAIN, 0.5, 0.5);
    let ff = |args: &[&str], out: &str| -> PathBuf {
        let p = dir().join(out);
        let ok = Command::new("ffmpeg").args(["-y", "-loglevel", "error"]).args(args).arg(&p).status().unwrap().success();
        assert!(ok, "ffmpeg {args:?}");
        p
    };
    let w = wav.to_str().unwrap();
    let mp3 = ff(&["-i", w, "-ar", "44100", "-ac", "2"], "fmt.mp3");
    let m4a = ff(&["-i", w, "-c:a", "aac", "-ar", "48000"], "fmt.m4a");
    let flac = ff(&["-i", w], "fmt.flac");
    let ogg = ff(&["-i", w, "-c:a", "libvorbis"], "fmt.ogg");
    // A video with an audio track: the audio is transcribed.
    let mp4 = ff(&["-f", "lavfi", "-i", "color=c=blue:s=160x120:d=4", "-i", w, "-shortest", "-c:v", "mpeg4", "-c:a", "aac"], "fmt.mp4");
    for p in [&mp3, &m4a, &flac, &ogg, &mp4] {
        let t = transcribe(p, false, &ru_en());
        assert!(t.text().to_lowercase().contains("train"), "{}: {}", p.display(), t.text());
    }
    // Opus has no decoder here: a clear error naming the codec.
    let opus = ff(&["-i", w, "-c:a", "libopus"], "fmt.opus");
    let err = AudioStream::open(&opus).and_then(|mut s| s.read_all()).expect_err("opus decoded?").to_string();
    assert!(err.contains("unsupported"), "{err}");
}

#[test]
fn bad_audio_is_refused_with_a_reason() {
    let d = dir();
    let err =
        |p: &Path| AudioStream::open(p).and_then(|mut s| s.read_all()).err().map(|e| e.to_string()).unwrap_or_else(|| "decoded".into());
    std::fs::write(d.join("zero.wav"), b"").unwrap();
    assert!(err(&d.join("zero.wav")).contains("empty file"));
    std::fs::write(d.join("junk.m4a"), vec![7u8; 20_000]).unwrap();
    assert!(err(&d.join("junk.m4a")).contains("not a readable audio file"));
    // An MP3 cut in half still gives its first half.
    let wav = speech("cut", "en", FOX, 0.2, 0.2);
    let mp3 = d.join("cut.mp3");
    assert!(Command::new("ffmpeg").args(["-y", "-loglevel", "error", "-i"]).arg(&wav).arg(&mp3).status().unwrap().success());
    let full = std::fs::read(&mp3).unwrap();
    std::fs::write(d.join("half.mp3"), &full[..full.len() / 2]).unwrap();
    let half = decode_file(&d.join("half.mp3")).unwrap();
    let whole = decode_file(&mp3).unwrap();
    assert!(half.len() > whole.len() / 3 && half.len() < whole.len() * 2 / 3, "{} of {}", half.len(), whole.len());
}

#[test]
fn beam_search_reads_as_well_as_greedy() {
    let text = format!("{TRAIN} {NOTES}");
    let p = speech("beam", "en", &text, 1.0, 1.0);
    let norm = |s: &str| s.to_lowercase().replace(['.', ','], "");
    let greedy = transcribe(&p, true, &ru_en());
    let beam = transcribe(&p, true, &TranscribeOptions { beam: 5, ..ru_en() });
    let (_, wg) = error_rates(&norm(&greedy.text()), &norm(&text));
    let (_, wb) = error_rates(&norm(&beam.text()), &norm(&text));
    assert!(wb <= 0.25 && wb <= wg + 0.1, "beam WER {wb:.2} ({}), greedy {wg:.2}", beam.text());
    assert!(!beam.segments.is_empty() && beam.segments.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
    assert!((500..=1800).contains(&beam.segments[0].start_ms), "{:?}", beam.segments);
}

/// Receives one tensor of the hub's layout: name, values, dims.
type Put<'a> = dyn FnMut(String, &[f32], &[usize]) + 'a;

/// The hub's layout (`mnema models fetch --hub whisper-base` downloads `openai/whisper-base`
/// safetensors): the shipped weights rewritten under the hub's tensor names — q, k, v as
/// separate matrices, no key bias, `weight`/`bias` for the norms — must load through the
/// safetensors path and read the same words as the CTranslate2 file.
#[test]
fn hub_safetensors_layout_reads_the_same() {
    use candle_core::{DType, Device, Tensor};
    let ct2 = mnema_models::ct2::Ct2File::open(&models_dir().join("whisper-base/model.bin")).unwrap();
    let names: Vec<String> = ct2.names().map(String::from).collect();
    let mut hub = std::collections::HashMap::new();
    let mut put = |name: String, vals: &[f32], dims: &[usize]| {
        hub.insert(name, Tensor::from_slice(vals, dims, &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap());
    };
    for name in &names {
        let Ok((vals, dims)) = ct2.f32(name) else { continue };
        if dims.is_empty() {
            continue; // scalars: flags and head counts
        }
        let p: Vec<&str> = name.split('/').collect();
        let side = p[0];
        let norm = |g: &str| if g == "gamma" { "weight" } else { "bias" };
        match p.as_slice() {
            [_, "conv1" | "conv2", w] => put(format!("model.{side}.{}.{w}", p[1]), &vals, &dims),
            [_, "position_encodings", _] => put(format!("model.{side}.embed_positions.weight"), &vals, &dims),
            ["decoder", "embeddings", _] => put("model.decoder.embed_tokens.weight".into(), &vals, &dims),
            [_, "layer_norm", g] => put(format!("model.{side}.layer_norm.{}", norm(g)), &vals, &dims),
            [_, layer, module, sub, rest @ ..] => {
                let l = format!("model.{side}.layers.{}", layer.trim_start_matches("layer_"));
                let attn = if *module == "self_attention" { "self_attn" } else { "encoder_attn" };
                let w = rest.last().copied().unwrap_or("");
                // Stacked projections are split back into the hub's separate matrices.
                let split = |parts: &[&str], put: &mut Put| {
                    let rows = dims[0] / parts.len();
                    let cols: usize = dims[1..].iter().product();
                    for (i, part) in parts.iter().enumerate() {
                        let chunk = &vals[i * rows * cols..(i + 1) * rows * cols];
                        if *part == "k_proj" && w == "bias" {
                            assert!(chunk.iter().all(|&x| x == 0.0), "{name}: key bias is not zero");
                            continue;
                        }
                        let d: Vec<usize> = std::iter::once(rows).chain(dims[1..].iter().copied()).collect();
                        put(format!("{l}.{attn}.{part}.{w}"), chunk, &d);
                    }
                };
                match (*module, *sub) {
                    ("ffn", "layer_norm") => put(format!("{l}.final_layer_norm.{}", norm(w)), &vals, &dims),
                    ("ffn", "linear_0") => put(format!("{l}.fc1.{w}"), &vals, &dims),
                    ("ffn", "linear_1") => put(format!("{l}.fc2.{w}"), &vals, &dims),
                    (_, "layer_norm") => put(format!("{l}.{attn}_layer_norm.{}", norm(w)), &vals, &dims),
                    ("self_attention", "linear_0") => split(&["q_proj", "k_proj", "v_proj"], &mut put),
                    ("self_attention", "linear_1") | ("attention", "linear_2") => put(format!("{l}.{attn}.out_proj.{w}"), &vals, &dims),
                    ("attention", "linear_0") => put(format!("{l}.{attn}.q_proj.{w}"), &vals, &dims),
                    ("attention", "linear_1") => split(&["k_proj", "v_proj"], &mut put),
                    other => panic!("unmapped tensor {name} {other:?}"),
                }
            }
            _ => panic!("unmapped tensor {name}"),
        }
    }
    assert!(
        hub.contains_key("model.encoder.layers.5.self_attn.k_proj.weight")
            && !hub.contains_key("model.encoder.layers.0.self_attn.k_proj.bias")
    );
    let home = dir().join("hub-models");
    let dst = home.join("whisper-base");
    std::fs::create_dir_all(&dst).unwrap();
    candle_core::safetensors::save(&hub, dst.join("model.safetensors")).unwrap();
    drop(hub);
    std::fs::copy(models_dir().join("whisper-base/tokenizer.json"), dst.join("tokenizer.json")).unwrap();
    let from_hub = load_whisper(&mnema_extract::Runtime::new(&home), "whisper-base").unwrap();
    let p = speech("hub", "en", &format!("{FOX} {TRAIN}"), 0.5, 0.5);
    let opts = ru_en();
    let read = |w: &Whisper| w.transcribe(&mut AudioStream::open(&p).unwrap(), None, &opts, |_, _| {}).unwrap();
    let (a, b) = (read(whisper()), read(&from_hub));
    assert_eq!(a.language, b.language);
    assert_eq!(a.text(), b.text(), "same weights, same words");
    let (_, wer) =
        error_rates(&b.text().to_lowercase().replace(['.', ','], ""), &format!("{FOX} {TRAIN}").to_lowercase().replace(['.', ','], ""));
    assert!(wer <= 0.25, "WER {wer:.2}: {}", b.text());
}
