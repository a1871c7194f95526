//! The note reader (validation, BOM) and the token-aware chunker with the e5 tokenizer, on
//! arbitrary bytes. Chunk sizes vary with the input so short inputs reach the cutting logic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnema_extract::chunk::{chunk_text, ChunkSpec};
use mnema_extract::embed::HfTokenizer;
use mnema_extract::note::note_text;
use std::sync::LazyLock;

static TOKENIZER: LazyLock<HfTokenizer> = LazyLock::new(|| {
    let p = mnema_fuzz::models_dir().join("multilingual-e5-small/tokenizer.json");
    HfTokenizer::from_file(&p).unwrap_or_else(|e| panic!("cannot load {} (run scripts/setup.sh): {e}", p.display()))
});

fuzz_target!(
    // The 17 MB tokenizer is parsed once before the first input, so its load (seconds under
    // the sanitizer) never counts against an input's time limit.
    init: {
        LazyLock::force(&TOKENIZER);
    },
    |data: &[u8]| {
    let Ok(text) = note_text(data.to_vec()) else { return };
    assert!(!text.contains('\0') && !text.trim().is_empty());
    let k = data.len();
    let spec = ChunkSpec { max_tokens: k % 40, overlap: k % 7 };
    let chunks = chunk_text(&*TOKENIZER, &text, spec).expect("the tokenizer refused valid UTF-8 text");
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.seq as usize, i);
        assert!(c.start < c.end && c.end as usize <= text.len(), "chunk {i}: {}..{} of {}", c.start, c.end, text.len());
        assert_eq!(&text[c.start as usize..c.end as usize], c.text, "chunk {i} text differs from its byte range");
        assert_eq!(c.text.trim(), c.text);
    }
    if let (Some(first), Some(last)) = (chunks.first(), chunks.last()) {
        // Every word of the note is in some chunk: none is lost at the edges (what lies
        // outside may only be characters the tokenizer drops: spaces, control characters).
        let words = |s: &str| s.chars().any(char::is_alphanumeric);
        assert!(!words(&text[..first.start as usize]), "text before the first chunk is lost");
        assert!(!words(&text[last.end as usize..]), "text after the last chunk is lost");
        // ... nor between two chunks (they overlap, or only spaces lie between them).
        for w in chunks.windows(2) {
            if w[1].start > w[0].end {
                assert!(!words(&text[w[0].end as usize..w[1].start as usize]), "text between chunks {} and {} is lost", w[0].seq, w[1].seq);
            }
        }
    }
});
