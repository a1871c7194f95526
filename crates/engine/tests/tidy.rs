//! The crate graph and the store boundary, checked from the repository's own files (no
//! network, no cargo call): the light crates never pull in an engine, and SQL stays inside
//! `mnema-store`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each package's dependencies (names) as `Cargo.lock` records them. The lock file is resolved
/// with every feature on, so a closure over it can only over-approximate what a build links.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_string();
        let mut deps = Vec::new();
        if let Some(list) = block.split("dependencies = [").nth(1) {
            let list = list.split(']').next().unwrap();
            for d in list.split(',') {
                let d = d.trim().trim_matches('"');
                if let Some(n) = d.split_whitespace().next() {
                    deps.push(n.to_string());
                }
            }
        }
        graph.entry(name).or_default().extend(deps);
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(graph.get(&p).into_iter().flatten().cloned());
        }
    }
    seen
}

/// The engines' heavy dependencies.
const HEAVY: [&str; 7] = ["candle-core", "candle-nn", "tokenizers", "ort", "symphonia", "tesseract", "gemm"];

#[test]
fn light_crates_depend_on_no_engine() {
    let graph = lock_graph();
    assert!(graph.contains_key("mnema-search") && graph.contains_key("candle-core"), "Cargo.lock not read");
    // The check can fail: the binary does pull them in.
    assert!(closure(&graph, "mnema-cli").contains("candle-core"));
    for light in ["mnema-core", "mnema-engine", "mnema-store", "mnema-search"] {
        let deps = closure(&graph, light);
        let heavy: Vec<&str> = HEAVY.iter().copied().filter(|h| deps.contains(*h)).collect();
        assert!(heavy.is_empty(), "{light} depends on {heavy:?}");
        assert!(!deps.contains("mnema-extract"), "{light} depends on mnema-extract");
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `file:line: text` of every line of `files` (the part of each text `part` keeps) that
/// `hit` matches.
fn matching_lines(files: &[PathBuf], part: impl Fn(&str) -> &str, hit: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, l) in part(&text).lines().enumerate().filter(|(_, l)| hit(l)) {
            found.push(format!("{}:{}: {}", f.display(), i + 1, l.trim()));
        }
    }
    found
}

/// Words that only SQL (or the SQLite crate) would put in a Rust file.
fn mentions_sql(line: &str) -> bool {
    const WORDS: [&str; 8] =
        ["rusqlite", "SELECT ", "INSERT INTO", "DELETE FROM", "CREATE TABLE", "CREATE INDEX", "PRAGMA ", "BEGIN IMMEDIATE"];
    WORDS.iter().any(|w| line.contains(w))
}

#[test]
fn no_sql_outside_the_store() {
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = e.unwrap().path();
        if dir.file_name().is_some_and(|n| n != "store") {
            rust_files(&dir, &mut files);
        }
    }
    assert!(files.len() > 20, "only {} files found", files.len());
    let this = repo().join("crates/engine/tests/tidy.rs").canonicalize().unwrap();
    files.retain(|f| f.canonicalize().ok().as_deref() != Some(this.as_path()));
    let found = matching_lines(&files, |text| text, mentions_sql);
    assert!(found.is_empty(), "SQL outside mnema-store:\n{}", found.join("\n"));
    // Only the store links SQLite.
    let graph = lock_graph();
    let users: Vec<&String> = graph.iter().filter(|(_, deps)| deps.iter().any(|d| d == "rusqlite")).map(|(p, _)| p).collect();
    assert_eq!(users, ["mnema-store"], "crates that depend on rusqlite");
    // The check can fail: the store's own files are full of it.
    let store = std::fs::read_to_string(repo().join("crates/store/src/lib.rs")).unwrap();
    assert!(store.lines().any(mentions_sql));
}

/// Settings are read once, by the binary (`Config::resolve` in `mnema-core`, the CLI's
/// flags): no library below it consults the environment, so what a loader does depends only
/// on what it was given.
#[test]
fn no_environment_reads_below_the_binary() {
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo().join("crates")).unwrap() {
        let src = e.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let allowed = |f: &Path| {
        let f = f.to_string_lossy();
        f.ends_with("crates/core/src/config.rs") || f.contains("crates/cli/src") || f.contains("crates/bench/src")
    };
    // `env::var`, `var_os`, `vars`, `vars_os`, and the functions imported by name.
    let reads = |l: &str| l.contains("env::var") || l.contains("use std::env::{");
    files.retain(|f| !allowed(f));
    // Unit tests (the `#[cfg(test)] mod` at the end of a file) may set up their own
    // environment; other test-only items do not end the scan.
    let found = matching_lines(&files, |text| text.split("#[cfg(test)]\nmod ").next().unwrap_or_default(), reads);
    assert!(found.is_empty(), "environment read below the binary:\n{}", found.join("\n"));
    // The check can fail: the configuration does read it.
    let config = std::fs::read_to_string(repo().join("crates/core/src/config.rs")).unwrap();
    assert!(config.lines().any(reads));
}
