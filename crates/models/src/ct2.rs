//! Reader for CTranslate2 `model.bin` files as shipped (the Whisper base weights come this way).
//!
//! Layout (little-endian): u32 binary version (≥ 5 here); the spec name (u16 length, bytes
//! with a trailing NUL, e.g. `WhisperSpec`); u32 spec revision; u32 tensor count, then per
//! tensor: name (u16 length + NUL-terminated bytes), u8 rank, rank × u32 dims, u8 dtype
//! (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count, the raw data; then u32 alias
//! count and (alias, target) name pairs. Only the table is read at open; each tensor's bytes
//! are read when asked for, so loading holds one tensor's raw bytes at a time (a mapping would
//! keep every touched page of the 145 MB file resident until the load ends).

use crate::e5q4::{f16_to_f32, Blob};
use crate::ModelError;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

enum Data {
    File(std::fs::File),
    Mem(Blob),
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    /// f32.
    F32,
    /// i8.
    I8,
    /// i16.
    I16,
    /// i32.
    I32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl Ct2DType {
    fn from_code(c: u8) -> Option<Ct2DType> {
        Some(match c {
            0 => Ct2DType::F32,
            1 => Ct2DType::I8,
            2 => Ct2DType::I16,
            3 => Ct2DType::I32,
            4 => Ct2DType::F16,
            5 => Ct2DType::BF16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Ct2DType::I8 => 1,
            Ct2DType::I16 | Ct2DType::F16 | Ct2DType::BF16 => 2,
            Ct2DType::F32 | Ct2DType::I32 => 4,
        }
    }
}

/// One tensor's place in the file.
#[derive(Debug, Clone)]
pub struct Ct2Tensor {
    /// Dimensions (empty for scalars).
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: Ct2DType,
    offset: usize,
    bytes: usize,
}

/// A parsed CTranslate2 model file over its memory-mapped bytes.
pub struct Ct2File {
    /// The spec name, e.g. `WhisperSpec`.
    pub spec: String,
    /// The spec revision.
    pub revision: u32,
    path: PathBuf,
    data: Data,
    tensors: HashMap<String, Ct2Tensor>,
    aliases: HashMap<String, String>,
}

struct Reader<R> {
    r: R,
    p: usize,
    len: usize,
}

impl<R: Read + Seek> Reader<R> {
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.p.checked_add(n)? > self.len {
            return None;
        }
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).ok()?;
        self.p += n;
        Some(b)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        if self.p.checked_add(n)? > self.len {
            return None;
        }
        self.r.seek(SeekFrom::Current(n as i64)).ok()?;
        self.p += n;
        Some(())
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(&b);
        Some(String::from_utf8_lossy(b).into_owned())
    }
}

impl Ct2File {
    /// Opens the file and reads its table; truncation or inconsistency is a
    /// [`ModelError::Format`].
    pub fn open(path: &Path) -> Result<Ct2File, ModelError> {
        let io = |source| ModelError::Io { path: path.into(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len() as usize;
        let (head, tensors, aliases) = Self::table(path, Reader { r: std::io::BufReader::new(file.try_clone().map_err(io)?), p: 0, len })?;
        Ok(Ct2File { spec: head.0, revision: head.1, path: path.into(), data: Data::File(file), tensors, aliases })
    }

    /// Parses bytes already in memory.
    pub fn parse(path: &Path, data: Blob) -> Result<Ct2File, ModelError> {
        let len = (*data).as_ref().len();
        let (head, tensors, aliases) = Self::table(path, Reader { r: std::io::Cursor::new((*data).as_ref()), p: 0, len })?;
        Ok(Ct2File { spec: head.0, revision: head.1, path: path.into(), data: Data::Mem(data), tensors, aliases })
    }

    #[allow(clippy::type_complexity)]
    fn table<R: Read + Seek>(
        path: &Path,
        mut c: Reader<R>,
    ) -> Result<((String, u32), HashMap<String, Ct2Tensor>, HashMap<String, String>), ModelError> {
        let bad = |reason: String| ModelError::Format { path: path.into(), reason };
        let t = || bad("truncated header".into());
        let version = c.u32().ok_or_else(t)?;
        if !(5..=6).contains(&version) {
            return Err(bad(format!("not a CTranslate2 model file (binary version {version})")));
        }
        let spec = c.string().ok_or_else(t)?;
        let revision = c.u32().ok_or_else(t)?;
        let n = c.u32().ok_or_else(t)? as usize;
        let mut tensors = HashMap::with_capacity(n.min(4096));
        for _ in 0..n {
            let t = || bad("truncated tensor table".into());
            let name = c.string().ok_or_else(t)?;
            let rank = c.u8().ok_or_else(t)? as usize;
            let mut dims = Vec::with_capacity(rank);
            for _ in 0..rank {
                dims.push(c.u32().ok_or_else(t)? as usize);
            }
            let code = c.u8().ok_or_else(t)?;
            let dtype = Ct2DType::from_code(code).ok_or_else(|| bad(format!("tensor {name} has unknown dtype {code}")))?;
            let nbytes = c.u32().ok_or_else(t)? as usize;
            let elems = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if elems.and_then(|e| e.checked_mul(dtype.size())) != Some(nbytes) {
                return Err(bad(format!("tensor {name}: {nbytes} bytes for dims {dims:?}")));
            }
            let offset = c.p;
            c.skip(nbytes).ok_or_else(t)?;
            tensors.insert(name, Ct2Tensor { dims, dtype, offset, bytes: nbytes });
        }
        let mut aliases = HashMap::new();
        if let Some(na) = c.u32() {
            for _ in 0..na {
                let t = || bad("truncated alias table".into());
                let a = c.string().ok_or_else(t)?;
                let target = c.string().ok_or_else(t)?;
                // As CTranslate2's loader: a stored tensor wins over an alias of its name, and
                // an alias to nothing is ignored (an alias over a tensor's own name once made
                // that tensor unreadable).
                if !tensors.contains_key(&a) && tensors.contains_key(&target) {
                    aliases.insert(a, target);
                }
            }
        }
        Ok(((spec, revision), tensors, aliases))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of all stored tensors (aliases excluded).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A tensor by name (aliases resolved) and its raw bytes.
    pub fn get(&self, name: &str) -> Option<(&Ct2Tensor, Cow<'_, [u8]>)> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        let t = self.tensors.get(name)?;
        let bytes = match &self.data {
            Data::Mem(b) => Cow::Borrowed(&(**b).as_ref()[t.offset..t.offset + t.bytes]),
            Data::File(f) => {
                use std::os::unix::fs::FileExt;
                let mut v = vec![0u8; t.bytes];
                f.read_exact_at(&mut v, t.offset as u64).ok()?;
                Cow::Owned(v)
            }
        };
        Some((t, bytes))
    }

    fn need(&self, name: &str) -> Result<(&Ct2Tensor, Cow<'_, [u8]>), ModelError> {
        self.get(name).ok_or_else(|| ModelError::Format { path: self.path.clone(), reason: format!("tensor {name} missing or unreadable") })
    }

    /// An f16 or f32 tensor as IEEE half bits (f16 as stored, f32 rounded), with its dims.
    pub fn f16_bits(&self, name: &str) -> Result<(Vec<u16>, Vec<usize>), ModelError> {
        let (t, b) = self.need(name)?;
        let v = match t.dtype {
            Ct2DType::F16 => b.chunks_exact(2).map(|x| u16::from_le_bytes([x[0], x[1]])).collect(),
            _ => {
                drop(b);
                return self.f32(name).map(|(v, d)| (v.into_iter().map(|x| half::f16::from_f32(x).to_bits()).collect(), d));
            }
        };
        Ok((v, t.dims.clone()))
    }

    /// A tensor converted to f32 (from f32, f16 or bf16), with its dims; errors name the file.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let (t, b) = self.need(name)?;
        let v = match t.dtype {
            Ct2DType::F32 => b.chunks_exact(4).map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]])).collect(),
            Ct2DType::F16 => b.chunks_exact(2).map(|x| f16_to_f32(u16::from_le_bytes([x[0], x[1]]))).collect(),
            Ct2DType::BF16 => b.chunks_exact(2).map(|x| f32::from_bits((u16::from_le_bytes([x[0], x[1]]) as u32) << 16)).collect(),
            d => {
                return Err(ModelError::Format {
                    path: self.path.clone(),
                    reason: format!("tensor {name} is {d:?}, expected floats (quantized files are not supported)"),
                })
            }
        };
        Ok((v, t.dims.clone()))
    }

    /// An integer scalar (i8/i16/i32), e.g. `decoder/num_heads`.
    pub fn int(&self, name: &str) -> Option<i64> {
        let (t, b) = self.get(name)?;
        Some(match t.dtype {
            Ct2DType::I8 => *b.first()? as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes(b.get(..2)?.try_into().ok()?) as i64,
            Ct2DType::I32 => i32::from_le_bytes(b.get(..4)?.try_into().ok()?) as i64,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn put_str(v: &mut Vec<u8>, s: &str) {
        v.extend(((s.len() + 1) as u16).to_le_bytes());
        v.extend(s.as_bytes());
        v.push(0);
    }

    fn sample() -> Vec<u8> {
        let mut v = 5u32.to_le_bytes().to_vec();
        put_str(&mut v, "WhisperSpec");
        v.extend(3u32.to_le_bytes());
        v.extend(2u32.to_le_bytes());
        put_str(&mut v, "a/weight");
        v.push(2);
        v.extend(2u32.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        v.push(4);
        v.extend(4u32.to_le_bytes());
        v.extend([0x00, 0x3C, 0x00, 0xC0]); // 1.0, -2.0 in f16
        put_str(&mut v, "heads");
        v.push(0);
        v.push(2);
        v.extend(2u32.to_le_bytes());
        v.extend(8i16.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        put_str(&mut v, "b/weight");
        put_str(&mut v, "a/weight");
        v
    }

    #[test]
    fn reads_tensors_scalars_and_aliases() {
        let f = Ct2File::parse(Path::new("m.bin"), Arc::new(sample())).unwrap();
        assert_eq!(f.spec, "WhisperSpec");
        assert_eq!(f.revision, 3);
        assert_eq!(f.f32("a/weight").unwrap(), (vec![1.0, -2.0], vec![2, 1]));
        assert_eq!(f.f32("b/weight").unwrap().0, vec![1.0, -2.0]);
        assert_eq!(f.int("heads"), Some(8));
        assert!(f.f32("nope").unwrap_err().to_string().contains("tensor nope missing"));
    }

    #[test]
    fn rejects_truncation_and_garbage() {
        let full = sample();
        for cut in [3, 10, 30, 45] {
            let err = Ct2File::parse(Path::new("m.bin"), Arc::new(full[..cut].to_vec())).err().expect("truncated file accepted");
            assert!(err.to_string().contains("truncated"), "{cut}: {err}");
        }
        let err = Ct2File::parse(Path::new("m.bin"), Arc::new(b"RIFF\0\0\0\0".to_vec())).err().unwrap();
        assert!(err.to_string().contains("not a CTranslate2"), "{err}");
    }

    /// Found writing the ct2_reader fuzz target: dims whose product overflows (2^16 four times is 2^64,
    /// which wraps to 0) passed the size check against a zero-byte tensor, so a tensor could
    /// claim 2^64 elements backed by nothing (and the product panics in a checked build).
    #[test]
    fn dims_whose_product_overflows_are_refused() {
        let mut v = 5u32.to_le_bytes().to_vec();
        put_str(&mut v, "WhisperSpec");
        v.extend(3u32.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        put_str(&mut v, "huge");
        v.push(4);
        for _ in 0..4 {
            v.extend((1u32 << 16).to_le_bytes());
        }
        v.push(0);
        v.extend(0u32.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        let err = Ct2File::parse(Path::new("m.bin"), Arc::new(v)).err().expect("overflowing dims accepted");
        assert!(err.to_string().contains("tensor huge: 0 bytes for dims [65536, 65536, 65536, 65536]"), "{err}");
    }

    /// Found by the 1M-input ct2_reader campaign: an alias with a stored tensor's own name hid
    /// that tensor (listed by `names`, unreadable by `get`).
    #[test]
    fn aliases_name_tensors_and_hide_none() {
        let with_alias = |alias: &str, target: &str| {
            let mut v = sample();
            // The sample ends with one alias (b/weight → a/weight): make it two.
            let n = v.len() - (2 + "b/weight".len() + 1) - (2 + "a/weight".len() + 1) - 4;
            v[n..n + 4].copy_from_slice(&2u32.to_le_bytes());
            put_str(&mut v, alias);
            put_str(&mut v, target);
            Ct2File::parse(Path::new("m.bin"), Arc::new(v))
        };
        // An alias over a stored tensor's name: the tensor wins.
        let f = with_alias("heads", "a/weight").unwrap();
        assert_eq!(f.int("heads"), Some(8));
        // An alias to nothing is ignored.
        let f = with_alias("c/weight", "nowhere").unwrap();
        assert!(f.get("c/weight").is_none());
        let f = with_alias("c/weight", "a/weight").unwrap();
        assert_eq!(f.f32("c/weight").unwrap().0, vec![1.0, -2.0]);
        // The input the campaign found: every listed tensor is readable.
        let found = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/ct2_reader/alias-over-tensor.bin")).unwrap();
        let f = Ct2File::parse(Path::new("m.bin"), Arc::new(found)).unwrap();
        assert!(f.names().count() > 0);
        for name in f.names() {
            assert!(f.get(name).is_some(), "{name} is listed but unreadable");
        }
    }
}
