//! Dense layers `y = x·Wᵀ + b` over plain row-major slices, on all cores.
//!
//! Where the CPU has AVX-512 BF16 (`vdpbf16ps`: two multiply-adds per lane per instruction,
//! twice the f32 FMA rate) the weights are held as bfloat16 pairs packed once at load into
//! 32-column panels, activations are rounded to bfloat16 per call, and products accumulate
//! in f32. Elsewhere, or with `MNEMA_DENSE=f32`, the weights stay f32 and the `gemm` crate
//! does the product. Rounding both operands to bfloat16 (8-bit mantissa) moves a 384-wide
//! sentence vector by a cosine of about 1e-5.

use rayon::prelude::*;

/// Columns per packed panel (two 16-lane registers).
const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 12;

/// Arithmetic a [`Dense`] layer runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// bfloat16 operands, f32 accumulation (AVX-512 BF16).
    Bf16,
    /// f32 throughout.
    F32,
}

impl Precision {
    /// The best this CPU runs.
    pub fn best() -> Precision {
        Precision::choose("auto")
    }

    /// What the `MNEMA_DENSE` setting (`auto`, `bf16`, `f32`; checked by
    /// `Config::resolve`) gives on this CPU: f32 when asked for, else bfloat16 where the CPU
    /// has it.
    pub fn choose(setting: &str) -> Precision {
        if setting.eq_ignore_ascii_case("f32") {
            return Precision::F32;
        }
        if bf16_supported() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

/// Whether this CPU has the AVX-512 BF16 dot-product instruction.
pub fn bf16_supported() -> bool {
    Bf16Cpu::detect().is_some()
}

/// Proof that this CPU has avx512f and avx512bf16: obtainable only from the run-time
/// detection ([`Bf16Cpu::detect`]), and required by every path that reaches the bfloat16
/// kernels. Bfloat16 weights are only ever packed together with one, so a [`Dense`] asked
/// for [`Precision::Bf16`] on a CPU without the instructions runs f32 instead.
#[derive(Debug, Clone, Copy)]
pub struct Bf16Cpu(());

#[cfg(test)]
thread_local! {
    /// Tests simulate a CPU without AVX-512 BF16 on their own thread.
    static SIMULATE_NO_BF16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Bf16Cpu {
    /// The proof, when the CPU has the instructions.
    pub fn detect() -> Option<Bf16Cpu> {
        #[cfg(test)]
        if SIMULATE_NO_BF16.with(|c| c.get()) {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            (std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")).then_some(Bf16Cpu(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

enum Weights {
    /// `panels × k/2 × NR` bf16 pairs (low half: even k, high half: odd k); columns past `n`
    /// are zero. Built only with the CPU check's proof.
    Bf16(Vec<u32>, Bf16Cpu),
    /// Row-major `n × k`.
    F32(Vec<f32>),
}

/// One dense layer: `n` outputs from `k` inputs.
pub struct Dense {
    n: usize,
    k: usize,
    w: Weights,
    bias: Vec<f32>,
}

/// f32 → bfloat16 bits, rounding to nearest even.
#[inline(always)]
fn bf16(x: f32) -> u32 {
    let b = x.to_bits();
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

impl Dense {
    /// From row-major `n × k` weights and `n` biases (empty: no bias). [`Precision::Bf16`]
    /// on a CPU without AVX-512 BF16 gives an f32 layer (see [`precision`](Self::precision)).
    pub fn new(w: Vec<f32>, bias: Vec<f32>, n: usize, k: usize, precision: Precision) -> Dense {
        assert_eq!(w.len(), n * k, "weights are not {n}×{k}");
        let bias = if bias.is_empty() { vec![0.0; n] } else { bias };
        assert_eq!(bias.len(), n);
        let w = match (precision, Bf16Cpu::detect()) {
            (Precision::Bf16, Some(cpu)) => Weights::Bf16(pack_panels(n, k, true, |row, col| w[row * k + col]), cpu),
            (Precision::Bf16, None) => {
                tracing::debug!("bfloat16 layer asked for on a CPU without AVX-512 BF16: f32 instead");
                Weights::F32(w)
            }
            (Precision::F32, _) => Weights::F32(w),
        };
        Dense { n, k, w, bias }
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        self.bias.len() * 4
            + match &self.w {
                Weights::Bf16(p, _) => p.len() * 4,
                Weights::F32(w) => w.len() * 4,
            }
    }

    /// The arithmetic this layer runs with.
    pub fn precision(&self) -> Precision {
        match self.w {
            Weights::Bf16(..) => Precision::Bf16,
            Weights::F32(_) => Precision::F32,
        }
    }

    /// `x` is `m × k` row-major; returns `m × n`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len() % k.max(1), 0, "input is not a multiple of {k} wide");
        let m = x.len() / k.max(1);
        if m == 0 {
            return Vec::new();
        }
        match &self.w {
            Weights::F32(w) => {
                let mut y = vec![0f32; m * n];
                // SAFETY: y is m×n (row stride n), x is m×k (row stride k), w is n×k read
                // transposed (column stride k); all buffers have exactly those sizes.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        y.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(0),
                    );
                }
                y.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(&self.bias).for_each(|(a, b)| *a += b));
                y
            }
            Weights::Bf16(panels, cpu) => {
                // Not zeroed first: the tiles write every cell.
                let mut y = Vec::with_capacity(m * n);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: y has capacity for m·n floats; bf16_gemm writes all m×n cells
                // before the length is set; x is m×k, panels were packed for n×k.
                unsafe {
                    bf16_gemm(*cpu, x, m, k, panels, n, &self.bias, y.as_mut_ptr());
                    y.set_len(m * n);
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("bf16 weights are only packed on x86_64 ({panels:?}, {y:?}, {cpu:?})");
                y
            }
        }
    }
}

/// Raw output pointer shared by parallel tasks that write disjoint cells (GEMM tiles,
/// attention's (rows, head) blocks).
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);
// SAFETY: every user has each task write a distinct set of cells.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
/// `y` (m·n floats, row stride n) = x·Wᵀ + bias; writes every cell. The CPU's capability is
/// proven by `cpu`; the operand sizes are checked here.
///
/// # Safety
/// `y` must be valid for m·n writes of f32 that no one else reads or writes meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_gemm(cpu: Bf16Cpu, x: &[f32], m: usize, k: usize, panels: &[u32], n: usize, bias: &[f32], y: *mut f32) {
    let kp = k.div_ceil(2);
    let tiles = m.div_ceil(MR);
    assert!(x.len() >= m * k && bias.len() >= n && panels.len() >= n.div_ceil(NR) * kp * NR, "operands too small");
    // Activations as bf16 pairs, tile by tile: tile t, pair p holds rows t·MR.. in MR lanes.
    let mut a = vec![0u32; tiles * kp * MR];
    a.par_chunks_mut(kp * MR)
        .enumerate()
        .for_each_init(Vec::new, |rows_buf, (t, tile)| pack_tile(cpu, x, k, t * MR, MR.min(m - t * MR), k, tile, rows_buf));
    let n_panels = n.div_ceil(NR);
    // Tasks: 8 row tiles × 4 panels each; a task's panels stay in L2 across its tiles.
    let (tm, tn) = (8, 4);
    let groups_m = tiles.div_ceil(tm);
    let groups_n = n_panels.div_ceil(tn);
    let out = Out(y);
    (0..groups_m * groups_n).into_par_iter().for_each(|task| {
        let (gm, gn) = (task / groups_n, task % groups_n);
        for j in gn * tn..((gn + 1) * tn).min(n_panels) {
            let b = &panels[j * kp * NR..(j + 1) * kp * NR];
            let cols = NR.min(n - j * NR);
            for t in gm * tm..((gm + 1) * tm).min(tiles) {
                let rows = MR.min(m - t * MR);
                // SAFETY: the CPU has avx512f+avx512bf16 (`cpu`); a and b hold kp·MR and kp·NR
                // pairs from these offsets; bias has cols floats from j·NR; the tile writes
                // rows t·MR..t·MR+rows and columns j·NR..j·NR+cols of the m×n output, which
                // no other task writes.
                unsafe {
                    kernel(
                        cpu,
                        kp,
                        a[t * kp * MR..].as_ptr(),
                        b.as_ptr(),
                        out.ptr().add(t * MR * n + j * NR),
                        n,
                        rows,
                        cols,
                        bias[j * NR..].as_ptr(),
                    );
                }
            }
        }
    });
}

/// Packs `n` rows of depth `k` (element `get(row, depth)`) as bf16 pairs in NR-row panels,
/// zero past `n` and `k`; on all cores when `parallel`.
pub(crate) fn pack_panels(n: usize, k: usize, parallel: bool, get: impl Fn(usize, usize) -> f32 + Sync) -> Vec<u32> {
    let mut packed = Vec::new();
    pack_panels_into(&mut packed, n, k, parallel, get);
    packed
}

/// [`pack_panels`] into a reused buffer (attention packs K and V per task).
pub(crate) fn pack_panels_into(packed: &mut Vec<u32>, n: usize, k: usize, parallel: bool, get: impl Fn(usize, usize) -> f32 + Sync) {
    let kp = k.div_ceil(2);
    packed.clear();
    packed.resize(n.div_ceil(NR) * kp * NR, 0u32);
    let fill = |(j, panel): (usize, &mut [u32])| {
        for c in 0..NR.min(n - j * NR) {
            let row = j * NR + c;
            for p in 0..kp {
                let hi = if 2 * p + 1 < k { bf16(get(row, 2 * p + 1)) } else { 0 };
                panel[p * NR + c] = bf16(get(row, 2 * p)) | hi << 16;
            }
        }
    };
    if parallel {
        packed.par_chunks_mut(kp * NR).enumerate().for_each(fill);
    } else {
        packed.chunks_mut(kp * NR).enumerate().for_each(fill);
    }
}

/// Packs rows `first..first + rows` of `x` (row stride `lda`, depth `k`) into one MR-row tile
/// of bf16 pairs (`kp × MR`, pair-major); `buf` is scratch. Safe: `cpu` proves the
/// instructions exist and every access is a checked slice index.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn pack_tile(cpu: Bf16Cpu, x: &[f32], lda: usize, first: usize, rows: usize, k: usize, tile: &mut [u32], buf: &mut Vec<u32>) {
    let kp = k.div_ceil(2);
    buf.resize(MR * kp, 0u32);
    for r in 0..rows {
        let at = (first + r) * lda;
        to_bf16_pairs(cpu, &x[at..at + k], &mut buf[r * kp..(r + 1) * kp]);
    }
    for (p, lanes) in tile.chunks_exact_mut(MR).enumerate() {
        for (r, lane) in lanes.iter_mut().enumerate() {
            *lane = if r < rows { buf[r * kp + p] } else { 0 };
        }
    }
}

/// Serial bf16 product for small per-task matrices (attention): `c = a·bᵀ`, where `a` is
/// `m × k` with row stride `lda`, `b` is packed by [`pack_panels`] (`n` rows of depth `k`)
/// and `c` is written `m × n` with row stride `ldc`. `cpu` proves AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_t_serial(
    cpu: Bf16Cpu,
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    b: &[u32],
    n: usize,
    c: &mut [f32],
    ldc: usize,
    scratch: &mut (Vec<u32>, Vec<u32>),
) {
    assert!(m == 0 || (a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n), "operands too small");
    let kp = k.div_ceil(2);
    assert!(b.len() >= n.div_ceil(NR) * kp * NR, "packed operand too small");
    const ZERO: [f32; NR] = [0.0; NR];
    let (tile, buf) = scratch;
    tile.resize(kp * MR, 0);
    for t in 0..m.div_ceil(MR) {
        let rows = MR.min(m - t * MR);
        pack_tile(cpu, a, lda, t * MR, rows, k, tile, buf);
        for j in 0..n.div_ceil(NR) {
            let cols = NR.min(n - j * NR);
            // SAFETY: `cpu` proves the instructions; checked above: the tile holds kp·MR
            // pairs, the panel kp·NR, and c has rows×cols cells from (t·MR, j·NR).
            unsafe {
                kernel(
                    cpu,
                    kp,
                    tile.as_ptr(),
                    b[j * kp * NR..].as_ptr(),
                    c.as_mut_ptr().add(t * MR * ldc + j * NR),
                    ldc,
                    rows,
                    cols,
                    ZERO.as_ptr(),
                )
            };
        }
    }
}

/// One row as bf16 pairs: `out[p]` holds `x[2p]` (low half) and `x[2p + 1]` (high half).
/// `cpu` proves the instructions; panics when `out` has fewer than ⌈len/2⌉ slots.
#[cfg(target_arch = "x86_64")]
fn to_bf16_pairs(cpu: Bf16Cpu, x: &[f32], out: &mut [u32]) {
    assert!(out.len() >= x.len().div_ceil(2), "output too small");
    // SAFETY: `cpu` is only obtained when the CPU has avx512f+avx512bf16.
    unsafe { to_bf16_pairs_avx512(cpu, x, out) }
}

/// # Safety
/// The CPU must have avx512f and avx512bf16 (`Bf16Cpu` is the proof; `#[target_feature]`
/// functions are unsafe to call regardless) and `out` must have ⌈x.len()/2⌉ slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16_pairs_avx512(_cpu: Bf16Cpu, x: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact(32);
    let mut at = 0;
    for c in &mut chunks {
        // SAFETY: c holds 32 floats and out[at..at + 16] is in bounds (out has ⌈len/2⌉ slots).
        unsafe {
            let lo = _mm512_loadu_ps(c.as_ptr());
            let hi = _mm512_loadu_ps(c.as_ptr().add(16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out[at..at + 16].as_mut_ptr() as *mut _, v);
        }
        at += 16;
    }
    let rest = chunks.remainder();
    for (i, pair) in rest.chunks(2).enumerate() {
        out[at + i] = bf16(pair[0]) | pair.get(1).map_or(0, |&v| bf16(v)) << 16;
    }
}

/// One MR×NR output tile over the whole depth: 24 accumulators stay in registers.
///
/// # Safety
/// - `a` is valid for kp·MR reads and `b` for kp·NR reads of u32;
/// - `bias` is valid for `cols` reads of f32 (lanes past `cols` are masked off and never read);
/// - `c` is valid for writes of `cols` floats at each of rows `0..rows` (row stride `ldc`),
///   with `rows ≤ MR` and `cols ≤ NR`, and nothing else accesses those cells meanwhile;
/// - the CPU has avx512f and avx512bf16 (`_cpu` is the proof).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    _cpu: Bf16Cpu,
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    debug_assert!(rows <= MR && cols <= NR);
    // SAFETY: per the contract above. The second half's pointers (`bias + 16`, `row + 16`)
    // may lie past the end of their buffers when cols ≤ 16: they are formed with
    // `wrapping_add` (no out-of-bounds `add`) and only used with an all-zero mask, which
    // accesses no memory.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            let ap = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        let m0: __mmask16 = if cols >= 16 { 0xffff } else { (1u32 << cols) as u16 - 1 };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols <= 16 {
            0
        } else {
            (1u32 << (cols - 16)) as u16 - 1
        };
        let bias0 = _mm512_maskz_loadu_ps(m0, bias);
        let bias1 = _mm512_maskz_loadu_ps(m1, bias.wrapping_add(16));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row = c.wrapping_add(r * ldc);
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(acc[0], bias0));
            _mm512_mask_storeu_ps(row.wrapping_add(16), m1, _mm512_add_ps(acc[1], bias1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = b[j] + (0..k).map(|l| x[i * k + l] as f64 * w[j * k + l] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn both_precisions_match_a_naive_product_on_ragged_shapes() {
        // Rows not a multiple of 12, columns not a multiple of 32, odd depth.
        for (m, n, k) in [(1, 5, 3), (13, 37, 17), (100, 96, 384), (25, 70, 1535)] {
            let (x, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
            let want = naive(&x, &w, &b, m, n, k);
            let mut precisions = vec![Precision::F32];
            if bf16_supported() {
                precisions.push(Precision::Bf16);
            }
            for p in precisions {
                let got = Dense::new(w.clone(), b.clone(), n, k, p).forward(&x);
                assert_eq!(got.len(), m * n);
                // bf16 operands: relative error ~2⁻⁸ per product, ~√k·2⁻⁹ over the sum.
                let tol = if p == Precision::Bf16 { 0.01 * (k as f32).sqrt() } else { 1e-3 };
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() <= tol, "{p:?} {m}×{n}×{k} cell {i}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn bf16_asked_for_on_a_cpu_without_it_never_reaches_the_kernel() {
        // The detection says no (as on a CPU without AVX-512 BF16): the public constructor
        // must not pack bfloat16 weights, so the kernel (which would fault with SIGILL there)
        // is unreachable, and the result is the f32 product to the bit.
        SIMULATE_NO_BF16.with(|c| c.set(true));
        assert!(Bf16Cpu::detect().is_none() && !bf16_supported());
        assert_eq!(Precision::best(), Precision::F32);
        let (m, n, k) = (13, 37, 17);
        let (x, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
        let asked = Dense::new(w.clone(), b.clone(), n, k, Precision::Bf16);
        assert_eq!(asked.precision(), Precision::F32);
        assert!(matches!(asked.w, Weights::F32(_)));
        let f32_layer = Dense::new(w, b, n, k, Precision::F32);
        assert_eq!(asked.forward(&x), f32_layer.forward(&x));
        // Attention asked for bfloat16 takes the f32 path too (no proof, no kernel).
        let qkv = data(10 * 3 * 64, 4);
        assert_eq!(
            crate::bert::attention(&qkv, &[0, 4, 10], 64, 2, Precision::Bf16),
            crate::bert::attention(&qkv, &[0, 4, 10], 64, 2, Precision::F32)
        );
        SIMULATE_NO_BF16.with(|c| c.set(false));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.5), 0xc020);
    }
}
