//! A BERT encoder with mean pooling, for sentence embeddings.
//!
//! One implementation serves both weight sources: the 4-bit e5 file and f32 safetensors
//! (MiniLM, or e5 from the hub). From the 4-bit file the layer matrices are expanded at load
//! (a GEMM over a whole batch is several times faster here than a Q4×Q8 dot product per row)
//! while the 250k-row word-embedding table stays 4-bit (54 MB instead of 384 MB) and is
//! dequantized per looked-up row. The layers are [`Dense`]: bfloat16 where the CPU has
//! AVX-512 BF16, f32 elsewhere.
//!
//! A batch's sequences are laid end to end without padding. Q, K and V are one fused product;
//! attention is computed directly from that buffer per (sequence, head) on all cores, so no
//! mask is built and padding costs nothing.

use crate::dense::{Dense, Out, Precision};
use crate::Result;
use candle_core::{DType, Tensor};
use mnema_models::e5q4::{dequantize_q4_0, E5Q4File};
use rayon::prelude::*;
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
    /// Row-major `vocab × hidden`.
    F32(Vec<f32>),
}

/// Layer normalisation over rows of `w.len()` values.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// `x = norm(x + add)` row by row (`add` empty: no residual), on all cores.
    fn residual(&self, x: &mut [f32], add: &[f32]) {
        let h = self.w.len();
        x.par_chunks_mut(h).enumerate().for_each(|(i, row)| {
            if !add.is_empty() {
                row.iter_mut().zip(&add[i * h..(i + 1) * h]).for_each(|(a, b)| *a += b);
            }
            let mean = sum(row.iter().copied()) / h as f32;
            let var = sum(row.iter().map(|v| (v - mean) * (v - mean))) / h as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.w).zip(&self.b) {
                *v = (*v - mean) * inv * w + b;
            }
        });
    }
}

struct Layer {
    qkv: Dense,
    out: Dense,
    ln1: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    ln2: Norm,
}

/// The encoder; `embed` returns L2-normalised mean-pooled vectors.
pub struct Bert {
    shape: BertShape,
    word: WordEmbeddings,
    /// Row-major `max_positions × hidden`.
    pos: Vec<f32>,
    type0: Vec<f32>,
    ln: Norm,
    layers: Vec<Layer>,
    /// Bytes of weights held (for memory accounting).
    pub weight_bytes: usize,
}

impl Bert {
    /// Builds the encoder from the packed 4-bit e5 file, its layers in `precision`.
    pub fn from_e5q4(f: &E5Q4File, precision: Precision) -> Result<Bert> {
        let c = f.config;
        let (h, ff) = (c.hidden, c.ffn);
        let eps = c.eps as f32;
        let norm = |w: &str, b: &str| -> Result<Norm> { Ok(Norm { w: f.f32(w, h)?, b: f.f32(b, h)?, eps }) };
        let pos = f.f32("emb.pos", c.max_positions * h)?;
        let type0 = f.f32("emb.type", 2 * h)?[..h].to_vec();
        let ln = norm("emb.ln.w", "emb.ln.b")?;
        let mut layers = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let dense = |names: &[&str], rows: usize, cols: usize| -> Result<Dense> {
                let mut w = vec![0f32; rows * cols * names.len()];
                let mut b = Vec::with_capacity(rows * names.len());
                for (i, n) in names.iter().enumerate() {
                    dequantize_q4_0(f.q4(&format!("l{l}.{n}.w"), rows * cols)?, &mut w[i * rows * cols..(i + 1) * rows * cols]);
                    b.extend(f.f32(&format!("l{l}.{n}.b"), rows)?);
                }
                Ok(Dense::new(w, b, rows * names.len(), cols, precision))
            };
            layers.push(Layer {
                qkv: dense(&["q", "k", "v"], h, h)?,
                out: dense(&["ao"], h, h)?,
                ln1: norm(&format!("l{l}.aln.w"), &format!("l{l}.aln.b"))?,
                ffn_in: dense(&["fi"], ff, h)?,
                ffn_out: dense(&["fo"], h, ff)?,
                ln2: norm(&format!("l{l}.oln.w"), &format!("l{l}.oln.b"))?,
            });
        }
        let (blob, range) = f.q4_shared("emb.word", c.vocab * h)?;
        let shape = BertShape { hidden: h, heads: c.heads, max_positions: c.max_positions };
        let word = WordEmbeddings::Q4 { blob, range, rows: c.vocab };
        Ok(Bert::assemble(shape, word, pos, type0, ln, layers))
    }

    /// Builds the encoder from Hugging Face BERT tensors (names with or without `bert.`),
    /// its layers in `precision`.
    pub fn from_tensors(t: HashMap<String, Tensor>, heads: usize, layers: usize, eps: f64, precision: Precision) -> Result<Bert> {
        let eps = eps as f32;
        let t = std::cell::RefCell::new(t);
        let take = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let mut t = t.borrow_mut();
            let x = t
                .remove(name)
                .or_else(|| t.remove(&format!("bert.{name}")))
                .ok_or_else(|| crate::ExtractError::ModelContent(format!("weights lack tensor {name}")))?;
            Ok((x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, x.dims().to_vec()))
        };
        let (word, dims) = take("embeddings.word_embeddings.weight")?;
        let h = dims.last().copied().unwrap_or(0);
        let (pos, _) = take("embeddings.position_embeddings.weight")?;
        let type0 = take("embeddings.token_type_embeddings.weight")?.0[..h].to_vec();
        let norm = |p: &str| -> Result<Norm> { Ok(Norm { w: take(&format!("{p}.weight"))?.0, b: take(&format!("{p}.bias"))?.0, eps }) };
        let ln = norm("embeddings.LayerNorm")?;
        let mut out = Vec::with_capacity(layers);
        for l in 0..layers {
            let p = format!("encoder.layer.{l}");
            let ln1 = norm(&format!("{p}.attention.output.LayerNorm"))?;
            let ln2 = norm(&format!("{p}.output.LayerNorm"))?;
            let dense = |names: &[&str]| -> Result<Dense> {
                let (mut w, mut b, mut n, mut k) = (Vec::new(), Vec::new(), 0, 0);
                for name in names {
                    let (wi, dims) = take(&format!("{p}.{name}.weight"))?;
                    w.extend(wi);
                    b.extend(take(&format!("{p}.{name}.bias"))?.0);
                    n += dims[0];
                    k = dims[1];
                }
                Ok(Dense::new(w, b, n, k, precision))
            };
            let qkv = dense(&["attention.self.query", "attention.self.key", "attention.self.value"])?;
            let out_d = dense(&["attention.output.dense"])?;
            let ffn_in = dense(&["intermediate.dense"])?;
            let ffn_out = dense(&["output.dense"])?;
            out.push(Layer { qkv, out: out_d, ln1, ffn_in, ffn_out, ln2 });
        }
        let shape = BertShape { hidden: h, heads, max_positions: pos.len() / h.max(1) };
        Ok(Bert::assemble(shape, WordEmbeddings::F32(word), pos, type0, ln, out))
    }

    fn assemble(shape: BertShape, word: WordEmbeddings, pos: Vec<f32>, type0: Vec<f32>, ln: Norm, layers: Vec<Layer>) -> Bert {
        let norm_bytes = |n: &Norm| (n.w.len() + n.b.len()) * 4;
        let word_bytes = match &word {
            WordEmbeddings::Q4 { range, .. } => range.len(),
            WordEmbeddings::F32(w) => w.len() * 4,
        };
        let weight_bytes = word_bytes
            + (pos.len() + type0.len()) * 4
            + norm_bytes(&ln)
            + layers
                .iter()
                .map(|l| l.qkv.bytes() + l.out.bytes() + l.ffn_in.bytes() + l.ffn_out.bytes() + norm_bytes(&l.ln1) + norm_bytes(&l.ln2))
                .sum::<usize>();
        Bert { shape, word, pos, type0, ln, layers, weight_bytes }
    }

    /// Architecture numbers.
    pub fn shape(&self) -> BertShape {
        self.shape
    }

    /// Writes the word vector of `id` into `out` (one row of `hidden` values).
    fn word_row(&self, id: u32, out: &mut [f32]) {
        let h = self.shape.hidden;
        match &self.word {
            WordEmbeddings::Q4 { blob, range, rows } => {
                let blocks = &(**blob).as_ref()[range.clone()];
                let row_bytes = h / 32 * 18;
                let id = (id as usize).min(rows - 1);
                dequantize_q4_0(&blocks[id * row_bytes..(id + 1) * row_bytes], out);
            }
            WordEmbeddings::F32(w) => {
                let id = (id as usize).min(w.len() / h - 1);
                out.copy_from_slice(&w[id * h..(id + 1) * h]);
            }
        }
    }

    /// Encodes a batch of token-id sequences (each ≤ max positions, special tokens included)
    /// and returns one L2-normalised, mean-pooled vector per sequence.
    ///
    /// The sequences are laid end to end with no padding: every step but attention works
    /// token by token, and attention runs per sequence over its own rows.
    pub fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let h = self.shape.hidden;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let lens: Vec<usize> = batch.iter().map(|s| s.len().clamp(1, self.shape.max_positions)).collect();
        let mut starts = Vec::with_capacity(lens.len() + 1);
        starts.push(0);
        for l in &lens {
            starts.push(starts.last().copied().unwrap_or(0) + l);
        }
        let total = starts[lens.len()];
        let mut x = vec![0f32; total * h];
        for (s, seq) in batch.iter().enumerate() {
            for j in 0..lens[s] {
                let row = &mut x[(starts[s] + j) * h..(starts[s] + j + 1) * h];
                self.word_row(seq.get(j).copied().unwrap_or(0), row);
                for ((r, p), t) in row.iter_mut().zip(&self.pos[j * h..(j + 1) * h]).zip(&self.type0) {
                    *r += p + t;
                }
            }
        }
        self.ln.residual(&mut x, &[]);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x);
            let ctx = attention(&qkv, &starts, h, self.shape.heads, layer.qkv.precision());
            layer.ln1.residual(&mut x, &layer.out.forward(&ctx));
            let mut mid = layer.ffn_in.forward(&x);
            gelu(&mut mid);
            layer.ln2.residual(&mut x, &layer.ffn_out.forward(&mid));
        }
        // Mean over each sequence's tokens, then L2 normalisation.
        Ok((0..lens.len())
            .map(|s| {
                let mut v = vec![0f32; h];
                for row in x[starts[s] * h..starts[s + 1] * h].chunks_exact(h) {
                    v.iter_mut().zip(row).for_each(|(a, r)| *a += r);
                }
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
                v
            })
            .collect())
    }
}

/// Scaled dot-product attention straight from the fused `[tokens, 3h]` QKV rows: each
/// (sequence, head) pair is one task (two small GEMMs and a softmax) over rows
/// `starts[s]..starts[s + 1]`, writing its own columns of the output.
pub(crate) fn attention(qkv: &[f32], starts: &[usize], h: usize, heads: usize, precision: Precision) -> Vec<f32> {
    let hd = h / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let seqs = starts.len() - 1;
    let mut ctx = vec![0f32; starts[seqs] * h];
    let out = Out(ctx.as_mut_ptr());
    // Bfloat16 products only with the CPU check's proof; f32 otherwise.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    let bf16 = if precision == Precision::Bf16 { crate::dense::Bf16Cpu::detect() } else { None };
    (0..seqs * heads).into_par_iter().for_each_init(Scratch::default, |sc, task| {
        let (s, head) = (task / heads, task % heads);
        let len = starts[s + 1] - starts[s];
        let base = starts[s] * 3 * h + head * hd;
        let (q, k, v) = (&qkv[base..], &qkv[base + h..], &qkv[base + 2 * h..]);
        sc.p.resize(len * len, 0f32);
        let rs = 3 * h;
        let ctx_at = out.ptr().wrapping_add(starts[s] * h + head * hd);
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = bf16 {
            sc.q.clear();
            sc.q.extend((0..len).flat_map(|i| q[i * rs..i * rs + hd].iter().map(|x| x * scale)));
            crate::dense::pack_panels_into(&mut sc.kv, len, hd, false, |j, d| k[j * rs + d]);
            crate::dense::matmul_t_serial(cpu, &sc.q, hd, len, hd, &sc.kv, len, &mut sc.p, len, &mut sc.tiles);
            let inv = softmax_rows(&mut sc.p, len);
            crate::dense::pack_panels_into(&mut sc.kv, hd, len, false, |c, j| v[j * rs + c]);
            sc.o.resize(len * hd, 0.0);
            crate::dense::matmul_t_serial(cpu, &sc.p, len, len, len, &sc.kv, hd, &mut sc.o, hd, &mut sc.tiles);
            for (i, (row, inv)) in sc.o.chunks_exact(hd).zip(&inv).enumerate() {
                // SAFETY: row i of this (sequence, head) block: hd cells at
                // (starts[s] + i)·h + head·hd inside ctx, written by this task only.
                let dst = unsafe { std::slice::from_raw_parts_mut(ctx_at.add(i * h), hd) };
                dst.iter_mut().zip(row).for_each(|(d, x)| *d = x * inv);
            }
            return;
        }
        let rs = rs as isize;
        // SAFETY: q, k, v rows i < len start at i·3h within the sequence's rows and span
        // hd ≤ h floats, all inside `qkv`; p is a len×len row-major buffer owned here.
        unsafe {
            // p = scale · q·kᵀ
            gemm::gemm(
                len,
                len,
                hd,
                sc.p.as_mut_ptr(),
                1,
                len as isize,
                false,
                q.as_ptr(),
                1,
                rs,
                k.as_ptr(),
                rs,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let inv = softmax_rows(&mut sc.p, len);
        // SAFETY: as above; the output block is rows starts[s].. of ctx (row stride h),
        // columns head·hd..(head+1)·hd, written by this task only.
        unsafe {
            gemm::gemm(
                len,
                hd,
                len,
                ctx_at,
                1,
                h as isize,
                false,
                sc.p.as_ptr(),
                1,
                len as isize,
                v.as_ptr(),
                1,
                rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            for (i, inv) in inv.iter().enumerate() {
                std::slice::from_raw_parts_mut(ctx_at.add(i * h), hd).iter_mut().for_each(|x| *x *= inv);
            }
        }
    });
    ctx
}

/// Per-thread buffers of the attention tasks.
#[derive(Default)]
struct Scratch {
    p: Vec<f32>,
    q: Vec<f32>,
    o: Vec<f32>,
    /// K, then V, packed as bf16 panels.
    kv: Vec<u32>,
    tiles: (Vec<u32>, Vec<u32>),
}

/// Unnormalised softmax of each row of `p` (`len` wide): e^(x − max) in place; returns
/// 1/sum per row, applied to the output rows afterwards (len×hd products, not len×len).
fn softmax_rows(p: &mut [f32], len: usize) -> Vec<f32> {
    p.chunks_exact_mut(len)
        .map(|row| {
            let max = max(row);
            row.iter_mut().for_each(|x| *x = fast_exp(*x - max));
            1.0 / sum(row.iter().copied())
        })
        .collect()
}

/// The largest value, in 16 independent lanes so the loop vectorises.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// A sum in 16 independent lanes, so the loop vectorises (a plain float sum is sequential).
#[inline(always)]
fn sum(xs: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0f32; 16];
    let mut i = 0;
    for x in xs {
        lanes[i] += x;
        i = (i + 1) & 15;
    }
    lanes.iter().sum()
}

/// The exact (erf) GELU BERT uses, in place, on all cores.
pub(crate) fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|part| {
        for a in part {
            *a = 0.5 * *a * (1.0 + erf(*a * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
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
/// times a degree-6 polynomial for e^r, |r| ≤ ln2/2. Branch-free and free of float→int
/// conversions (n is read from the mantissa of x·log2e + 1.5·2²³), so it vectorises.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits
    let x = x.clamp(-87.0, 88.0);
    let z = x * std::f32::consts::LOG2_E + SHIFT;
    let n = z - SHIFT;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let ni = z.to_bits().wrapping_sub(SHIFT.to_bits()) as i32;
    p * f32::from_bits(((ni + 127) as u32) << 23)
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
    fn attention_stays_within_each_sequence_and_matches_naive() {
        // Two sequences of 3 and 2 tokens laid end to end; h = 4, two heads.
        let (h, heads, starts) = (4, 2, [0, 3, 5]);
        let qkv: Vec<f32> = (0..5 * 3 * h).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
        let ctx = attention(&qkv, &starts, h, heads, Precision::F32);
        assert_eq!(ctx.len(), 5 * h);
        let mut poisoned = qkv.clone();
        for v in &mut poisoned[3 * 3 * h..] {
            *v = 1e6; // every row of sequence 1
        }
        let ctx2 = attention(&poisoned, &starts, h, heads, Precision::F32);
        assert_eq!(ctx[..3 * h], ctx2[..3 * h], "sequence 1 leaked into sequence 0");
        // Naive reference for sequence 0, head 1, token 2.
        let hd = 2;
        let q = &qkv[2 * 3 * h + hd..2 * 3 * h + 2 * hd];
        let scores: Vec<f32> =
            (0..3).map(|j| q.iter().zip(&qkv[j * 3 * h + h + hd..]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()).collect();
        let m = scores.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f32 = e.iter().sum();
        for d in 0..hd {
            let want: f32 = (0..3).map(|j| e[j] / z * qkv[j * 3 * h + 2 * h + hd + d]).sum();
            assert!((ctx[2 * h + hd + d] - want).abs() < 1e-5);
        }
    }

    #[test]
    fn bf16_attention_agrees_with_f32_on_long_sequences() {
        if !crate::dense::bf16_supported() {
            return; // only the f32 path exists on this CPU
        }
        // Three sequences (ragged lengths around the 12-row and 32-column tiles), h = 64.
        let (h, heads, starts) = (64, 2, [0, 45, 45 + 13, 45 + 13 + 70]);
        let qkv: Vec<f32> = (0..128 * 3 * h).map(|i| (((i as u32).wrapping_mul(2_654_435_761) >> 9) % 2001) as f32 / 500.0 - 2.0).collect();
        let a = attention(&qkv, &starts, h, heads, Precision::F32);
        let b = attention(&qkv, &starts, h, heads, Precision::Bf16);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // Outputs are weighted means of values in [-2, 2]; a layout bug moves them by ~1.
        assert!(worst < 0.05, "bf16 attention differs by {worst}");
    }
}
