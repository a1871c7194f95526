//! Shared helpers for mnema's benchmarks: deterministic synthetic data, timing statistics,
//! process memory, and running the Python peers.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A small deterministic PRNG (xorshift64*), so every run measures the same data.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() * 1.732 - 3.464
    }
}

/// Milliseconds of each call of `f`, `n` times.
pub fn time_ms(n: usize, mut f: impl FnMut(usize)) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// The p-th percentile (0..=100) of samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// Peak and current resident memory of this process, bytes (Linux /proc).
pub fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The models directory.
pub fn models() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| repo().join("models"))
}

/// The Python interpreter that has the peers installed (bench/setup-peers.sh), if any.
pub fn peer_python() -> Option<PathBuf> {
    let p = std::env::var_os("MNEMA_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mnema-pyref/bin/python"));
    p.is_file().then_some(p)
}

/// Runs a peer script and parses the JSON object it prints last.
pub fn run_peer(script: &str, args: &[&Path]) -> Result<serde_json::Value, String> {
    let py = peer_python().ok_or("peer Python not installed: run bench/setup-peers.sh")?;
    let out = Command::new(py)
        .arg(repo().join("bench/peers").join(script))
        .args(args)
        // OpenBLAS kernel overrides of this machine slow numpy/torch; unset for the peer only.
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.starts_with('{')).ok_or("peer printed no JSON")?;
    serde_json::from_str(last).map_err(|e| e.to_string())
}

/// Mixed Russian/English words for synthetic text.
pub const WORDS: &[&str] = &[
    "заметка",
    "подписка",
    "векторный",
    "поиск",
    "память",
    "модель",
    "скриншот",
    "голос",
    "запись",
    "идея",
    "встреча",
    "проект",
    "рецепт",
    "борщ",
    "сад",
    "поливать",
    "вечер",
    "отчёт",
    "выручка",
    "бюджет",
    "ноутбук",
    "индекс",
    "файл",
    "note",
    "subscription",
    "vector",
    "search",
    "memory",
    "model",
    "screenshot",
    "voice",
    "memo",
    "idea",
    "meeting",
    "project",
    "recipe",
    "garden",
    "water",
    "evening",
    "report",
    "revenue",
    "budget",
    "laptop",
    "index",
    "file",
    "the",
    "and",
    "with",
    "for",
    "about",
    "в",
    "и",
    "на",
    "для",
    "по",
    "что",
    "как",
    "quarterly",
    "ranking",
    "fusion",
    "token",
    "neighbour",
    "graph",
    "storage",
    "engine",
    "batch",
    "stream",
    "chunk",
    "embedding",
    "language",
    "russian",
    "english",
];

/// A sentence of `n` words drawn with a skew towards the start of [`WORDS`] (Zipf-like).
pub fn sentence(rng: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let r = rng.unit();
        let w = WORDS[((r * r) * WORDS.len() as f32) as usize % WORDS.len()];
        if i > 0 {
            s.push(' ');
        }
        s.push_str(w);
    }
    s.push('.');
    s
}

/// A synthetic vocabulary of `n` pseudo-words (Cyrillic and Latin syllables) with Zipfian
/// frequencies, like natural text: a few very common words, a long tail of rare ones.
pub struct Vocab {
    words: Vec<String>,
    cdf: Vec<f64>,
}

impl Vocab {
    /// `n` words, drawn deterministically.
    pub fn new(n: usize, rng: &mut Rng) -> Vocab {
        const RU: &[&str] = &["ка", "ло", "ми", "ре", "ст", "но", "ва", "ди", "пра", "ско", "тель", "ние", "ост", "ин", "гор", "бра"];
        const EN: &[&str] = &["ta", "lo", "mi", "re", "st", "on", "va", "di", "pro", "sco", "tion", "ing", "er", "in", "gor", "bra"];
        let words = (0..n)
            .map(|i| {
                let set = if i % 2 == 0 { RU } else { EN };
                let len = 2 + rng.below(3);
                let mut w: String = (0..len).map(|_| set[rng.below(set.len())]).collect();
                w.push_str(&i.to_string().chars().map(|c| set[c as usize % set.len()]).collect::<String>());
                w
            })
            .collect();
        let mut acc = 0.0;
        let cdf = (1..=n)
            .map(|r| {
                acc += 1.0 / r as f64;
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Vocab { words, cdf: cdf.into_iter().map(|c| c / total).collect() }
    }

    /// One word, Zipf-distributed.
    pub fn word(&self, rng: &mut Rng) -> &str {
        let u = rng.unit() as f64;
        let i = self.cdf.partition_point(|&c| c < u).min(self.words.len() - 1);
        &self.words[i]
    }

    /// A word a person would search for: ranks 100..5000, past the function-word band that
    /// query analysis drops anyway, short of the hapaxes.
    pub fn query_word(&self, rng: &mut Rng) -> &str {
        let hi = self.words.len().min(5000);
        &self.words[100.min(hi - 1) + rng.below(hi - 100.min(hi - 1))]
    }

    /// `n` words separated by spaces.
    pub fn text(&self, rng: &mut Rng, n: usize) -> String {
        (0..n).map(|_| self.word(rng)).collect::<Vec<_>>().join(" ")
    }
}
