//! Voice activity detection: which 32 ms frames of a recording hold speech, so the speech
//! model never runs on silent minutes.
//!
//! `silero` (default) is Silero VAD v6, an ONNX model run by ONNX Runtime (loaded at run time
//! from the `onnxruntime` model directory, or `ORT_DYLIB_PATH`). `energy` is a plain loudness
//! gate used when ONNX Runtime cannot be loaded: it cannot tell speech from music or noise,
//! so it only ever skips near-silence.

use crate::{ExtractError, Result};
use mnema_models::ModelFiles;
use std::path::Path;
use std::sync::OnceLock;

/// A voice-activity detector over 16 kHz mono samples.
pub trait Vad: Send {
    /// Name for status displays.
    fn name(&self) -> &'static str;
    /// Samples per decision.
    fn frame(&self) -> usize;
    /// Probability at or above which a frame counts as speech.
    fn threshold(&self) -> f32;
    /// Forgets the stream so far (a new file starts).
    fn reset(&mut self);
    /// Speech probability of each whole frame of `samples`, continuing the stream.
    fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>>;
}

/// Silero VAD through ONNX Runtime.
pub struct SileroVad {
    session: ort::session::Session,
    state: Vec<f32>,
    context: Vec<f32>,
    output: String,
    state_out: String,
}

const FRAME: usize = 512;
const CONTEXT: usize = 64;

/// The process's ONNX Runtime (a library loads once per process) and the file it came from.
type OrtEnv = (std::path::PathBuf, std::result::Result<ort::environment::Environment, String>);
static ORT_ENV: OnceLock<OrtEnv> = OnceLock::new();

pub(crate) fn ort_env(lib: &Path) -> Result<&'static ort::environment::Environment> {
    let (loaded, env) = ORT_ENV.get_or_init(|| {
        let env = ort::init_from(lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))
            .and_then(|b| b.with_name("mnema").with_telemetry(false).build().map_err(|e| format!("ONNX Runtime failed to start: {e}")));
        (lib.to_path_buf(), env)
    });
    // A second library cannot be loaded beside the first: say so rather than run another.
    if loaded != lib {
        return Err(ExtractError::Unavailable(format!(
            "ONNX Runtime is already loaded from {} in this process; cannot use {}",
            loaded.display(),
            lib.display()
        )));
    }
    env.as_ref().map_err(|e| ExtractError::Unavailable(e.clone()))
}

/// Where the ONNX Runtime library is: the runtime's (`ORT_DYLIB_PATH`), else the
/// `onnxruntime` model files.
pub fn onnxruntime_path(rt: &crate::Runtime) -> Result<std::path::PathBuf> {
    if let Some(p) = &rt.onnxruntime {
        return Ok(p.clone());
    }
    Ok(ModelFiles::require(&rt.models_dir, "onnxruntime", &["libonnxruntime.so"], &[])?.path("libonnxruntime.so"))
}

impl SileroVad {
    /// Loads Silero VAD from the runtime's `silero-vad` model files.
    pub fn load(rt: &crate::Runtime) -> Result<SileroVad> {
        let files = ModelFiles::require(&rt.models_dir, "silero-vad", &["silero_vad.onnx"], &[])?;
        let env = ort_env(&onnxruntime_path(rt)?)?;
        let path = files.path("silero_vad.onnx");
        let fail = |e: String| ExtractError::Model(mnema_models::ModelError::Format { path: path.clone(), reason: e });
        let session = ort::session::Session::builder(env)
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .map_err(|e| fail(e.to_string()))?
            .commit_from_file(&path)
            .map_err(|e| fail(e.to_string()))?;
        let outs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        if outs.len() < 2 {
            return Err(fail(format!("expected 2 outputs, found {outs:?}")));
        }
        Ok(SileroVad {
            session,
            state: vec![0.0; 2 * 128],
            context: vec![0.0; CONTEXT],
            output: outs[0].clone(),
            state_out: outs[1].clone(),
        })
    }
}

impl Vad for SileroVad {
    fn name(&self) -> &'static str {
        "silero"
    }
    fn frame(&self) -> usize {
        FRAME
    }
    fn threshold(&self) -> f32 {
        0.5
    }
    fn reset(&mut self) {
        self.state.fill(0.0);
        self.context.fill(0.0);
    }
    fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        let fail = |e: ort::Error| ExtractError::Engine(format!("voice activity detection failed: {e}"));
        let mut out = Vec::with_capacity(samples.len() / FRAME);
        let mut input = vec![0f32; CONTEXT + FRAME];
        for chunk in samples.chunks_exact(FRAME) {
            // Each frame is fed with the last 64 samples of the one before (Silero v5+).
            input[..CONTEXT].copy_from_slice(&self.context);
            input[CONTEXT..].copy_from_slice(chunk);
            let x = ort::value::Tensor::from_array(([1usize, CONTEXT + FRAME], input.clone())).map_err(fail)?;
            let st = ort::value::Tensor::from_array(([2usize, 1, 128], self.state.clone())).map_err(fail)?;
            let sr = ort::value::Tensor::from_array(((), vec![16_000i64])).map_err(fail)?;
            let res = self.session.run(ort::inputs!["input" => x, "state" => st, "sr" => sr]).map_err(fail)?;
            let (_, p) = res[self.output.as_str()].try_extract_tensor::<f32>().map_err(fail)?;
            out.push(p.first().copied().unwrap_or(0.0));
            let (_, s) = res[self.state_out.as_str()].try_extract_tensor::<f32>().map_err(fail)?;
            if s.len() == self.state.len() {
                self.state.copy_from_slice(s);
            }
            self.context.copy_from_slice(&chunk[FRAME - CONTEXT..]);
        }
        Ok(out)
    }
}

/// A loudness gate: frames quieter than -50 dBFS RMS are silence.
pub struct EnergyVad;

impl Vad for EnergyVad {
    fn name(&self) -> &'static str {
        "energy"
    }
    fn frame(&self) -> usize {
        FRAME
    }
    fn threshold(&self) -> f32 {
        0.5
    }
    fn reset(&mut self) {}
    fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        Ok(samples
            .chunks_exact(FRAME)
            .map(|c| {
                let rms = (c.iter().map(|x| x * x).sum::<f32>() / FRAME as f32).sqrt();
                if rms > 0.003 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect())
    }
}

/// Silero when it loads, else the energy gate (with a warning saying why).
pub fn load_vad(rt: &crate::Runtime) -> Box<dyn Vad> {
    match SileroVad::load(rt) {
        Ok(v) => Box::new(v),
        Err(e) => {
            tracing::warn!("Silero VAD unavailable ({e}); using a loudness gate");
            Box::new(EnergyVad)
        }
    }
}
