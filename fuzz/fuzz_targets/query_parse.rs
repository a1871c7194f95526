//! Query parsing: word splitting, stemming, index and query terms, dates (`--since`,
//! `--until`), search mode, kind and size settings, on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnema_core::{text, time, ByteSize, Kind, SearchMode};

fuzz_target!(|s: &str| {
    let mut prev_end = 0;
    for w in text::words(s) {
        assert!(w.start >= prev_end && w.start < w.end, "word {w:?} after {prev_end}");
        assert_eq!(&s[w.start..w.end], w.text);
        assert!(w.text.chars().all(char::is_alphanumeric));
        prev_end = w.end;
        let _ = text::term(w.text);
    }
    let _ = text::index_terms(s);
    let q = text::query_terms(s);
    for (i, t) in q.iter().enumerate() {
        assert!(!q[..i].contains(t), "query term {t} repeated");
    }

    if let Ok(t) = time::parse(s) {
        // Within years 0..=9999 the formatted time reads back as the same second.
        if (time::parse("0000-01-01").unwrap()..=time::parse("9999-12-31T23:59:59").unwrap()).contains(&t) {
            assert_eq!(time::parse(&time::format(t)), Ok(t), "{s:?} → {t} → {}", time::format(t));
        }
    }
    if let Ok(k) = s.parse::<Kind>() {
        assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
    }
    let _ = Kind::from_extension(s);
    if let Ok(m) = s.parse::<SearchMode>() {
        // Exactly the three names parse, each to its own mode.
        let expected = match s {
            "hybrid" => SearchMode::Hybrid,
            "semantic" => SearchMode::Semantic,
            "keyword" => SearchMode::Keyword,
            other => panic!("{other:?} parsed as a search mode"),
        };
        assert_eq!(m, expected);
    }
    let _ = s.parse::<ByteSize>();
});
