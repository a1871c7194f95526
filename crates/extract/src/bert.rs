//! A BERT encoder over candle with mean pooling, for sentence embeddings.
//!
//! One implementation serves both weight sources: the 4-bit e5 file and f32 safetensors
//! (MiniLM, or e5 from the hub). From the 4-bit file the layer matrices are expanded to f32 at
//! load (85 MB; an f32 GEMM over a whole batch is several times faster here than a Q4×Q8 dot
//! product per row) while the 250k-row word-embedding table stays 4-bit (54 MB instead of
//! 384 MB) and is dequantized per looked-up row.
//!
//! Q, K and V are one fused matmul; attention is computed directly from that buffer per
//! (sequence, head) on all cores, over each sequence's real length, so padding costs nothing
//! and no mask tensor is built.

use crate::Result;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
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
    /// Q4_0 rows, `hidden / 32 * 18` bytes each, read from the memory-mapped file and
    /// dequantized per lookup: only the pages of rows in use become resident (≈54 MB at most, instead of
    /// ≈384 MB as f32).
    Q4 { blob: mnema_models::e5q4::Blob, range: std::ops::Range<usize>, rows: usize },
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
                let mut w = vec![0f32; rows * cols * names.len()];
                for (i, n) in names.iter().enumerate() {
                    dequantize_q4_0(f.q4(&format!("l{l}.{n}"), rows * cols)?, &mut w[i * rows * cols..(i + 1) * rows * cols]);
                }
                let bytes = w.len() * 4;
                Ok((QMatMul::Tensor(Tensor::from_vec(w, (rows * names.len(), cols), &Device::Cpu)?), bytes))
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
        let (blob, range) = f.q4_shared("emb.word", c.vocab * h)?;
        let bytes = bytes.get() + range.len();
        let shape = BertShape { hidden: h, heads: c.heads, max_positions: c.max_positions };
        Ok(Bert { shape, word: WordEmbeddings::Q4 { blob, range, rows: c.vocab }, pos, type0, ln: emb_ln, layers, device: dev, weight_bytes: bytes })
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
            WordEmbeddings::Q4 { blob, range, rows } => {
                let blocks = &(**blob).as_ref()[range.clone()];
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
        let h = self.shape.hidden;
        let b = batch.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let t = batch.iter().map(Vec::len).max().unwrap_or(1).clamp(1, self.shape.max_positions);
        let lens: Vec<usize> = batch.iter().map(|s| s.len().clamp(1, t)).collect();
        let mut ids = vec![0u32; b * t];
        for (i, seq) in batch.iter().enumerate() {
            ids[i * t..i * t + seq.len().min(t)].copy_from_slice(&seq[..seq.len().min(t)]);
        }
        let x = self.lookup(&ids)?.reshape((b, t, h))?;
        let x = x.broadcast_add(&self.pos.narrow(0, 0, t)?)?.broadcast_add(&self.type0)?;
        let mut x = self.ln.forward(&x)?.reshape((b * t, h))?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let ctx = attention(&qkv, &lens, t, h, self.shape.heads);
            let a = layer.out.forward(&Tensor::from_vec(ctx, (b * t, h), &self.device)?)?;
            x = layer.ln1.forward(&(x + a)?)?;
            let mid = layer.ffn_in.w.forward(&x)?;
            let mid = bias_gelu(mid, &layer.ffn_in.b)?;
            let f = layer.ffn_out.forward(&mid)?;
            x = layer.ln2.forward(&(x + f)?)?;
        }
        // Mean over each sequence's real tokens, then L2 normalisation.
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        Ok((0..b)
            .map(|i| {
                let mut v = vec![0f32; h];
                for row in x[i * t * h..].chunks_exact(h).take(lens[i]) {
                    v.iter_mut().zip(row).for_each(|(a, r)| *a += r);
                }
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
                v
            })
            .collect())
    }
}

/// Scaled dot-product attention straight from the fused `[b·t, 3h]` QKV rows: each
/// (sequence, head) pair is one task (two small GEMMs and a softmax), over the sequence's
/// real length only.
fn attention(qkv: &[f32], lens: &[usize], t: usize, h: usize, heads: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let hd = h / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..lens.len() * heads)
        .into_par_iter()
        .map(|task| {
            let (s, head) = (task / heads, task % heads);
            let len = lens[s];
            let base = s * t * 3 * h + head * hd;
            let (q, k, v) = (&qkv[base..], &qkv[base + h..], &qkv[base + 2 * h..]);
            let mut p = vec![0f32; len * len];
            let mut out = vec![0f32; len * hd];
            let rs = (3 * h) as isize;
            // SAFETY: q, k, v rows i < len start at i·3h within the sequence's block and
            // span hd ≤ h floats, all inside `qkv` (len ≤ t); p and out are len×len and
            // len×hd row-major buffers owned here.
            unsafe {
                // p = scale · q·kᵀ
                gemm::gemm(len, len, hd, p.as_mut_ptr(), 1, len as isize, false, q.as_ptr(), 1, rs, k.as_ptr(), rs, 1, 0.0, scale, false, false, false, gemm::Parallelism::None);
            }
            for row in p.chunks_exact_mut(len) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|x| *x = fast_exp(*x - max));
                let sum: f32 = row.iter().sum();
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
            // SAFETY: as above; out = p·v.
            unsafe {
                gemm::gemm(len, hd, len, out.as_mut_ptr(), 1, hd as isize, false, p.as_ptr(), 1, len as isize, v.as_ptr(), 1, rs, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
            }
            (s, head, out)
        })
        .collect();
    let mut ctx = vec![0f32; lens.len() * t * h];
    for (s, head, out) in parts {
        for (i, o) in out.chunks_exact(hd).enumerate() {
            let at = (s * t + i) * h + head * hd;
            ctx[at..at + hd].copy_from_slice(o);
        }
    }
    ctx
}

/// `gelu(x + bias)` with the exact (erf) GELU BERT uses, on all cores.
fn bias_gelu(x: Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    let shape = x.shape().clone();
    let n = *shape.dims().last().unwrap_or(&1);
    let bias = bias.to_vec1::<f32>()?;
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    v.par_chunks_mut(n).for_each(|row| {
        for (a, b) in row.iter_mut().zip(&bias) {
            let y = *a + b;
            *a = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// erf with absolute error below 1.5e-7 (Abramowitz & Stegun 7.1.26). Branch-free and
/// without libm calls, so loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0 - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t * fast_exp(-a * a);
    y.copysign(x)
}

/// e^x with relative error below 2e-7 for x in [-87, 88] (0 below): 2^n by exponent bits
/// times a degree-6 polynomial for e^r, |r| ≤ ln2/2. Branch-free, so it vectorises.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(((got - want) / want).abs() < 5e-7, "exp({x}) = {got} not {want}");
        }
        assert!(fast_exp(-200.0) < 1e-37);
    }

    #[test]
    fn erf_matches_reference_values() {
        for (x, want) in [(0.0f32, 0.0f32), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (-1.5, -0.966_105_1), (3.0, 0.999_977_9)] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {} not {want}", erf(x));
        }
    }

    #[test]
    fn attention_ignores_padding_and_matches_naive() {
        // Two sequences, lengths 3 and 2, padded to 3; h = 4, two heads.
        let (t, h, heads) = (3, 4, 2);
        let qkv: Vec<f32> = (0..2 * t * 3 * h).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
        let ctx = attention(&qkv, &[3, 2], t, h, heads);
        let mut poisoned = qkv.clone();
        for v in &mut poisoned[(t + 2) * 3 * h..(t + 3) * 3 * h] {
            *v = 1e6; // the padded row of sequence 1
        }
        let ctx2 = attention(&poisoned, &[3, 2], t, h, heads);
        assert_eq!(ctx[..(t + 2) * h], ctx2[..(t + 2) * h], "padding leaked into real tokens");
        // Naive reference for sequence 0, head 1, token 2.
        let hd = 2;
        let q = &qkv[2 * 3 * h + hd..2 * 3 * h + 2 * hd];
        let scores: Vec<f32> = (0..3).map(|j| q.iter().zip(&qkv[j * 3 * h + h + hd..]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()).collect();
        let m = scores.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f32 = e.iter().sum();
        for d in 0..hd {
            let want: f32 = (0..3).map(|j| e[j] / z * qkv[j * 3 * h + 2 * h + hd + d]).sum();
            assert!((ctx[2 * h + hd + d] - want).abs() < 1e-5);
        }
    }
}
