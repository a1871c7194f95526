//! ONNX Runtime loads once per process: a later runtime naming another library gets a clear
//! refusal, not silently the first library. (Its own test binary: the first load decides.)

use mnema_extract::vad::SileroVad;
use mnema_extract::Runtime;
use std::path::PathBuf;

#[test]
fn a_second_onnx_runtime_library_is_refused_by_name() {
    let models = std::env::var_os("MNEMA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let rt = Runtime::new(&models);
    SileroVad::load(&rt).expect("silero VAD and onnxruntime: run scripts/setup.sh");
    // The same library again is fine.
    SileroVad::load(&rt).unwrap();
    let mut other = rt.clone();
    other.onnxruntime = Some("/opt/other/libonnxruntime.so".into());
    let e = SileroVad::load(&other).err().expect("another library refused");
    assert_eq!(e.kind(), mnema_core::ErrorKind::Unavailable);
    let msg = e.to_string();
    assert!(msg.contains("already loaded") && msg.contains("/opt/other/libonnxruntime.so"), "{msg}");
}
