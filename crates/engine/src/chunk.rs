//! Token-aware chunking: long texts are cut into windows of at most `max_tokens` model
//! tokens that overlap by `overlap` tokens, preferring to cut at a line or sentence end.

use crate::{Result, TokenCounter};
use mnema_core::Chunk;

/// How to cut.
#[derive(Debug, Clone, Copy)]
pub struct ChunkSpec {
    /// Most tokens per chunk.
    pub max_tokens: usize,
    /// Tokens repeated at the start of the next chunk.
    pub overlap: usize,
}

/// Cuts `text` into chunks; their byte ranges point into `text`.
pub fn chunk_text(tokens: &dyn TokenCounter, text: &str, spec: ChunkSpec) -> Result<Vec<Chunk>> {
    let max = spec.max_tokens.max(8);
    let overlap = spec.overlap.min(max / 2);
    let offs: Vec<(usize, usize)> = tokens.token_offsets(text)?.into_iter().filter(|&(a, b)| b > a && b <= text.len()).collect();
    let mut chunks = Vec::new();
    let mut push = |from: usize, to: usize| {
        let (mut a, mut b) = (from.min(text.len()), to.min(text.len()));
        while !text.is_char_boundary(a) {
            a -= 1;
        }
        while !text.is_char_boundary(b) {
            b += 1;
        }
        let piece = &text[a..b];
        let lead = piece.len() - piece.trim_start().len();
        let piece = piece.trim();
        if !piece.is_empty() {
            let seq = chunks.len() as u32;
            let start = (a + lead) as u32;
            chunks.push(Chunk { seq, text: piece.to_string(), start, end: start + piece.len() as u32, start_ms: None, end_ms: None });
        }
    };
    if offs.len() <= max {
        push(0, text.len());
        return Ok(chunks);
    }
    let n = offs.len();
    let mut start = 0;
    loop {
        let mut end = (start + max).min(n);
        if end < n {
            // The last sentence or line end in the window's second half, if any.
            let floor = start + max / 2;
            if let Some(cut) = (floor + 1..=end).rev().find(|&i| {
                let gap = &text[offs[i - 1].1.min(text.len())..offs[i].0.min(text.len()).max(offs[i - 1].1.min(text.len()))];
                let prev = &text[offs[i - 1].0..offs[i - 1].1];
                gap.contains('\n') || prev.ends_with(['.', '!', '?', '…', ';'])
            }) {
                end = cut;
            }
        }
        // The first window starts at the text's start and the last ends at its end, so
        // nothing at the edges is lost even where the tokenizer's offsets skip characters
        // (control characters before a word shifted them past the last words).
        // A window ends where the next token starts, not where its own last token ends: what
        // lies between two tokens (characters the tokenizer dropped or its offsets skipped)
        // then belongs to this chunk, so consecutive chunks touch even without overlap.
        let from = if start == 0 { 0 } else { offs[start].0 };
        let to = if end >= n { text.len() } else { offs[end].0 };
        push(from, to);
        if end >= n {
            break;
        }
        start = (end - overlap).max(start + 1);
    }
    Ok(chunks)
}
