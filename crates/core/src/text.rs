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

/// Function words that carry no topic. Queries drop them (unless nothing else is left) so
/// that "как приготовить борщ" does not rank every note containing "как"; the index keeps
/// them, so a query of only such words still finds its text.
const STOPWORDS: &[&str] = &[
    "и",
    "в",
    "во",
    "не",
    "что",
    "он",
    "на",
    "я",
    "с",
    "со",
    "как",
    "а",
    "то",
    "все",
    "всё",
    "она",
    "так",
    "его",
    "но",
    "да",
    "ты",
    "к",
    "у",
    "же",
    "вы",
    "за",
    "бы",
    "по",
    "только",
    "ее",
    "её",
    "мне",
    "было",
    "вот",
    "от",
    "меня",
    "еще",
    "ещё",
    "нет",
    "о",
    "об",
    "из",
    "ему",
    "когда",
    "даже",
    "ну",
    "ли",
    "если",
    "уже",
    "или",
    "ни",
    "быть",
    "был",
    "него",
    "до",
    "вас",
    "там",
    "потом",
    "себя",
    "ей",
    "может",
    "они",
    "тут",
    "где",
    "есть",
    "надо",
    "ней",
    "для",
    "мы",
    "тебя",
    "их",
    "чем",
    "была",
    "сам",
    "чтоб",
    "без",
    "чего",
    "раз",
    "тоже",
    "себе",
    "под",
    "будет",
    "ж",
    "тогда",
    "кто",
    "этот",
    "того",
    "потому",
    "этого",
    "какой",
    "какие",
    "какая",
    "ним",
    "здесь",
    "этом",
    "мой",
    "тем",
    "чтобы",
    "нее",
    "были",
    "куда",
    "зачем",
    "всех",
    "можно",
    "при",
    "после",
    "над",
    "тот",
    "через",
    "эти",
    "нас",
    "про",
    "них",
    "эту",
    "моя",
    "свою",
    "этой",
    "перед",
    "им",
    "между",
    "это",
    "the",
    "a",
    "an",
    "and",
    "or",
    "of",
    "to",
    "in",
    "on",
    "at",
    "for",
    "with",
    "by",
    "from",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "as",
    "not",
    "no",
    "do",
    "does",
    "did",
    "how",
    "what",
    "which",
    "who",
    "why",
    "when",
    "where",
    "can",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "my",
    "your",
    "our",
    "their",
    "me",
    "him",
    "her",
    "us",
    "them",
    "so",
    "if",
    "then",
    "than",
    "too",
    "very",
    "just",
    "about",
    "into",
    "over",
    "up",
    "out",
    "there",
    "some",
    "any",
    "all",
];

fn is_stopword(word: &str) -> bool {
    let lower = word.to_lowercase();
    STOPWORDS.contains(&lower.as_str())
}

/// The distinct terms of a query, in order of first appearance, function words dropped
/// unless the query has nothing else.
pub fn query_terms(query: &str) -> Vec<String> {
    let ws: Vec<Word<'_>> = words(query).collect();
    let content: Vec<&Word<'_>> = ws.iter().filter(|w| !is_stopword(w.text)).collect();
    let pick: Vec<&Word<'_>> = if content.is_empty() { ws.iter().collect() } else { content };
    let mut out: Vec<String> = Vec::new();
    for w in pick {
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
        assert_eq!(query_terms("как приготовить борщ"), vec![term("приготовить"), term("борщ")]);
        assert_eq!(query_terms("How to"), vec![term("how"), term("to")], "only stopwords: kept");
        assert_eq!(index_terms(""), "");
    }
}
