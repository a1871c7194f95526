//! The packed e5 model-file reader, then the BERT encoder built from it: whatever the header
//! claims, memory use stays bounded by the file's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnema_models::e5q4::E5Q4File;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = E5Q4File::open(&mnema_fuzz::scratch_file("e5-small-q4.bin", data)) else { return };
    let _ = mnema_extract::bert::Bert::from_e5q4(&f, mnema_extract::dense::Precision::F32);
});
