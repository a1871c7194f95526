//! A long note reports how far its embedding got, through the progress callback, before its
//! outcome (real store, real embedding model).

use mnema_core::Config;
use mnema_ingest::{Ingester, Progress, Status};
use mnema_models::manager::ModelManager;
use mnema_store::SqliteStore;
use std::path::PathBuf;

#[test]
fn long_notes_report_chunks_embedded_before_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let models = std::env::var_os("MNEMA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let mut config = Config::at(&dir.path().join("home"), &models);
    config.chunk_tokens = 32;
    config.chunk_overlap = 0;
    let long = dir.path().join("long.md");
    let text: String =
        (0..700).map(|i| format!("Абзац {i}: заметка о погоде, саде и планах на неделю. Paragraph {i} about the weather.\n")).collect();
    std::fs::write(&long, text).unwrap();
    let short = dir.path().join("short.md");
    std::fs::write(&short, "Короткая заметка.\n").unwrap();
    let store = SqliteStore::open(&config.home).unwrap();
    let manager = ModelManager::new(2 << 30);
    let mut events: Vec<(String, usize, usize)> = Vec::new();
    let outcomes = Ingester::new(&config, &store, &manager)
        .run_with(&[short.clone(), long.clone()], |p| match p {
            Progress::File(o) => events.push((o.path.file_name().unwrap().to_string_lossy().into_owned(), o.chunks, 0)),
            Progress::Chunks { path, done, total } => {
                events.push((path.file_name().unwrap().to_string_lossy().into_owned() + " chunks", done, total))
            }
        })
        .unwrap();
    assert!(outcomes.iter().all(|o| o.status == Status::Indexed), "{outcomes:?}");
    let total = outcomes.iter().find(|o| o.path.ends_with("long.md")).unwrap().chunks;
    assert!(total > 600, "{total} chunks");
    let steps: Vec<&(String, usize, usize)> = events.iter().filter(|e| e.0 == "long.md chunks").collect();
    assert!(steps.len() >= 2, "{events:?}");
    assert!(steps.iter().all(|e| e.2 == total && e.1 > 0 && e.1 < total), "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0].1 < w[1].1), "{steps:?}");
    let done_at = events.iter().position(|e| e.0 == "long.md").unwrap();
    let last_step = events.iter().rposition(|e| e.0 == "long.md chunks").unwrap();
    assert!(last_step < done_at, "{events:?}");
}
