//! A BERT encoder over candle with mean pooling, for sentence embeddings.
//!
//! One implementation serves both weight sources: the 4-bit e5 file (matrices stay Q4_0 and
//! run through candle's quantized matmul, embedding rows are dequantized on lookup) and f32
//! safetensors (MiniLM, or e5 from the hub). Q, K and V are fused into one matmul.

use crate::Result;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::LayerNorm;
use mnema_models::e5q4::{dequantize_q4_0, E5Q4File};
use std::collections::HashMap;

/// Architecture numbers the encoder needs.
#[derive(Debug, Clone, Copy)]
pub struct BertShape {
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Maximum positions.
    pub max_positions: usize,
}

enum WordEmbeddings {
    /// Q4_0 rows, `hidden / 32 * 18` bytes each; dequantized per lookup (≈54 MB instead of
    /// ≈384 MB as f32).
    Q4 { blocks: Vec<u8>, rows: usize },
    Dense(Tensor),
}

struct Linear {
    w: QMatMul,
    b: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.w.forward(x)?.broadcast_add(&self.b)
    }
}

struct Layer {
    qkv: Linear,
    out: Linear,
    ln1: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ln2: LayerNorm,
}

/// The encoder; `embed` returns L2-normalised mean-pooled vectors.
pub struct Bert {
    shape: BertShape,
    word: WordEmbeddings,
    pos: Tensor,
    type0: Tensor,
    ln: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
    /// Bytes of weights held (for memory accounting).
    pub weight_bytes: usize,
}

fn ln(w: Vec<f32>, b: Vec<f32>, eps: f64, dev: &Device) -> candle_core::Result<LayerNorm> {
    let n = w.len();
    Ok(LayerNorm::new(Tensor::from_vec(w, n, dev)?, Tensor::from_vec(b, n, dev)?, eps))
}

impl Bert {
    /// Builds the encoder from the packed 4-bit e5 file.
    pub fn from_e5q4(f: &E5Q4File) -> Result<Bert> {
        let c = f.config;
        let (h, ff) = (c.hidden, c.ffn);
        let dev = Device::Cpu;
        let bytes = std::cell::Cell::new(0usize);
        let f32t = |name: &str, n: usize| -> Result<Vec<f32>> {
            bytes.set(bytes.get() + n * 4);
            Ok(f.f32(name, n)?)
        };
        let pos = Tensor::from_vec(f32t("emb.pos", c.max_positions * h)?, (c.max_positions, h), &dev)?;
        let type0 = Tensor::from_vec(f32t("emb.type", 2 * h)?[..h].to_vec(), h, &dev)?;
        let emb_ln = ln(f32t("emb.ln.w", h)?, f32t("emb.ln.b", h)?, c.eps, &dev)?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let q4 = |names: &[&str], rows: usize, cols: usize| -> Result<(QMatMul, usize)> {
                let mut raw = Vec::new();
                for n in names {
                    raw.extend_from_slice(f.q4(&format!("l{l}.{n}"), rows * cols)?);
                }
                let qt = qtensor_from_ggml(GgmlDType::Q4_0, &raw, vec![rows * names.len(), cols], &Device::Cpu)?;
                Ok((QMatMul::from_qtensor(qt)?, raw.len()))
            };
            let (qkv_w, b1) = q4(&["q.w", "k.w", "v.w"], h, h)?;
            let (out_w, b2) = q4(&["ao.w"], h, h)?;
            let (fi_w, b3) = q4(&["fi.w"], ff, h)?;
            let (fo_w, b4) = q4(&["fo.w"], h, ff)?;
            bytes.set(bytes.get() + b1 + b2 + b3 + b4);
            let mut qkv_b = f32t(&format!("l{l}.q.b"), h)?;
            qkv_b.extend(f32t(&format!("l{l}.k.b"), h)?);
            qkv_b.extend(f32t(&format!("l{l}.v.b"), h)?);
            let v = |x: Vec<f32>| Tensor::from_vec(x.clone(), x.len(), &dev);
            layers.push(Layer {
                qkv: Linear { w: qkv_w, b: v(qkv_b)? },
                out: Linear { w: out_w, b: v(f32t(&format!("l{l}.ao.b"), h)?)? },
                ln1: ln(f32t(&format!("l{l}.aln.w"), h)?, f32t(&format!("l{l}.aln.b"), h)?, c.eps, &dev)?,
                ffn_in: Linear { w: fi_w, b: v(f32t(&format!("l{l}.fi.b"), ff)?)? },
                ffn_out: Linear { w: fo_w, b: v(f32t(&format!("l{l}.fo.b"), h)?)? },
                ln2: ln(f32t(&format!("l{l}.oln.w"), h)?, f32t(&format!("l{l}.oln.b"), h)?, c.eps, &dev)?,
            });
        }
        let blocks = f.q4("emb.word", c.vocab * h)?.to_vec();
        let bytes = bytes.get() + blocks.len();
        let shape = BertShape { hidden: h, heads: c.heads, max_positions: c.max_positions };
        Ok(Bert { shape, word: WordEmbeddings::Q4 { blocks, rows: c.vocab }, pos, type0, ln: emb_ln, layers, device: dev, weight_bytes: bytes })
    }

    /// Builds the encoder from Hugging Face BERT tensors (names with or without `bert.`).
    pub fn from_tensors(mut t: HashMap<String, Tensor>, heads: usize, layers: usize, eps: f64) -> Result<Bert> {
        let dev = Device::Cpu;
        let weight_bytes = t.values().map(|x| x.elem_count() * 4).sum();
        let mut take = |name: &str| -> Result<Tensor> {
            t.remove(name)
                .or_else(|| t.remove(&format!("bert.{name}")))
                .ok_or_else(|| crate::ExtractError::BadInput(format!("weights lack tensor {name}")))
                .and_then(|x| Ok(x.to_dtype(DType::F32)?))
        };
        let word = take("embeddings.word_embeddings.weight")?;
        let pos = take("embeddings.position_embeddings.weight")?;
        let type0 = take("embeddings.token_type_embeddings.weight")?.get(0)?;
        let emb_ln = LayerNorm::new(take("embeddings.LayerNorm.weight")?, take("embeddings.LayerNorm.bias")?, eps);
        let mut out = Vec::with_capacity(layers);
        for l in 0..layers {
            let p = format!("encoder.layer.{l}");
            let mut lin = |w: &str, b: &str| -> Result<Linear> {
                Ok(Linear { w: QMatMul::Tensor(take(&format!("{p}.{w}"))?), b: take(&format!("{p}.{b}"))? })
            };
            let q = lin("attention.self.query.weight", "attention.self.query.bias")?;
            let k = lin("attention.self.key.weight", "attention.self.key.bias")?;
            let v = lin("attention.self.value.weight", "attention.self.value.bias")?;
            let dense = |x: &QMatMul| match x {
                QMatMul::Tensor(t) => Ok(t.clone()),
                _ => Err(candle_core::Error::Msg("dense weights expected".into())),
            };
            let qkv = Linear {
                w: QMatMul::Tensor(Tensor::cat(&[dense(&q.w)?, dense(&k.w)?, dense(&v.w)?], 0)?),
                b: Tensor::cat(&[&q.b, &k.b, &v.b], 0)?,
            };
            let outl = lin("attention.output.dense.weight", "attention.output.dense.bias")?;
            let ffn_in = lin("intermediate.dense.weight", "intermediate.dense.bias")?;
            let ffn_out = lin("output.dense.weight", "output.dense.bias")?;
            let ln1 = LayerNorm::new(take(&format!("{p}.attention.output.LayerNorm.weight"))?, take(&format!("{p}.attention.output.LayerNorm.bias"))?, eps);
            let ln2 = LayerNorm::new(take(&format!("{p}.output.LayerNorm.weight"))?, take(&format!("{p}.output.LayerNorm.bias"))?, eps);
            out.push(Layer { qkv, out: outl, ln1, ffn_in, ffn_out, ln2 });
        }
        let (_, h) = word.dims2()?;
        let max_positions = pos.dims2()?.0;
        let shape = BertShape { hidden: h, heads, max_positions };
        Ok(Bert { shape, word: WordEmbeddings::Dense(word), pos, type0, ln: emb_ln, layers: out, device: dev, weight_bytes })
    }

    /// Architecture numbers.
    pub fn shape(&self) -> BertShape {
        self.shape
    }

    fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        let h = self.shape.hidden;
        match &self.word {
            WordEmbeddings::Q4 { blocks, rows } => {
                let row_bytes = h / 32 * 18;
                let mut out = vec![0f32; ids.len() * h];
                for (i, &id) in ids.iter().enumerate() {
                    let id = (id as usize).min(rows - 1);
                    dequantize_q4_0(&blocks[id * row_bytes..(id + 1) * row_bytes], &mut out[i * h..(i + 1) * h]);
                }
                Ok(Tensor::from_vec(out, (ids.len(), h), &self.device)?)
            }
            WordEmbeddings::Dense(w) => Ok(w.embedding(&Tensor::new(ids, &self.device)?)?),
        }
    }

    /// Encodes a batch of token-id sequences (each ≤ max positions, special tokens included)
    /// and returns one L2-normalised, mean-pooled vector per sequence.
    pub fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let (h, nh) = (self.shape.hidden, self.shape.heads);
        let hd = h / nh;
        let b = batch.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let t = batch.iter().map(Vec::len).max().unwrap_or(1).clamp(1, self.shape.max_positions);
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (i, seq) in batch.iter().enumerate() {
            for (j, &id) in seq.iter().take(t).enumerate() {
                ids[i * t + j] = id;
                mask[i * t + j] = 1.0;
            }
        }
        let dev = &self.device;
        let x = self.lookup(&ids)?.reshape((b, t, h))?;
        let x = x.broadcast_add(&self.pos.narrow(0, 0, t)?)?.broadcast_add(&self.type0)?;
        let mut x = self.ln.forward(&x)?.reshape((b * t, h))?;
        let mask_t = Tensor::from_vec(mask, (b, t), dev)?;
        // Additive attention bias: 0 for real tokens, a large negative number for padding.
        let bias = ((mask_t.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?.reshape((b, t, 3, nh, hd))?;
            let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
            let (q, k, v) = ((part(0)? * scale)?, part(1)?, part(2)?);
            let att = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let ctx = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))?;
            let a = layer.out.forward(&ctx)?;
            x = layer.ln1.forward(&(x + a)?)?;
            let f = layer.ffn_out.forward(&layer.ffn_in.forward(&x)?.gelu_erf()?)?;
            x = layer.ln2.forward(&(x + f)?)?;
        }
        let x = x.reshape((b, t, h))?;
        let summed = x.broadcast_mul(&mask_t.unsqueeze(2)?)?.sum(1)?;
        let counts = mask_t.sum_keepdim(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}
