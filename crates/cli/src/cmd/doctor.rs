//! `mnema doctor`: what is installed, what is missing, and how to fix it.

use super::{out, out_json, Ctx};
use crate::exit;
use anyhow::Result;
use mnema_core::ByteSize;
use mnema_models::catalog::{check, model_names};
use mnema_server::wire::{CheckOut, DoctorOut};
use mnema_store::Store as _;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `mnema --json doctor`: the checks, plus how the vector index compared with SQLite.
#[derive(Serialize)]
struct DoctorJson {
    #[serde(flatten)]
    base: DoctorOut,
    index: Option<IndexOut>,
}

/// The vector index against SQLite; `ok` is the state found, before any repair.
#[derive(Serialize)]
struct IndexOut {
    sqlite_vectors: u64,
    index_vectors: u64,
    missing: u64,
    extra: u64,
    ok: bool,
    repaired: bool,
}

fn check_item(name: &str, status: &'static str, detail: impl Into<String>, hint: Option<&str>) -> CheckOut {
    CheckOut { name: name.into(), status, detail: detail.into(), hint: hint.map(Into::into) }
}

pub fn run(ctx: &Ctx) -> Result<u8> {
    let c = &ctx.config;
    let rt = mnema_extract::Runtime::from_config(c);
    let mut checks = Vec::new();

    // Data directory and database.
    let probe = c.home.join(".mnema-write-test");
    let writable = std::fs::create_dir_all(&c.home).and_then(|_| std::fs::write(&probe, b"ok")).and_then(|_| std::fs::remove_file(&probe));
    checks.push(match writable {
        Ok(()) => check_item("data directory", "ok", format!("{} (writable)", c.home.display()), None),
        Err(e) => {
            check_item("data directory", "fail", format!("{}: {e}", c.home.display()), Some("choose another with --home or MNEMA_HOME"))
        }
    });
    let mut index = None;
    if checks[0].status == "ok" {
        // Before the store opens (opening tightens the directory and the database files).
        checks.push(permissions_check(&c.home));
        checks.push(
            match ctx.store().and_then(|s| {
                index = Some(check_and_repair_index(&s));
                Ok((s.stats()?, s.embedder()?))
            }) {
                Ok((st, emb)) => check_item(
                    "database",
                    "ok",
                    format!(
                        "{} items, {} chunks, {}{}",
                        st.items,
                        st.chunks,
                        ByteSize(st.db_bytes),
                        emb.map(|(n, d)| format!(", vectors: {n} ({d}-d)")).unwrap_or_default()
                    ),
                    None,
                ),
                Err(e) => check_item("database", "fail", format!("{e:#}"), Some("move the data directory aside and re-ingest")),
            },
        );
        match index.take() {
            Some(Ok(i)) => {
                let detail = format!(
                    "{} vectors in the database, {} in the index, {} missing, {} extra{}",
                    i.sqlite_vectors,
                    i.index_vectors,
                    i.missing,
                    i.extra,
                    if i.repaired { "; rebuilt from the database" } else { "" }
                );
                checks.push(check_item("vector index", if i.ok { "ok" } else { "warn" }, detail, None));
                index = Some(Ok(i));
            }
            Some(Err(e)) => {
                checks.push(check_item(
                    "vector index",
                    "fail",
                    format!("{e:#}"),
                    Some("run `mnema doctor` again; if it fails, delete vectors.usearch*"),
                ));
            }
            None => {}
        }
    }

    // Models: the configured embedder is required; the others serve images' and audio's engines.
    let statuses = check(&c.models_dir, None, true)?;
    for m in model_names() {
        let files: Vec<_> = statuses.iter().filter(|s| s.entry.model == m).collect();
        let missing: Vec<_> = files.iter().filter(|f| !f.present).map(|f| f.entry.file).collect();
        let corrupt: Vec<_> = files.iter().filter(|f| f.verified == Some(false)).map(|f| f.entry.file).collect();
        let required = m == c.embedder;
        let size: u64 = files.iter().map(|f| f.size).sum();
        let role = match m {
            "multilingual-e5-small" | "all-minilm-l6-v2" => "embeddings",
            "whisper-base" => "speech to text (voice memos)",
            "silero-vad" => "voice activity (silence skipped before speech to text)",
            "onnxruntime" => "runs Silero VAD and PaddleOCR",
            "paddle-ocr" => "second OCR engine (Chinese/English only)",
            _ => "",
        };
        let name = format!("model {m}");
        checks.push(if !corrupt.is_empty() {
            check_item(&name, "fail", format!("corrupt: {}", corrupt.join(", ")), Some("scripts/setup.sh"))
        } else if !missing.is_empty() {
            check_item(
                &name,
                if required { "fail" } else { "warn" },
                format!("missing: {} ({role})", missing.join(", ")),
                Some("scripts/setup.sh"),
            )
        } else {
            check_item(&name, "ok", format!("{role}, {}, sha256 verified", ByteSize(size)), None)
        });
    }

    // OCR engines, as the engine registry finds them (Tesseract needs Debian's packages).
    for e in mnema_extract::ocr::engines_in(&rt).into_iter().filter(|e| e.name == "tesseract") {
        checks.push(if e.available {
            check_item("tesseract rus+eng", "ok", format!("OCR languages: {}", e.languages), None)
        } else {
            check_item(
                "tesseract rus+eng",
                "warn",
                e.reason.unwrap_or_default(),
                Some("apt-get install tesseract-ocr tesseract-ocr-rus tesseract-ocr-eng libtesseract-dev"),
            )
        });
    }

    // Memory: low available RAM or busy swap is what made the first prototype crawl.
    let mut sys = sysinfo::System::new().map_err(|e| anyhow::anyhow!("cannot read memory figures: {e}"))?;
    sys.refresh_memory();
    let (total, avail) = (sys.total_memory(), sys.available_memory());
    let (swap_total, swap_used) = (sys.total_swap(), sys.used_swap());
    checks.push(if avail < 1 << 30 {
        check_item(
            "memory",
            "warn",
            format!("{} available of {}", ByteSize(avail), ByteSize(total)),
            Some("close other programs: models will push the machine into swap"),
        )
    } else {
        check_item("memory", "ok", format!("{} available of {}", ByteSize(avail), ByteSize(total)), None)
    });
    let swap_detail = format!("{} used of {}", ByteSize(swap_used), ByteSize(swap_total));
    checks.push(if swap_total > 0 && swap_used * 4 > swap_total {
        check_item("swap", "warn", swap_detail, Some("heavy swapping slows models 5-10×; free memory first"))
    } else {
        check_item("swap", "ok", swap_detail, None)
    });
    let need = mnema_extract::embed::estimate_cost(&rt, &c.embedder);
    let models_share = ctx.models.budget();
    checks.push(check_item(
        "memory budget",
        if models_share >= need { "ok" } else { "warn" },
        format!("{} ({} for models; {} needs about {})", ctx.budget, ByteSize(models_share), c.embedder, ByteSize(need)),
        (models_share < need).then_some("raise --memory-budget / MNEMA_MEMORY_BUDGET"),
    ));
    if let Some(psi) = memory_pressure() {
        checks.push(check_item(
            "memory pressure",
            if psi > 10.0 { "warn" } else { "ok" },
            format!("some avg10 {psi:.1}% (/proc/pressure/memory)"),
            None,
        ));
    }

    // CPU.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (feats, fast) = cpu_features();
    checks.push(check_item(
        "cpu",
        if fast { "ok" } else { "warn" },
        format!(
            "{cores} cores, {} {}; large products in {}, speech encoder in {}",
            std::env::consts::ARCH,
            feats,
            match rt.dense {
                mnema_extract::dense::Precision::Bf16 => "bfloat16",
                mnema_extract::dense::Precision::F32 => "f32",
            },
            match rt.speech {
                mnema_extract::whisper::SpeechDtype::Bf16 => "bfloat16",
                mnema_extract::whisper::SpeechDtype::Q8 => "8-bit blocks",
                mnema_extract::whisper::SpeechDtype::F32 => "f32",
            }
        ),
        (!fast).then_some("no AVX2/FMA (x86) or NEON (arm): models run several times slower"),
    ));

    let ok = checks.iter().all(|c| c.status != "fail");
    if ctx.json {
        out_json(&DoctorJson { base: DoctorOut { ok, checks }, index: index.and_then(Result::ok) })?;
    } else {
        for c in &checks {
            let mark = match c.status {
                "ok" => "ok  ",
                "warn" => "WARN",
                _ => "FAIL",
            };
            out(format!("{mark}  {:<28} {}", c.name, c.detail))?;
            if let Some(h) = &c.hint {
                if c.status != "ok" {
                    out(format!("      fix: {h}"))?;
                }
            }
        }
        out(if ok { "all required pieces are in place" } else { "something required is missing: see the fixes above" })?;
    }
    Ok(if ok { exit::OK } else { exit::PARTIAL })
}

/// Compares the vector index with SQLite and, when they differ, rebuilds it and checks again.
fn check_and_repair_index(s: &mnema_store::SqliteStore) -> Result<IndexOut> {
    let found = s.check_index()?;
    let mut out = IndexOut {
        sqlite_vectors: found.sqlite_vectors,
        index_vectors: found.index_vectors,
        missing: found.missing,
        extra: found.extra,
        ok: found.ok,
        repaired: false,
    };
    if !found.ok {
        s.repair_index()?;
        let after = s.check_index()?;
        anyhow::ensure!(after.ok, "the rebuilt vector index still differs from the database: {after:?}");
        out.repaired = true;
    }
    Ok(out)
}

/// Warns about data files others can read: the directory should be 0700, files 0600.
fn permissions_check(home: &Path) -> CheckOut {
    let mut loose = Vec::new();
    collect_loose(home, home, 0, &mut loose);
    if loose.is_empty() {
        return check_item("data file permissions", "ok", "private to this user", None);
    }
    let n = loose.len();
    let mut names: Vec<String> = loose.iter().take(5).map(|(p, m)| format!("{} ({m:o})", p.display())).collect();
    if n > 5 {
        names.push(format!("and {} more", n - 5));
    }
    check_item(
        "data file permissions",
        "warn",
        format!("{n} readable by other users: {}", names.join(", ")),
        Some(format!("chmod -R go-rwx {}", home.display()).as_str()),
    )
}

/// Entries under `dir` (not following links, models excluded) with group or world access.
fn collect_loose(home: &Path, dir: &Path, depth: usize, out: &mut Vec<(PathBuf, u32)>) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
        if meta.permissions().mode() & 0o077 != 0 {
            out.push((dir.to_path_buf(), meta.permissions().mode() & 0o777));
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.file_type().is_symlink() || (dir == home && e.file_name() == "models") {
                continue;
            }
            if m.is_dir() {
                if depth < 4 {
                    collect_loose(home, &p, depth + 1, out);
                }
            } else if m.permissions().mode() & 0o077 != 0 {
                out.push((p, m.permissions().mode() & 0o777));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (home, dir, depth, out);
}

/// `some avg10` of Linux PSI for memory, when the kernel provides it.
fn memory_pressure() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/pressure/memory").ok()?;
    let line = s.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix("avg10=")).and_then(|v| v.parse().ok())
}

fn cpu_features() -> (String, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let f = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bf16", mnema_extract::dense::bf16_supported()),
        ];
        let names: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        (names.join(" "), f[0].1 && f[1].1)
    }
    #[cfg(target_arch = "aarch64")]
    {
        ("neon".into(), true)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        (String::new(), false)
    }
}
