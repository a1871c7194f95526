//! Audio decoding for speech recognition: any container and codec symphonia reads here (WAV,
//! MP3, M4A/AAC, MP4 video's audio track, Ogg Vorbis, FLAC), mixed down to mono and resampled
//! to 16 kHz (rubato's FFT resampler) as a stream.
//!
//! [`AudioStream::read`] hands out samples on demand, so a two-hour recording is never held in
//! memory: the transcriber keeps only the 30 s window it works on.

use crate::{ExtractError, Result};
use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};
use std::collections::VecDeque;
use std::path::Path;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// The sample rate speech models take.
pub const SAMPLE_RATE: u32 = 16_000;
/// Resampler input chunk, frames.
const CHUNK: usize = 1024;

fn bad(s: impl Into<String>) -> ExtractError {
    ExtractError::BadInput(s.into())
}

/// Lowest sample rate accepted (telephone audio is 8 kHz).
pub const MIN_RATE: u32 = 1_000;
/// Highest sample rate accepted (studio recorders go to 384 kHz).
pub const MAX_RATE: u32 = 384_000;
/// Most channels accepted.
pub const MAX_CHANNELS: usize = 32;
/// Fewest bytes a second of any codec read here takes (a 0.8 kbit/s stream); a header
/// declaring more seconds than the file's bytes allow at this rate is lying.
const MIN_BYTES_PER_SECOND: u64 = 100;

/// Refuses headers no real recording has: a sample rate outside 1 kHz–384 kHz, no channel or
/// more than 32, or a duration far beyond what the file's bytes can hold (for PCM, 64 times
/// the bytes; for compressed codecs, 8 times at 0.8 kbit/s). Such a file would otherwise become an
/// hours-long recording to transcribe.
fn check_header(params: &symphonia::core::codecs::audio::AudioCodecParameters, frames: Option<u64>, file_len: u64) -> Result<()> {
    let rate = params.sample_rate.unwrap_or(0);
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(bad(format!("implausible audio header: sample rate {rate} Hz (accepted {MIN_RATE} Hz to {MAX_RATE} Hz)")));
    }
    if let Some(ch) = &params.channels {
        let n = ch.count();
        if n == 0 || n > MAX_CHANNELS {
            return Err(bad(format!("implausible audio header: {n} channels (accepted 1 to {MAX_CHANNELS})")));
        }
    }
    if let Some(frames) = frames {
        let seconds = frames / u64::from(rate);
        use symphonia::core::codecs::audio::well_known::{CODEC_ID_PCM_MULAW, CODEC_ID_PCM_S32LE};
        let is_pcm = (CODEC_ID_PCM_S32LE..=CODEC_ID_PCM_MULAW).contains(&params.codec);
        let pcm = params.bits_per_coded_sample.or(params.bits_per_sample).filter(|_| is_pcm);
        let need = match pcm {
            Some(bits) => {
                frames.saturating_mul(u64::from(bits)).saturating_mul(params.channels.as_ref().map_or(1, |c| c.count()) as u64) / 8
            }
            None => seconds.saturating_mul(MIN_BYTES_PER_SECOND),
        };
        // Far beyond, not merely beyond: a recording cut short (a crash, a full disk) still
        // gives what it holds.
        let allowed = file_len.saturating_mul(if pcm.is_some() { 64 } else { 8 }) + (64 << 10);
        if need > allowed {
            return Err(bad(format!("implausible audio header: declares {} of audio but the file holds {} bytes", hms(seconds), file_len)));
        }
    }
    Ok(())
}

/// `1h02m03s`, `2m03s`, `3s`.
fn hms(s: u64) -> String {
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// A decoded audio file as a stream of 16 kHz mono f32 samples.
pub struct AudioStream {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    in_rate: u32,
    resampler: Option<Fft<f32>>,
    /// Mono samples at the input rate waiting for the resampler.
    pending: Vec<f32>,
    /// 16 kHz samples ready to hand out.
    ready: VecDeque<f32>,
    /// Resampler start-up delay still to drop, output frames.
    delay_left: usize,
    /// Input frames decoded so far, and 16 kHz samples handed out.
    frames_in: u64,
    samples_out: u64,
    /// Packets that failed to decode, and that decoded.
    bad_packets: usize,
    good_packets: usize,
    interleaved: Vec<f32>,
    eof: bool,
    flushed: bool,
    /// Duration from the container, when it says, milliseconds.
    pub duration_ms: Option<u64>,
    /// The codec's name, for messages.
    pub codec: String,
}

impl AudioStream {
    /// Opens an audio (or video) file and prepares its first audio track for decoding.
    pub fn open(path: &Path) -> Result<AudioStream> {
        let meta = std::fs::metadata(path).map_err(|e| bad(crate::note::io_reason(&e)))?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        if meta.len() == 0 {
            return Err(bad("empty file (zero bytes)"));
        }
        let file = std::fs::File::open(path).map_err(|e| bad(crate::note::io_reason(&e)))?;
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let format = symphonia::default::get_probe()
            .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
            .map_err(|e| bad(format!("not a readable audio file ({})", sym_reason(&e))))?;
        let track = format.default_track(TrackType::Audio).ok_or_else(|| bad("no audio track"))?;
        let params = track.codec_params.as_ref().and_then(|p| p.audio()).ok_or_else(|| bad("no audio track"))?.clone();
        let track_id = track.id;
        let in_rate = params.sample_rate.ok_or_else(|| bad("audio track has no sample rate"))?;
        if in_rate == 0 {
            return Err(bad("audio track has sample rate 0"));
        }
        let duration_ms = track.num_frames.map(|n| n * 1000 / in_rate as u64);
        check_header(&params, track.num_frames, meta.len())?;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| bad(format!("unsupported audio codec {:?} ({})", params.codec, sym_reason(&e))))?;
        let codec = format!("{:?}", params.codec);
        let resampler = if in_rate == SAMPLE_RATE {
            None
        } else {
            Some(
                Fft::<f32>::new(in_rate as usize, SAMPLE_RATE as usize, CHUNK, 1, FixedSync::Input)
                    .map_err(|e| bad(format!("cannot resample from {in_rate} Hz: {e}")))?,
            )
        };
        let delay_left = resampler.as_ref().map_or(0, |r| r.output_delay());
        Ok(AudioStream {
            format,
            decoder,
            track_id,
            in_rate,
            resampler,
            pending: Vec::new(),
            ready: VecDeque::new(),
            delay_left,
            frames_in: 0,
            samples_out: 0,
            bad_packets: 0,
            good_packets: 0,
            interleaved: Vec::new(),
            eof: false,
            flushed: false,
            duration_ms,
            codec,
        })
    }

    /// The input's sample rate.
    pub fn input_rate(&self) -> u32 {
        self.in_rate
    }

    /// 16 kHz samples handed out so far.
    pub fn position(&self) -> u64 {
        self.samples_out
    }

    /// Appends up to `n` samples to `buf`; returns how many were appended (0: the end).
    pub fn read(&mut self, buf: &mut Vec<f32>, n: usize) -> Result<usize> {
        while self.ready.len() < n && !self.flushed {
            self.decode_more()?;
        }
        let k = n.min(self.ready.len());
        buf.extend(self.ready.drain(..k));
        self.samples_out += k as u64;
        Ok(k)
    }

    /// Decodes everything left into one buffer (for short clips and tests).
    pub fn read_all(&mut self) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        while self.read(&mut v, 1 << 16)? > 0 {}
        Ok(v)
    }

    fn decode_more(&mut self) -> Result<()> {
        if self.eof {
            return self.flush();
        }
        let packet = match self.format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.eof = true;
                return Ok(());
            }
            // A truncated file ends where its data ends; what decoded so far is kept.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.eof = true;
                return Ok(());
            }
            Err(e) => {
                if self.good_packets == 0 {
                    return Err(bad(format!("corrupt audio ({})", sym_reason(&e))));
                }
                tracing::warn!("audio ends early after a read error: {}", sym_reason(&e));
                self.eof = true;
                return Ok(());
            }
        };
        if packet.track_id != self.track_id {
            return Ok(());
        }
        match self.decoder.decode(&packet) {
            Ok(buf) => {
                self.good_packets += 1;
                let channels = buf.spec().channels().count().max(1);
                self.interleaved.clear();
                buf.copy_to_vec_interleaved(&mut self.interleaved);
                let frames = self.interleaved.len() / channels;
                self.frames_in += frames as u64;
                let scale = 1.0 / channels as f32;
                for f in self.interleaved.chunks_exact(channels) {
                    // Float PCM can hold NaN or infinities (the resampler's FFT panics on them)
                    // and values past full scale: silence and full scale instead.
                    let v = f.iter().sum::<f32>() * scale;
                    self.pending.push(if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) });
                }
                self.resample(false)
            }
            Err(SymError::DecodeError(e)) => {
                self.bad_packets += 1;
                // A few bad packets are skipped (as players do); a stream of them is corruption.
                if self.bad_packets > 8 && self.bad_packets > self.good_packets {
                    return Err(bad(format!("corrupt audio: {} packets failed to decode ({e})", self.bad_packets)));
                }
                Ok(())
            }
            Err(e) => Err(bad(format!("cannot decode audio ({})", sym_reason(&e)))),
        }
    }

    /// Runs whole resampler chunks over `pending` (all of it, zero-padded, when `last`).
    fn resample(&mut self, last: bool) -> Result<()> {
        let Some(r) = self.resampler.as_mut() else {
            self.ready.extend(self.pending.drain(..));
            return Ok(());
        };
        let mut out = vec![0f32; r.output_frames_max()];
        let mut at = 0;
        loop {
            let need = r.input_frames_next();
            let avail = self.pending.len() - at;
            if avail < need && !last {
                break;
            }
            let take = avail.min(need);
            let mut chunk = self.pending[at..at + take].to_vec();
            chunk.resize(need, 0.0);
            let idx = Indexing { input_offset: 0, output_offset: 0, partial_len: Some(take), active_channels_mask: None };
            let input = InterleavedSlice::new(&chunk[..], 1, need).map_err(|e| bad(format!("resampler: {e}")))?;
            let frames_out = r.output_frames_next();
            let mut output = InterleavedSlice::new_mut(&mut out[..], 1, frames_out).map_err(|e| bad(format!("resampler: {e}")))?;
            let (_, produced) = r.process_into_buffer(&input, &mut output, Some(&idx)).map_err(|e| bad(format!("resampler: {e}")))?;
            let skip = self.delay_left.min(produced);
            self.delay_left -= skip;
            self.ready.extend(&out[skip..produced]);
            at += take;
            if last && at >= self.pending.len() {
                break;
            }
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// At the end of input: pushes the remainder and the resampler's delay through, then trims
    /// the output to exactly the input's duration.
    fn flush(&mut self) -> Result<()> {
        if self.good_packets == 0 {
            self.flushed = true;
            return Err(bad(if self.bad_packets > 0 { "corrupt audio: no packet could be decoded" } else { "no audio data" }));
        }
        if self.resampler.is_some() {
            self.resample(true)?;
            let total = (self.frames_in as u128 * SAMPLE_RATE as u128).div_ceil(self.in_rate as u128) as u64;
            // Feed silence until the delayed tail has come out.
            let mut guard = 0;
            while self.samples_out + (self.ready.len() as u64) < total && guard < 16 {
                self.resample(true)?;
                guard += 1;
            }
            let keep = total.saturating_sub(self.samples_out) as usize;
            self.ready.truncate(keep);
        }
        self.flushed = true;
        Ok(())
    }
}

fn sym_reason(e: &SymError) -> String {
    match e {
        SymError::Unsupported(what) => format!("unsupported: {what}"),
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "file ends too early".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// Decodes a whole file to 16 kHz mono (convenience for short clips).
pub fn decode_file(path: &Path) -> Result<Vec<f32>> {
    AudioStream::open(path)?.read_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit PCM WAV of `secs` seconds of a sine at `hz`, `channels` channels.
    pub(crate) fn wav(rate: u32, channels: u16, secs: f32, hz: f32) -> Vec<u8> {
        let n = (rate as f32 * secs) as u32;
        let data_len = n * channels as u32 * 2;
        let mut v = Vec::new();
        v.extend(b"RIFF");
        v.extend((36 + data_len).to_le_bytes());
        v.extend(b"WAVEfmt ");
        v.extend(16u32.to_le_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend(channels.to_le_bytes());
        v.extend(rate.to_le_bytes());
        v.extend((rate * channels as u32 * 2).to_le_bytes());
        v.extend((channels * 2).to_le_bytes());
        v.extend(16u16.to_le_bytes());
        v.extend(b"data");
        v.extend(data_len.to_le_bytes());
        for i in 0..n {
            let s = ((i as f32 / rate as f32 * hz * std::f32::consts::TAU).sin() * 16000.0) as i16;
            for _ in 0..channels {
                v.extend(s.to_le_bytes());
            }
        }
        v
    }

    fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mnema-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn resamples_to_16k_mono_with_exact_length_and_pitch() {
        let p = tmp("s44.wav", &wav(44_100, 2, 2.5, 440.0));
        let s = decode_file(&p).unwrap();
        assert_eq!(s.len(), 40_000, "2.5 s at 16 kHz");
        // The tone survives: count zero crossings in the middle second (440 Hz → ~880).
        let mid = &s[8000..24000];
        let zc = mid.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        assert!((860..=900).contains(&zc), "zero crossings {zc}");
        let peak = mid.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((peak - 16000.0 / 32768.0).abs() < 0.05, "peak {peak}");
    }

    #[test]
    fn streams_in_pieces_like_a_whole_read() {
        let p = tmp("s8.wav", &wav(8_000, 1, 3.0, 300.0));
        let whole = decode_file(&p).unwrap();
        let mut st = AudioStream::open(&p).unwrap();
        let mut parts = Vec::new();
        while st.read(&mut parts, 7_001).unwrap() > 0 {}
        assert_eq!(whole.len(), 48_000);
        assert_eq!(parts, whole);
    }

    #[test]
    fn refuses_bad_files_with_reasons() {
        let err = |p: &Path| decode_file(p).unwrap_err().to_string();
        assert!(err(&tmp("empty.wav", b"")).contains("empty file"));
        assert!(err(&tmp("junk.mp3", &[0x5Au8; 5000])).contains("not a readable audio file"));
        assert!(err(Path::new("/nonexistent/x.wav")).contains("no such file"));
        // A WAV header that promises data but has none.
        let mut w = wav(16_000, 1, 1.0, 200.0);
        w.truncate(44);
        let e = err(&tmp("hollow.wav", &w));
        assert!(e.contains("no audio data") || e.contains("corrupt") || e.contains("readable"), "{e}");
    }

    /// Fuzzing found (audio_decode): a 32-bit float WAV whose samples include NaN and
    /// infinities made the resampler's FFT panic ("Imaginary part of first value was
    /// non-zero") instead of decoding.
    #[test]
    fn float_wav_with_nan_and_infinity_decodes() {
        let samples: Vec<f32> = (0..22_050).map(|i| [0.25, f32::NAN, f32::INFINITY, -f32::INFINITY, 3.0e38, -0.5][i % 6]).collect();
        let mut v = Vec::new();
        v.extend(b"RIFF");
        v.extend((36 + samples.len() as u32 * 4).to_le_bytes());
        v.extend(b"WAVEfmt ");
        v.extend(16u32.to_le_bytes());
        v.extend(3u16.to_le_bytes()); // IEEE float
        v.extend(1u16.to_le_bytes());
        v.extend(22_050u32.to_le_bytes());
        v.extend((22_050u32 * 4).to_le_bytes());
        v.extend(4u16.to_le_bytes());
        v.extend(32u16.to_le_bytes());
        v.extend(b"data");
        v.extend((samples.len() as u32 * 4).to_le_bytes());
        for x in &samples {
            v.extend(x.to_le_bytes());
        }
        let s = decode_file(&tmp("nan.wav", &v)).unwrap();
        assert_eq!(s.len(), 16_000);
        assert!(s.iter().all(|x| x.is_finite()), "non-finite samples came out");
    }

    #[test]
    fn truncated_file_keeps_what_decodes() {
        let mut w = wav(16_000, 1, 2.0, 200.0);
        w.truncate(44 + 16_000); // 0.5 s of the promised 2 s
        let s = decode_file(&tmp("cut.wav", &w)).unwrap();
        assert_eq!(s.len(), 8_000);
    }
}
