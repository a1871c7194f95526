//! Reader for the packed 4-bit multilingual-e5-small file (`e5-small-q4.bin`) as shipped.
//!
//! Layout (little-endian): magic `E5S1`, u32 version; i32 hidden, layers, heads, ffn, vocab,
//! max positions, type-vocab; f32 layer-norm eps; i32 block size (32). Then the package's own
//! SentencePiece tables (skipped: mnema tokenizes with the model's `tokenizer.json`), then a
//! directory of tensors: u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 element count,
//! u64 absolute offset, u64 byte count. Q4_0 is GGML's block layout: per 32 weights an f16
//! scale then 16 bytes holding weight j in the low nibble and j+16 in the high nibble.

use crate::ModelError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Architecture numbers stored in the file header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E5Config {
    /// Hidden size (384).
    pub hidden: usize,
    /// Encoder layers (12).
    pub layers: usize,
    /// Attention heads (12).
    pub heads: usize,
    /// Feed-forward size (1536).
    pub ffn: usize,
    /// Vocabulary rows in the embedding matrix.
    pub vocab: usize,
    /// Maximum positions (512).
    pub max_positions: usize,
    /// Layer-norm epsilon.
    pub eps: f64,
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// Little-endian f32.
    F32,
    /// GGML Q4_0 blocks (18 bytes per 32 weights).
    Q4_0,
}

#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    elems: usize,
    offset: usize,
    bytes: usize,
}

/// Shared read-only bytes: the memory-mapped file (pages are read, and counted in RSS, only
/// when touched) or an owned buffer.
pub type Blob = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A parsed `e5-small-q4.bin` over its memory-mapped bytes.
pub struct E5Q4File {
    /// Header numbers.
    pub config: E5Config,
    path: PathBuf,
    data: Blob,
    dir: HashMap<String, Entry>,
}

struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f32(&mut self) -> Option<f32> {
        Some(f32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn usize(&mut self) -> Option<usize> {
        usize::try_from(self.u32()?).ok()
    }
}

impl E5Q4File {
    /// Reads and parses the file; any truncation or inconsistency is a [`ModelError::Format`].
    pub fn open(path: &Path) -> Result<E5Q4File, ModelError> {
        let io = |source| ModelError::Io { path: path.into(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; model files are not modified while mnema runs
        // (setup writes a new file and renames it into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, data: Blob) -> Result<E5Q4File, ModelError> {
        let bad = |reason: &str| ModelError::Format { path: path.into(), reason: reason.into() };
        let bytes: &[u8] = (*data).as_ref();
        let mut c = Cursor { b: bytes, p: 0 };
        if c.take(4) != Some(b"E5S1".as_slice()) {
            return Err(bad("not an e5 q4 file (bad magic)"));
        }
        let t = "truncated header";
        let _version = c.u32().ok_or_else(|| bad(t))?;
        let mut h = [0usize; 7];
        for v in &mut h {
            *v = c.usize().ok_or_else(|| bad(t))?;
        }
        let eps = c.f32().ok_or_else(|| bad(t))? as f64;
        let block = c.u32().ok_or_else(|| bad(t))?;
        let [hidden, layers, heads, ffn, vocab, max_positions, _types] = h;
        if block != 32 || hidden == 0 || heads == 0 || hidden % heads != 0 || hidden % 32 != 0 || ffn % 32 != 0 {
            return Err(bad("unexpected architecture numbers in header"));
        }
        // The encoder is allocated from these numbers before its tensors are read, so numbers
        // the file cannot back (its largest tensors: the layers' Q4 matrices, the Q4 word
        // embeddings, the f32 positions) are refused here.
        let (hd, ld, fd, vd, pd) = (hidden as u128, layers as u128, ffn as u128, vocab as u128, max_positions as u128);
        let q4 = |elems: u128| elems / 32 * 18;
        let need = ld * q4(4 * hd * hd + 2 * fd * hd) + q4(vd * hd) + pd * hd * 4;
        if need > bytes.len() as u128 {
            return Err(bad(&format!(
                "architecture numbers in header need {need} bytes of weights, more than the file holds ({})",
                bytes.len()
            )));
        }
        // The package's own tokenizer tables: skipped.
        let t = "truncated tokenizer section";
        let pieces = c.usize().ok_or_else(|| bad(t))?;
        c.take(16).ok_or_else(|| bad(t))?;
        let blob = usize::try_from(c.u64().ok_or_else(|| bad(t))?).map_err(|_| bad(t))?;
        let skip = (pieces + 1).checked_mul(4).and_then(|a| a.checked_add(pieces * 4)).and_then(|a| a.checked_add(blob));
        c.take(skip.ok_or_else(|| bad(t))?).ok_or_else(|| bad(t))?;
        let _norms = c.u32().ok_or_else(|| bad(t))?;
        let norm_bytes = c.usize().ok_or_else(|| bad(t))?;
        c.take(norm_bytes).ok_or_else(|| bad(t))?;
        let t = "truncated tensor directory";
        let n = c.usize().ok_or_else(|| bad(t))?;
        // An entry takes at least 23 bytes: room is reserved for no more than the rest can hold.
        let mut dir = HashMap::with_capacity(n.min((c.b.len() - c.p) / 23));
        for _ in 0..n {
            let len = c.u16().ok_or_else(|| bad(t))? as usize;
            let name = String::from_utf8_lossy(c.take(len).ok_or_else(|| bad(t))?).into_owned();
            let dtype = match c.take(1).ok_or_else(|| bad(t))?[0] {
                0 => DType::F32,
                1 => DType::Q4_0,
                d => return Err(bad(&format!("tensor {name} has unknown dtype {d}"))),
            };
            let elems = c.usize().ok_or_else(|| bad(t))?;
            let offset = usize::try_from(c.u64().ok_or_else(|| bad(t))?).map_err(|_| bad(t))?;
            let bytes = usize::try_from(c.u64().ok_or_else(|| bad(t))?).map_err(|_| bad(t))?;
            let expect = match dtype {
                DType::F32 => elems * 4,
                DType::Q4_0 => elems / 32 * 18,
            };
            if bytes != expect || offset.checked_add(bytes).is_none_or(|end| end > c.b.len()) {
                return Err(bad(&format!("tensor {name} lies outside the file or has the wrong size")));
            }
            dir.insert(name, Entry { dtype, elems, offset, bytes });
        }
        let config = E5Config { hidden, layers, heads, ffn, vocab, max_positions, eps };
        Ok(E5Q4File { config, path: path.into(), data, dir })
    }

    fn entry(&self, name: &str, dtype: DType, elems: usize) -> Result<&Entry, ModelError> {
        let e =
            self.dir.get(name).ok_or_else(|| ModelError::Format { path: self.path.clone(), reason: format!("tensor {name} missing") })?;
        if e.dtype != dtype || e.elems != elems {
            return Err(ModelError::Format {
                path: self.path.clone(),
                reason: format!("tensor {name} is {:?}×{}, expected {dtype:?}×{elems}", e.dtype, e.elems),
            });
        }
        Ok(e)
    }

    /// An f32 tensor with exactly `elems` elements.
    pub fn f32(&self, name: &str, elems: usize) -> Result<Vec<f32>, ModelError> {
        let e = self.entry(name, DType::F32, elems)?;
        Ok((*self.data).as_ref()[e.offset..e.offset + e.bytes]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The raw Q4_0 blocks of a tensor with exactly `elems` elements.
    pub fn q4(&self, name: &str, elems: usize) -> Result<&[u8], ModelError> {
        let e = self.entry(name, DType::Q4_0, elems)?;
        Ok(&(*self.data).as_ref()[e.offset..e.offset + e.bytes])
    }

    /// A Q4_0 tensor as a handle on the file's bytes plus its byte range, without copying.
    pub fn q4_shared(&self, name: &str, elems: usize) -> Result<(Blob, std::ops::Range<usize>), ModelError> {
        let e = self.entry(name, DType::Q4_0, elems)?;
        Ok((self.data.clone(), e.offset..e.offset + e.bytes))
    }
}

/// Dequantizes Q4_0 blocks into `out` (`out.len()` = 32 × blocks).
pub fn dequantize_q4_0(blocks: &[u8], out: &mut [f32]) {
    for (b, o) in blocks.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for j in 0..16 {
            o[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
            o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m × 2^-24.
            let v = m as f32 / 16_777_216.0;
            return if sign != 0 { -v } else { v };
        }
        (31, m) => sign | 0x7F80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x8001), -5.960_464_5e-8);
        assert!(f16_to_f32(0x7C00).is_infinite());
    }

    #[test]
    fn q4_0_block_layout() {
        // scale 1.0; byte j: low nibble j%16, high nibble 15 - j%16.
        let mut b = vec![0x00, 0x3C];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize_q4_0(&b, &mut out);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[15], 7.0);
        assert_eq!(out[16], 7.0);
        assert_eq!(out[31], -8.0);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let p = Path::new("x.bin");
        assert!(matches!(E5Q4File::parse(p, Arc::new(b"GGUF....".to_vec())), Err(ModelError::Format { .. })));
        let mut head = b"E5S1".to_vec();
        head.extend([1, 0, 0, 0, 128, 1, 0, 0]);
        let err = E5Q4File::parse(p, Arc::new(head)).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    /// A header with the given architecture numbers, an empty tokenizer section and a tensor
    /// directory that claims `tensors` entries.
    fn header(hidden: u32, layers: u32, ffn: u32, vocab: u32, positions: u32, tensors: u32) -> Vec<u8> {
        let mut v = b"E5S1".to_vec();
        v.extend(1u32.to_le_bytes());
        for x in [hidden, layers, 1, ffn, vocab, positions, 2] {
            v.extend(x.to_le_bytes());
        }
        v.extend(1e-12f32.to_le_bytes());
        v.extend(32u32.to_le_bytes());
        v.extend(0u32.to_le_bytes()); // pieces
        v.extend([0; 16]);
        v.extend(0u64.to_le_bytes()); // piece bytes
        v.extend([0; 4]); // (pieces + 1) offsets
        v.extend(0u32.to_le_bytes()); // norms
        v.extend(0u32.to_le_bytes()); // norm bytes
        v.extend(tensors.to_le_bytes());
        v
    }

    /// Fuzzing found (e5_reader): a directory count of 2^32 - 1 in a few-KB file reserved
    /// room for four billion entries before reading the first.
    #[test]
    fn directory_count_is_bounded_by_the_file() {
        // 4 KiB of zeros after the count: empty entries, then the file ends.
        let mut v = header(32, 1, 32, 4, 4, u32::MAX);
        v.resize(v.len() + 4096, 0);
        let err = E5Q4File::parse(Path::new("x.bin"), Arc::new(v)).err().unwrap();
        assert!(err.to_string().contains("truncated tensor directory"), "{err}");
    }

    /// Architecture numbers no file could back were accepted, and the encoder built from them
    /// allocates before it looks for a layer's tensors: the tiny seed of the `e5_reader` fuzz
    /// target with 2^32 - 1 layers asked for 1.7 TB, with a 2^31-wide feed-forward 256 GB.
    #[test]
    fn architecture_larger_than_the_file_is_refused() {
        let p = Path::new("x.bin");
        for (hidden, layers, ffn, vocab, positions) in
            [(1 << 30, 1, 32, 4, 4), (32, u32::MAX, 32, 4, 4), (32, 1, 1 << 31, 4, 4), (32, 1, 32, u32::MAX, u32::MAX)]
        {
            let err = E5Q4File::parse(p, Arc::new(header(hidden, layers, ffn, vocab, positions, 0))).err().expect("accepted");
            assert!(err.to_string().contains("more than the file holds"), "{hidden} {layers} {ffn} {vocab}: {err}");
        }
        // Numbers the file can hold still open (the tensors are checked when asked for).
        let mut ok = header(32, 1, 32, 4, 4, 0);
        ok.resize(ok.len() + 32 * 32 * 4 + 32 * 32 * 2 + 4 * 32 * 2, 0);
        E5Q4File::parse(p, Arc::new(ok)).unwrap();
    }
}
