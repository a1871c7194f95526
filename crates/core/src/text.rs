//! Text analysis shared by indexing and querying: words are split on Unicode boundaries,
//! lowercased, `ё` folded to `е`, and reduced to their Snowball stem (Russian for Cyrillic
//! words, English for Latin ones), so "подписки" and "подписка" meet on "подписк".
//!
//! **Architecture Invariant:** the index and the query use this one analyzer; changing it
//! means bumping the store's schema version so stored terms are rebuilt.

use rust_stemmers::{Algorithm, Stemmer};
use std::sync::LazyLock;

static RUSSIAN: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::Russian));
static ENGLISH: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// A word of the original text with its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word<'a> {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset just past the last character.
    pub end: usize,
    /// The word as written.
    pub text: &'a str,
}

/// Splits text into words: maximal runs of alphanumeric characters (any script).
pub fn words(text: &str) -> impl Iterator<Item = Word<'_>> {
    let mut it = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while let Some(&(_, c)) = it.peek() {
            if c.is_alphanumeric() {
                break;
            }
            it.next();
        }
        let (start, _) = *it.peek()?;
        let mut end = start;
        while let Some(&(i, c)) = it.peek() {
            if !c.is_alphanumeric() {
                break;
            }
            end = i + c.len_utf8();
            it.next();
        }
        Some(Word { start, end, text: &text[start..end] })
    })
}

/// The search term for one word: lowercased, `ё`→`е`, stemmed by its script.
pub fn term(word: &str) -> String {
    let lower: String = word.chars().flat_map(char::to_lowercase).map(|c| if c == 'ё' { 'е' } else { c }).collect();
    let cyrillic = lower.chars().any(|c| ('\u{0400}'..='\u{04FF}').contains(&c));
    let latin = lower.chars().any(|c| c.is_ascii_alphabetic());
    if cyrillic && !latin {
        RUSSIAN.stem(&lower).into_owned()
    } else if latin && !cyrillic {
        ENGLISH.stem(&lower).into_owned()
    } else {
        lower
    }
}

/// All terms of a text, space-separated: what the full-text index stores.
pub fn index_terms(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for w in words(text) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&term(w.text));
    }
    out
}

/// The distinct terms of a query, in order of first appearance.
pub fn query_terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(query) {
        let t = term(w.text);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_inflections_share_a_stem() {
        assert_eq!(term("подписки"), term("подписка"));
        assert_eq!(term("Подпиской"), term("подписку"));
        assert_eq!(term("ёлка"), term("елка"));
        assert_ne!(term("подписка"), term("подвеска"));
    }

    #[test]
    fn english_inflections_share_a_stem() {
        assert_eq!(term("recipes"), term("recipe"));
        assert_eq!(term("Running"), term("run"));
    }

    #[test]
    fn words_keep_byte_offsets_in_mixed_scripts() {
        let text = "Борщ — beet soup, 42 min!";
        let ws: Vec<_> = words(text).collect();
        assert_eq!(ws.iter().map(|w| w.text).collect::<Vec<_>>(), ["Борщ", "beet", "soup", "42", "min"]);
        for w in &ws {
            assert_eq!(&text[w.start..w.end], w.text);
        }
        assert_eq!(query_terms("soup Soup soups"), vec!["soup".to_string()]);
        assert_eq!(index_terms(""), "");
    }
}
