//! Audio decoding (probe, demux, decode, mix-down, resampling to 16 kHz) streamed to the end
//! in 30 s windows, as the transcriber reads it. The first input byte picks the file name's
//! extension (the probe's hint); the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnema_extract::audio::{AudioStream, SAMPLE_RATE};

const EXTS: [&str; 8] = ["wav", "mp3", "m4a", "ogg", "flac", "aac", "mp4", "bin"];
/// The transcriber's window: 30 s at 16 kHz.
const WINDOW: usize = 30 * SAMPLE_RATE as usize;
/// Decoding stops after this many samples (1 minute): a short input that claims hours of
/// audio is the decoder's concern to refuse, not a reason for the run to stall.
const CAP: u64 = 2 * WINDOW as u64;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let path = mnema_fuzz::scratch_file(&format!("input.{}", EXTS[sel as usize % EXTS.len()]), body);
    let Ok(mut stream) = AudioStream::open(&path) else { return };
    let mut buf = Vec::with_capacity(WINDOW);
    let mut total = 0u64;
    while total < CAP {
        buf.clear();
        match stream.read(&mut buf, WINDOW) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                assert_eq!(k, buf.len(), "read reported {k} samples, appended {}", buf.len());
                assert!(k <= WINDOW);
                total += k as u64;
            }
        }
    }
    assert_eq!(stream.position(), total);
});
