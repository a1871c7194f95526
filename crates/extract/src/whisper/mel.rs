//! Log-mel spectrogram exactly as Whisper was trained on: 25 ms Hann windows (400 samples)
//! every 10 ms (160), centred with reflection padding, power spectrum through librosa's Slaney
//! mel filters (computed here, not shipped), log10, clamped to 8 below the window's maximum,
//! then scaled by (x + 4) / 4.

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// FFT size (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP: usize = 160;
/// Frequency bins of one frame.
pub const N_BINS: usize = N_FFT / 2 + 1;

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    let (f_sp, min_log_hz, min_log_mel, logstep) = (200.0 / 3.0, 1000.0, 15.0, 6.4f64.ln() / 27.0);
    if f < min_log_hz {
        f / f_sp
    } else {
        min_log_mel + (f / min_log_hz).ln() / logstep
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz, min_log_mel, logstep) = (200.0 / 3.0, 1000.0, 15.0, 6.4f64.ln() / 27.0);
    if m < min_log_mel {
        m * f_sp
    } else {
        min_log_hz * ((m - min_log_mel) * logstep).exp()
    }
}

/// librosa's `filters.mel(sr, n_fft, n_mels)` with the Slaney scale and area normalisation:
/// `n_mels` rows of [`N_BINS`] weights.
pub fn mel_filters(sample_rate: u32, n_mels: usize) -> Vec<f32> {
    let sr = sample_rate as f64;
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let hz: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let mut w = vec![0f32; n_mels * N_BINS];
    for i in 0..n_mels {
        let enorm = 2.0 / (hz[i + 2] - hz[i]);
        for k in 0..N_BINS {
            let f = k as f64 * sr / N_FFT as f64;
            let lower = (f - hz[i]) / (hz[i + 1] - hz[i]);
            let upper = (hz[i + 2] - f) / (hz[i + 2] - hz[i + 1]);
            w[i * N_BINS + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    w
}

/// A reusable log-mel front end.
pub struct Mel {
    n_mels: usize,
    filters: Vec<f32>,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl Mel {
    /// A front end with `n_mels` bands (80 for Whisper base) at 16 kHz.
    pub fn new(n_mels: usize) -> Mel {
        let window = (0..N_FFT).map(|n| (0.5 - 0.5 * (std::f64::consts::TAU * n as f64 / N_FFT as f64).cos()) as f32).collect();
        Mel { n_mels, filters: mel_filters(crate::audio::SAMPLE_RATE, n_mels), window, fft: FftPlanner::new().plan_fft_forward(N_FFT) }
    }

    /// Bands per frame.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The normalised log-mel of `samples` (16 kHz), `samples.len() / HOP` frames, laid out
    /// `[n_mels][frames]`.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let frames = samples.len() / HOP;
        let pad = N_FFT / 2;
        // Centre the windows: reflect `pad` samples at both ends (torch.stft, center=True).
        let n = samples.len();
        let at = |i: isize| -> f32 {
            if n == 0 {
                return 0.0;
            }
            let mut j = i;
            if j < 0 {
                j = -j;
            }
            if j >= n as isize {
                j = 2 * (n as isize - 1) - j;
            }
            samples.get(j.clamp(0, n as isize - 1) as usize).copied().unwrap_or(0.0)
        };
        let mut power = vec![0f32; frames * N_BINS];
        let mut buf = vec![Complex::new(0f32, 0f32); N_FFT];
        let mut scratch = vec![Complex::new(0f32, 0f32); self.fft.get_inplace_scratch_len()];
        for t in 0..frames {
            let start = (t * HOP) as isize - pad as isize;
            for (k, c) in buf.iter_mut().enumerate() {
                *c = Complex::new(at(start + k as isize) * self.window[k], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (k, p) in power[t * N_BINS..(t + 1) * N_BINS].iter_mut().enumerate() {
                *p = buf[k].norm_sqr();
            }
        }
        let mut out = vec![0f32; self.n_mels * frames];
        let mut max = f32::NEG_INFINITY;
        for m in 0..self.n_mels {
            let f = &self.filters[m * N_BINS..(m + 1) * N_BINS];
            for t in 0..frames {
                let p = &power[t * N_BINS..(t + 1) * N_BINS];
                let e: f32 = f.iter().zip(p).map(|(a, b)| a * b).sum();
                let v = e.max(1e-10).log10();
                max = max.max(v);
                out[m * frames + t] = v;
            }
        }
        for v in &mut out {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_bends_at_1khz() {
        for f in [0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-6, "{f}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn filters_are_area_normalised_triangles() {
        let w = mel_filters(16_000, 80);
        for i in 0..80 {
            let row = &w[i * N_BINS..(i + 1) * N_BINS];
            // Each triangle's area in Hz is 1 (Slaney normalisation); bins are 40 Hz apart, so
            // filters a few bins wide are sampled coarsely (up to 8% off for 100-130 Hz wide
            // ones, as a direct evaluation of the same formula in Python also gives).
            let area: f32 = row.iter().sum::<f32>() * 40.0;
            assert!((area - 1.0).abs() < if i < 10 { 0.5 } else { 0.1 }, "filter {i}: area {area}");
            // Rises then falls: one peak.
            let peak = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert!(row[..peak].windows(2).all(|p| p[0] <= p[1]) && row[peak..].windows(2).all(|p| p[0] >= p[1]), "filter {i}");
        }
    }

    #[test]
    fn a_tone_lights_the_band_around_its_frequency() {
        let mel = Mel::new(80);
        let tone: Vec<f32> = (0..16_000).map(|i| (i as f32 / 16_000.0 * 1000.0 * std::f32::consts::TAU).sin() * 0.5).collect();
        let m = mel.compute(&tone);
        let frames = 100;
        assert_eq!(m.len(), 80 * frames);
        let mid = 50;
        let band = (0..80).max_by(|&a, &b| m[a * frames + mid].total_cmp(&m[b * frames + mid])).unwrap();
        // 1000 Hz is mel 15 on a 0..(mel of 8 kHz ≈ 45.2) axis over 81 steps: band ≈ 26.
        assert!((24..=27).contains(&band), "band {band}");
        // Normalised: maximum (max + 4) / 4, floor 8 below it.
        let max = m.iter().cloned().fold(f32::MIN, f32::max);
        let min = m.iter().cloned().fold(f32::MAX, f32::min);
        assert!(max - min <= 2.0 + 1e-5, "{min}..{max}");
    }
}
