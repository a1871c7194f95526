//! The CTranslate2 model-file reader (Whisper weights) from memory and from a file, every
//! tensor read back, then the Whisper model built from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnema_models::ct2::Ct2File;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let mem = Ct2File::parse(Path::new("model.bin"), Arc::new(data.to_vec()));
    let file = Ct2File::open(&mnema_fuzz::scratch_file("model.bin", data));
    assert_eq!(mem.is_ok(), file.is_ok(), "memory and file readers disagree");
    let (Ok(mem), Ok(file)) = (mem, file) else { return };
    let mut names: Vec<String> = mem.names().map(str::to_owned).collect();
    names.sort();
    for name in &names {
        let (t, bytes) = mem.get(name).expect("a listed tensor is readable");
        let elems = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).expect("dims overflow");
        assert_eq!(elems * t.dtype.size(), bytes.len(), "{name}: dims {:?} for {} bytes", t.dims, bytes.len());
        assert_eq!(file.get(name).map(|(_, b)| b.into_owned()), Some(bytes.into_owned()));
        if let Ok((v, dims)) = mem.f32(name) {
            assert_eq!(v.len(), elems);
            assert_eq!(dims, t.dims);
        }
        if let Ok((v, _)) = mem.f16_bits(name) {
            assert_eq!(v.len(), elems);
        }
        let _ = mem.int(name);
    }
    let _ = mnema_extract::whisper::model::WhisperModel::from_ct2(&mem, mnema_extract::whisper::SpeechDtype::Q8);
});
