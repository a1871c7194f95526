//! The Whisper encoder-decoder over candle, with key/value caches for decoding.
//!
//! One implementation for both weight sources: CTranslate2's `model.bin` (fp16, as the
//! registry package ships it) and Hugging Face safetensors (the hub's original files). Q, K and
//! V are one fused matmul (CTranslate2 stores them stacked; the hub's separate matrices are
//! stacked at load). The decoder caches self-attention keys and values per layer, and the
//! cross-attention keys and values of the current audio window, so each new token costs one
//! row through the layers instead of the whole prefix again.

use crate::dense::{Dense, Precision};
use crate::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};
use mnema_models::ct2::Ct2File;
use std::collections::HashMap;

/// Architecture numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WhisperShape {
    /// Mel bands of the input (80 for base).
    pub n_mels: usize,
    /// Width of the model (512 for base).
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder positions (1500: 30 s after the stride-2 convolution).
    pub audio_ctx: usize,
    /// Decoder positions (448).
    pub text_ctx: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

/// A linear layer. The encoder multiplies 1500 frames at once (compute-bound): bfloat16 panels
/// where the CPU has AVX-512 BF16, else 8-bit blocks or f32 ([`SpeechDtype`]). The
/// decoder runs one token at a time (reading the weights is the cost): 8-bit blocks, a
/// quarter of f32's bytes, as CTranslate2's int8 mode does.
enum Lin {
    F32(Linear),
    Q8(QMatMul, Tensor),
    /// bfloat16 panels (AVX-512 BF16): the encoder's products, twice the f32 rate.
    Dense(Dense),
}

impl Lin {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Lin::F32(l) => l.forward(x),
            Lin::Q8(w, b) => w.forward(x)?.broadcast_add(b),
            Lin::Dense(d) => {
                let mut dims = x.dims().to_vec();
                let y = d.forward(&x.flatten_all()?.to_vec1::<f32>()?);
                if let Some(last) = dims.last_mut() {
                    *last = d.n();
                }
                Tensor::from_vec(y, dims, &Device::Cpu)
            }
        }
    }

    /// As bfloat16 [`Dense`] panels (f32 layers; others unchanged). Only for CPUs with
    /// AVX-512 BF16 ([`SpeechDtype::choose`] decides).
    fn dense(self) -> Result<Lin> {
        Ok(match self {
            Lin::F32(l) => {
                let (n, k) = l.weight().dims2()?;
                let w = l.weight().flatten_all()?.to_vec1::<f32>()?;
                let b = l.bias().map(|b| b.to_vec1::<f32>()).transpose()?.unwrap_or_default();
                Lin::Dense(Dense::new(w, b, n, k, Precision::Bf16))
            }
            other => other,
        })
    }

    fn quantized(self) -> Result<Lin> {
        Ok(match self {
            Lin::F32(l) if l.weight().dim(1)? % 32 == 0 => {
                let q = QTensor::quantize(l.weight(), GgmlDType::Q8_0)?;
                let b = l.bias().cloned().unwrap_or(l.weight().i((.., 0))?.zeros_like()?);
                Lin::Q8(QMatMul::from_qtensor(q)?, b)
            }
            other => other,
        })
    }

    fn bytes(&self) -> usize {
        match self {
            Lin::F32(l) => l.weight().elem_count() * 4,
            Lin::Q8(w, b) => match w {
                QMatMul::QTensor(q) => q.storage_size_in_bytes() + b.elem_count() * 4,
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.elem_count() * t.dtype().size_in_bytes(),
            },
            Lin::Dense(d) => d.bytes(),
        }
    }
}

struct Attn {
    /// Self-attention: q, k, v stacked; cross-attention: q only.
    q_or_qkv: Lin,
    /// Cross-attention only: k, v stacked (applied to the audio features once per window).
    kv: Option<Lin>,
    out: Lin,
    ln: LayerNorm,
}

struct Block {
    attn: Attn,
    cross: Option<Attn>,
    mlp_ln: LayerNorm,
    fc1: Lin,
    fc2: Lin,
}

/// Decoder state for one audio window: cached keys and values. Cloning is cheap (tensors are
/// shared), so one window's cross-attention keys serve language detection and every
/// temperature tried.
#[derive(Clone)]
pub struct DecoderState {
    cross: Vec<(Tensor, Tensor)>,
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens decoded so far (the next token's position).
    pub len: usize,
}

/// A loaded Whisper model.
pub struct WhisperModel {
    /// Architecture numbers.
    pub shape: WhisperShape,
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    enc_pos: Tensor,
    encoder: Vec<Block>,
    enc_ln: LayerNorm,
    /// Token embeddings as f16 rows, for lookups.
    tok_rows: Vec<u16>,
    /// The same table as 8-bit blocks, for the output projection (tied weights).
    logits: QMatMul,
    dec_pos: Tensor,
    decoder: Vec<Block>,
    dec_ln: LayerNorm,
    /// Bytes of weights held.
    pub weight_bytes: usize,
}

/// Where weights come from: a name in CTranslate2's layout, answered from either format.
trait Source {
    fn tensor(&self, name: &str) -> Result<Tensor>;
    fn int(&self, name: &str) -> Option<i64>;
    /// A matrix as IEEE half bits and its dims.
    fn f16_bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)> {
        let t = self.tensor(name)?;
        let dims = t.dims().to_vec();
        Ok((t.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<half::f16>()?.into_iter().map(|h| h.to_bits()).collect(), dims))
    }
}

struct Ct2Source<'a>(&'a Ct2File);

impl Source for Ct2Source<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let (v, dims) = self.0.f32(name)?;
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    }
    fn int(&self, name: &str) -> Option<i64> {
        self.0.int(name)
    }
    fn f16_bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>)> {
        Ok(self.0.f16_bits(name)?)
    }
}

/// Hugging Face names (`model.encoder.layers.0.self_attn.q_proj.weight`…) behind the
/// CTranslate2 names, stacking q/k/v (k has no bias: zeros) as CTranslate2 does.
struct HfSource {
    t: HashMap<String, Tensor>,
    heads: usize,
    path: std::path::PathBuf,
}

impl HfSource {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self
            .t
            .get(name)
            .ok_or_else(|| mnema_models::ModelError::Format { path: self.path.clone(), reason: format!("tensor {name} missing") })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    fn stacked(&self, prefix: &str, parts: &[&str], suffix: &str) -> Result<Tensor> {
        let mut v = Vec::new();
        for p in parts {
            let name = format!("{prefix}.{p}.{suffix}");
            if suffix == "bias" && *p == "k_proj" {
                let q = self.get(&format!("{prefix}.q_proj.bias"))?;
                v.push(q.zeros_like()?);
            } else {
                v.push(self.get(&name)?);
            }
        }
        Ok(Tensor::cat(&v, 0)?)
    }
}

impl Source for HfSource {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let parts: Vec<&str> = name.split('/').collect();
        let side = parts[0]; // encoder | decoder
        let base = format!("model.{side}");
        let wb = |s: &str| {
            if s == "gamma" {
                "weight"
            } else if s == "beta" {
                "bias"
            } else {
                s
            }
            .to_string()
        };
        match parts.as_slice() {
            [_, "conv1" | "conv2", wt] => self.get(&format!("{base}.{}.{wt}", parts[1])),
            [_, "position_encodings", _] => self.get(&format!("{base}.embed_positions.weight")),
            ["decoder", "embeddings", _] => self.get("model.decoder.embed_tokens.weight"),
            [_, "layer_norm", g] => self.get(&format!("{base}.layer_norm.{}", wb(g))),
            [_, layer, module, sub, rest @ ..] => {
                let i = layer.trim_start_matches("layer_");
                let l = format!("{base}.layers.{i}");
                let attn = if *module == "self_attention" { "self_attn" } else { "encoder_attn" };
                match (*module, *sub, rest) {
                    ("ffn", "layer_norm", [g]) => self.get(&format!("{l}.final_layer_norm.{}", wb(g))),
                    ("ffn", "linear_0", [w]) => self.get(&format!("{l}.fc1.{w}")),
                    ("ffn", "linear_1", [w]) => self.get(&format!("{l}.fc2.{w}")),
                    (_, "layer_norm", [g]) => self.get(&format!("{l}.{attn}_layer_norm.{}", wb(g))),
                    ("self_attention", "linear_0", [w]) => self.stacked(&format!("{l}.{attn}"), &["q_proj", "k_proj", "v_proj"], w),
                    ("self_attention", "linear_1", [w]) | ("attention", "linear_2", [w]) => self.get(&format!("{l}.{attn}.out_proj.{w}")),
                    ("attention", "linear_0", [w]) => self.get(&format!("{l}.{attn}.q_proj.{w}")),
                    ("attention", "linear_1", [w]) => self.stacked(&format!("{l}.{attn}"), &["k_proj", "v_proj"], w),
                    _ => self.get(name),
                }
            }
            _ => self.get(name),
        }
    }
    fn int(&self, name: &str) -> Option<i64> {
        name.ends_with("num_heads").then_some(self.heads as i64)
    }
}

fn linear(s: &dyn Source, name: &str) -> Result<Lin> {
    Ok(Lin::F32(Linear::new(s.tensor(&format!("{name}/weight"))?, Some(s.tensor(&format!("{name}/bias"))?))))
}

fn layer_norm(s: &dyn Source, name: &str) -> Result<LayerNorm> {
    Ok(LayerNorm::new(s.tensor(&format!("{name}/gamma"))?, s.tensor(&format!("{name}/beta"))?, 1e-5))
}

fn attn(s: &dyn Source, p: &str, cross: bool) -> Result<Attn> {
    Ok(if cross {
        Attn {
            q_or_qkv: linear(s, &format!("{p}/linear_0"))?,
            kv: Some(linear(s, &format!("{p}/linear_1"))?),
            out: linear(s, &format!("{p}/linear_2"))?,
            ln: layer_norm(s, &format!("{p}/layer_norm"))?,
        }
    } else {
        Attn {
            q_or_qkv: linear(s, &format!("{p}/linear_0"))?,
            kv: None,
            out: linear(s, &format!("{p}/linear_1"))?,
            ln: layer_norm(s, &format!("{p}/layer_norm"))?,
        }
    })
}

fn block(s: &dyn Source, p: &str, decoder: bool, dtype: SpeechDtype) -> Result<Block> {
    let b = Block {
        attn: attn(s, &format!("{p}/self_attention"), false)?,
        cross: if decoder { Some(attn(s, &format!("{p}/attention"), true)?) } else { None },
        mlp_ln: layer_norm(s, &format!("{p}/ffn/layer_norm"))?,
        fc1: linear(s, &format!("{p}/ffn/linear_0"))?,
        fc2: linear(s, &format!("{p}/ffn/linear_1"))?,
    };
    // Encoder: every product runs over 1500 frames at once, in the chosen arithmetic.
    // Decoder: everything applied per token goes 8-bit; the cross-attention K/V projection
    // runs once per window over 1500 frames and stays wide (bfloat16 where the encoder is).
    let lin = |l: Lin| match dtype {
        _ if decoder => l.quantized(),
        SpeechDtype::Bf16 => l.dense(),
        SpeechDtype::Q8 => l.quantized(),
        SpeechDtype::F32 => Ok(l),
    };
    let wide = |l: Lin| if dtype == SpeechDtype::Bf16 { l.dense() } else { Ok(l) };
    let cross = b
        .cross
        .map(|c| -> Result<Attn> {
            Ok(Attn { q_or_qkv: c.q_or_qkv.quantized()?, kv: c.kv.map(wide).transpose()?, out: c.out.quantized()?, ln: c.ln })
        })
        .transpose()?;
    Ok(Block {
        attn: Attn { q_or_qkv: lin(b.attn.q_or_qkv)?, kv: None, out: lin(b.attn.out)?, ln: b.attn.ln },
        cross,
        mlp_ln: b.mlp_ln,
        fc1: lin(b.fc1)?,
        fc2: lin(b.fc2)?,
    })
}

/// GGML Q8_0 blocks (f16 scale, 32 × i8) of a row-major `[rows, cols]` matrix given as f16
/// bits, built row by row so no f32 copy of the whole matrix exists.
fn q8_from_f16(bits: &[u16], rows: usize, cols: usize) -> Result<QTensor> {
    let mut out = Vec::with_capacity(rows * cols / 32 * 34);
    let mut block = [0f32; 32];
    for chunk in bits.chunks_exact(32) {
        for (b, &h) in block.iter_mut().zip(chunk) {
            *b = mnema_models::e5q4::f16_to_f32(h);
        }
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &out, vec![rows, cols], &Device::Cpu)?)
}

/// How the encoder's linear layers hold weights and multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechDtype {
    /// bfloat16 on AVX-512 BF16 CPUs (the default there): twice the f32 rate, half its memory.
    Bf16,
    /// 8-bit blocks (the default elsewhere): ~30% faster than f32 here and a quarter of the
    /// memory, as CTranslate2's int8.
    Q8,
    /// f32.
    F32,
}

impl SpeechDtype {
    /// What the `MNEMA_SPEECH_DTYPE` setting (`auto`, `bf16`, `q8`, `f32`; checked by
    /// `Config::resolve`) gives where the large products run in `dense`: f32 or 8-bit when
    /// asked for, else bfloat16 where the CPU has it (`dense` is bfloat16 only there), else
    /// 8-bit.
    pub fn choose(setting: &str, dense: Precision) -> SpeechDtype {
        match setting.to_ascii_lowercase().as_str() {
            "f32" => SpeechDtype::F32,
            "q8" => SpeechDtype::Q8,
            _ if dense == Precision::Bf16 => SpeechDtype::Bf16,
            _ => SpeechDtype::Q8,
        }
    }
}

/// Scaled dot-product attention over `[1, heads, t, dh]` tensors, with an optional additive mask.
fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dh = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    x.reshape((b, t, heads, d / heads))?.transpose(1, 2)?.contiguous()
}

fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, dh) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * dh))
}

impl WhisperModel {
    /// Builds the model from a CTranslate2 `WhisperSpec` file, its encoder in `dtype`.
    pub fn from_ct2(f: &Ct2File, dtype: SpeechDtype) -> Result<WhisperModel> {
        if f.spec != "WhisperSpec" {
            return Err(mnema_models::ModelError::Format {
                path: f.path().into(),
                reason: format!("spec is {}, expected WhisperSpec", f.spec),
            }
            .into());
        }
        Self::build(&Ct2Source(f), f.names(), dtype)
    }

    /// Builds the model from Hugging Face safetensors (`openai/whisper-*`), its encoder in
    /// `dtype`.
    pub fn from_safetensors(path: &std::path::Path, heads: usize, dtype: SpeechDtype) -> Result<WhisperModel> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| mnema_models::ModelError::Format { path: path.into(), reason: e.to_string() })?;
        let names: Vec<String> = t
            .keys()
            .map(|k| k.replace("model.encoder.layers.", "encoder/layer_").replace("model.decoder.layers.", "decoder/layer_"))
            .collect();
        let src = HfSource { t, heads, path: path.into() };
        Self::build(&src, names.iter().map(String::as_str), dtype)
    }

    fn build<'a>(s: &dyn Source, names: impl Iterator<Item = &'a str>, dtype: SpeechDtype) -> Result<WhisperModel> {
        let mut enc_layers = 0;
        let mut dec_layers = 0;
        for n in names {
            for (prefix, count) in [("encoder/layer_", &mut enc_layers), ("decoder/layer_", &mut dec_layers)] {
                if let Some(rest) = n.strip_prefix(prefix) {
                    if let Some(i) = rest.split(['/', '.']).next().and_then(|i| i.parse::<usize>().ok()) {
                        *count = (*count).max(i + 1);
                    }
                }
            }
        }
        let conv1 = (s.tensor("encoder/conv1/weight")?, s.tensor("encoder/conv1/bias")?);
        let conv2 = (s.tensor("encoder/conv2/weight")?, s.tensor("encoder/conv2/bias")?);
        let enc_pos = s.tensor("encoder/position_encodings/encodings")?;
        let (tok_rows, tok_dims) = s.f16_bits("decoder/embeddings/weight")?;
        let dec_pos = s.tensor("decoder/position_encodings/encodings")?;
        let (vocab, d_model) = match tok_dims.as_slice() {
            [v, d] => (*v, *d),
            other => return Err(crate::ExtractError::ModelContent(format!("token embeddings have shape {other:?}"))),
        };
        if d_model % 32 != 0 {
            return Err(crate::ExtractError::ModelContent(format!("model width {d_model} is not a multiple of 32")));
        }
        let heads = s.int("decoder/num_heads").unwrap_or((d_model / 64) as i64) as usize;
        let shape = WhisperShape {
            n_mels: conv1.0.dim(1)?,
            d_model,
            heads,
            encoder_layers: enc_layers,
            decoder_layers: dec_layers,
            audio_ctx: enc_pos.dim(0)?,
            text_ctx: dec_pos.dim(0)?,
            vocab,
        };
        let encoder = (0..enc_layers).map(|i| block(s, &format!("encoder/layer_{i}"), false, dtype)).collect::<Result<Vec<_>>>()?;
        let decoder = (0..dec_layers).map(|i| block(s, &format!("decoder/layer_{i}"), true, dtype)).collect::<Result<Vec<_>>>()?;
        let bytes = |b: &Block| {
            let a = |a: &Attn| a.q_or_qkv.bytes() + a.kv.as_ref().map_or(0, Lin::bytes) + a.out.bytes();
            a(&b.attn) + b.cross.as_ref().map_or(0, a) + b.fc1.bytes() + b.fc2.bytes()
        };
        let logits_q = q8_from_f16(&tok_rows, vocab, d_model)?;
        let n: usize = encoder.iter().chain(&decoder).map(bytes).sum::<usize>()
            + tok_rows.len() * 2
            + logits_q.storage_size_in_bytes()
            + (enc_pos.elem_count() + dec_pos.elem_count() + conv1.0.elem_count() + conv2.0.elem_count()) * 4;
        Ok(WhisperModel {
            shape,
            conv1,
            conv2,
            enc_pos,
            encoder,
            enc_ln: layer_norm(s, "encoder/layer_norm")?,
            tok_rows,
            logits: QMatMul::from_qtensor(logits_q)?,
            dec_pos,
            decoder,
            dec_ln: layer_norm(s, "decoder/layer_norm")?,
            weight_bytes: n,
        })
    }

    /// Encodes a log-mel window `[n_mels][frames]` (frames = 2 × audio_ctx) into audio features.
    pub fn encode(&self, mel: &[f32], frames: usize) -> Result<Tensor> {
        let _s = mnema_core::profile::stage("asr");
        let x = Tensor::from_slice(mel, (1, self.shape.n_mels, frames), &Device::Cpu)?;
        let x = x.conv1d(&self.conv1.0, 1, 1, 1, 1)?.broadcast_add(&self.conv1.1.reshape((1, (), 1))?)?.gelu_erf()?;
        let x = x.conv1d(&self.conv2.0, 1, 2, 1, 1)?.broadcast_add(&self.conv2.1.reshape((1, (), 1))?)?.gelu_erf()?;
        let x = x.transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.enc_pos.i(..t)?)?;
        for b in &self.encoder {
            let h = b.attn.ln.forward(&x)?;
            if let (Lin::Dense(qkv), Lin::Dense(out), Lin::Dense(fc1), Lin::Dense(fc2)) = (&b.attn.q_or_qkv, &b.attn.out, &b.fc1, &b.fc2) {
                // Over plain rows: fused QKV, attention per head (bfloat16 products), and the
                // MLP with the exact GELU in place.
                let d = self.shape.d_model;
                let qkv = qkv.forward(&h.flatten_all()?.to_vec1::<f32>()?);
                let ctx = crate::bert::attention(&qkv, &[0, t], d, self.shape.heads, out.precision());
                x = (x + Tensor::from_vec(out.forward(&ctx), (1, t, d), &Device::Cpu)?)?;
                let h = b.mlp_ln.forward(&x)?;
                let mut mid = fc1.forward(&h.flatten_all()?.to_vec1::<f32>()?);
                crate::bert::gelu(&mut mid);
                x = (x + Tensor::from_vec(fc2.forward(&mid), (1, t, d), &Device::Cpu)?)?;
                continue;
            }
            let qkv = b.attn.q_or_qkv.forward(&h)?;
            let d = self.shape.d_model;
            let (q, k, v) = (qkv.narrow(2, 0, d)?, qkv.narrow(2, d, d)?, qkv.narrow(2, 2 * d, d)?);
            let heads = self.shape.heads;
            let (q, k, v) = (split_heads(&q, heads)?, split_heads(&k, heads)?, split_heads(&v, heads)?);
            // One head at a time: the 1500×1500 score matrix is 9 MB per head instead of
            // 72 MB for all eight at once (and stays in cache better).
            let mut outs = Vec::with_capacity(heads);
            for h in 0..heads {
                let (qh, kh, vh) = (q.narrow(1, h, 1)?, k.narrow(1, h, 1)?, v.narrow(1, h, 1)?);
                outs.push(sdpa(&qh, &kh, &vh, None)?);
            }
            let a = Tensor::cat(&outs, 1)?;
            drop(outs);
            x = (x + b.attn.out.forward(&merge_heads(&a)?)?)?;
            let h = b.mlp_ln.forward(&x)?;
            x = (&x + b.fc2.forward(&b.fc1.forward(&h)?.gelu_erf()?)?)?;
        }
        Ok(self.enc_ln.forward(&x)?)
    }

    /// A fresh decoder state for one window's audio features (computes cross-attention K, V).
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let mut cross = Vec::with_capacity(self.decoder.len());
        for b in &self.decoder {
            let c = b.cross.as_ref().expect("decoder blocks have cross-attention");
            let kv = c.kv.as_ref().expect("cross-attention has k, v").forward(audio)?;
            let d = self.shape.d_model;
            cross.push((split_heads(&kv.narrow(2, 0, d)?, self.shape.heads)?, split_heads(&kv.narrow(2, d, d)?, self.shape.heads)?));
        }
        Ok(DecoderState { cross, self_kv: vec![None; self.decoder.len()], len: 0 })
    }

    /// Feeds `tokens` after those already in `st`; returns logits `[n, vocab]` for the last
    /// `n` positions (`n` ≤ tokens.len()).
    pub fn step(&self, st: &mut DecoderState, tokens: &[u32], n: usize) -> Result<Tensor> {
        let _s = mnema_core::profile::stage("asr");
        let t = tokens.len();
        if st.len + t > self.shape.text_ctx {
            return Err(crate::ExtractError::Engine(format!("decoder context of {} tokens exceeded", self.shape.text_ctx)));
        }
        let d = self.shape.d_model;
        let mut rows = Vec::with_capacity(t * d);
        for &id in tokens {
            let r = self
                .tok_rows
                .get(id as usize * d..(id as usize + 1) * d)
                .ok_or_else(|| crate::ExtractError::Engine(format!("token {id} outside the vocabulary")))?;
            rows.extend(r.iter().map(|&b| mnema_models::e5q4::f16_to_f32(b)));
        }
        let mut x = Tensor::from_vec(rows, (t, d), &Device::Cpu)?.broadcast_add(&self.dec_pos.narrow(0, st.len, t)?)?.unsqueeze(0)?;
        let past = st.len;
        let mask = if t > 1 {
            let m: Vec<f32> = (0..t).flat_map(|i| (0..past + t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
            Some(Tensor::from_vec(m, (t, past + t), &Device::Cpu)?)
        } else {
            None
        };
        let heads = self.shape.heads;
        for (i, b) in self.decoder.iter().enumerate() {
            let h = b.attn.ln.forward(&x)?;
            let qkv = b.attn.q_or_qkv.forward(&h)?;
            let q = split_heads(&qkv.narrow(2, 0, d)?, heads)?;
            let k = split_heads(&qkv.narrow(2, d, d)?, heads)?;
            let v = split_heads(&qkv.narrow(2, 2 * d, d)?, heads)?;
            let (k, v) = match &st.self_kv[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            let a = sdpa(&q, &k, &v, mask.as_ref())?;
            st.self_kv[i] = Some((k, v));
            x = (x + b.attn.out.forward(&merge_heads(&a)?)?)?;
            let c = b.cross.as_ref().expect("decoder blocks have cross-attention");
            let h = c.ln.forward(&x)?;
            let q = split_heads(&c.q_or_qkv.forward(&h)?, heads)?;
            let (ck, cv) = &st.cross[i];
            let a = sdpa(&q, ck, cv, None)?;
            x = (x + c.out.forward(&merge_heads(&a)?)?)?;
            let h = b.mlp_ln.forward(&x)?;
            x = (&x + b.fc2.forward(&b.fc1.forward(&h)?.gelu_erf()?)?)?;
        }
        st.len += t;
        let last = x.i((0, t - n.min(t)..))?;
        let h = self.dec_ln.forward(&last)?;
        Ok(self.logits.forward(&h)?)
    }
}
