//! Ingest never mixes up, skips silently or runs away: the `mnema` binary on real files, real
//! models and a real SQLite file (issue 12, items 3, 5, 11, 13, 14).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary under test; `MNEMA_BIN` runs these tests against another build (an older one,
/// to see them fail there).
fn bin() -> PathBuf {
    std::env::var_os("MNEMA_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mnema")))
}

fn models() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| repo().join("models"))
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--home").arg(self.path("home")).arg("--models").arg(models()).env_remove("MNEMA_HOME").env_remove("MNEMA_EMBEDDER");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    /// Runs with a deadline: a run that does not end is killed and the test fails.
    fn run_within(&self, args: &[&std::ffi::OsStr], limit: Duration) -> Output {
        let mut child = self.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > limit {
                child.kill().unwrap();
                let o = child.wait_with_output().unwrap();
                panic!("still running after {limit:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    }
    fn show(&self, id: i64) -> Value {
        let o = self.run(&["--json", "show", &id.to_string()]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// The stored text of item `id` (its chunks joined).
    fn text(&self, id: i64) -> String {
        self.show(id)["chunks"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn by_name<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines.iter().find(|l| l["path"].as_str().unwrap().ends_with(name)).unwrap_or_else(|| panic!("no line for {name}: {lines:?}"))
}

fn convert(args: &[&str], out: &Path) {
    assert!(Command::new("convert").args(args).arg(out).status().unwrap().success(), "convert {args:?}");
}

/// A 1280×720 page: left-aligned lines of 28-point DejaVu Sans on white.
fn page(out: &Path, lines: &[&str]) {
    let mut a: Vec<String> =
        ["-size", "1280x720", "xc:white", "-font", "DejaVu-Sans", "-pointsize", "28", "-fill", "black"].map(String::from).into();
    for (i, l) in lines.iter().enumerate() {
        a.extend(["-annotate".to_string(), format!("+48+{}", 80 + 56 * i), l.to_string()]);
    }
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    convert(&a, out);
}

const SETTINGS: &[&str] = &[
    "Project settings",
    "Rate limit: 600 requests per minute",
    "Region: eu-west-1",
    "Webhooks: enabled",
    "Billing contact: ops@example.com",
    "Retention: 30 days",
];
const RECEIPT: &[&str] =
    &["Кафе «Ромашка»", "Капучино большой 250 руб", "Сырники со сметаной 320 руб", "Итого: 570 руб", "Спасибо за визит!", "Чек № 4821"];

#[test]
fn look_alike_screenshots_keep_their_own_text_and_true_copies_are_linked() {
    let env = Env::new();
    let first = env.path("first");
    let later = env.path("later");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&later).unwrap();
    page(&first.join("settings.png"), SETTINGS);
    page(&later.join("receipt.png"), RECEIPT);
    // The same page re-saved (other bytes, same pixels), re-compressed as JPEG q90, with a
    // mouse pointer drawn in the margin, and with one digit changed.
    convert(&[first.join("settings.png").to_str().unwrap(), "-define", "png:compression-level=1"], &later.join("settings-resaved.png"));
    convert(&[first.join("settings.png").to_str().unwrap(), "-quality", "90"], &later.join("settings-q90.jpg"));
    convert(
        &[
            first.join("settings.png").to_str().unwrap(),
            "-fill",
            "black",
            "-stroke",
            "white",
            "-draw",
            "polygon 900,300 900,322 906,317 911,327 914,325 909,316 916,316",
        ],
        &later.join("settings-cursor.png"),
    );
    let mut changed = SETTINGS.to_vec();
    changed[1] = "Rate limit: 601 requests per minute";
    page(&later.join("settings-601.png"), &changed);

    let o = env.run(&["--json", "ingest", first.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let original = json_lines(&o)[0]["id"].as_i64().unwrap();
    assert!(env.text(original).contains("600 requests"), "{}", env.text(original));
    let o = env.run(&["--json", "ingest", later.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let id = |name: &str| by_name(&lines, name)["id"].as_i64().unwrap();
    let meta = |id: i64| env.show(id)["item"]["meta"].clone();
    let hash = |id: i64| u64::from_str_radix(meta(id)["dhash"].as_str().unwrap(), 16).unwrap();

    // The receipt looks like the settings page to the difference hash (the premise of the
    // defect), yet keeps its own text.
    let receipt = id("receipt.png");
    assert!((hash(receipt) ^ hash(original)).count_ones() <= 4, "the pages no longer look alike to the hash");
    let text = env.text(receipt);
    assert!(text.contains("Капучино") && text.contains("Итого") && !text.contains("Rate limit"), "{text}");
    assert!(meta(receipt)["near_duplicate_of"].is_null());
    // One digit changed: its own OCR.
    let digit = id("settings-601.png");
    assert!(meta(digit)["near_duplicate_of"].is_null(), "{}", meta(digit));
    assert!(env.text(digit).contains("601 requests"), "{}", env.text(digit));
    // The same pixels, however saved, and a pointer over the margin: linked to the original.
    for name in ["settings-resaved.png", "settings-q90.jpg", "settings-cursor.png"] {
        assert_eq!(meta(id(name))["near_duplicate_of"].as_i64(), Some(original), "{name}: {}", meta(id(name)));
        assert!(env.text(id(name)).contains("600 requests"), "{name}");
    }
}

#[test]
fn content_decides_the_kind_and_odd_names_are_never_merged_or_skipped() {
    let env = Env::new();
    let dir = env.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    // A screenshot saved with a recording's extension is read as the image it is.
    page(&env.path("shot.png"), &["Meeting notes: budget review on Friday"]);
    std::fs::rename(env.path("shot.png"), dir.join("shot.m4a")).unwrap();
    // Extension-less files in a folder: text is a note, a binary is passed over quietly.
    std::fs::write(dir.join("README"), "Инструкция: полить помидоры в четверг.\n").unwrap();
    std::fs::write(dir.join("program"), [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0]).unwrap();
    let o = env.run(&["--json", "ingest", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let shot = by_name(&lines, "shot.m4a");
    assert_eq!((shot["kind"].as_str(), shot["status"].as_str()), (Some("image"), Some("indexed")), "{shot}");
    let readme = by_name(&lines, "README");
    assert_eq!((readme["kind"].as_str(), readme["status"].as_str()), (Some("note"), Some("indexed")), "{readme}");
    let v: Value = serde_json::from_slice(&env.run(&["--json", "search", "budget review", "--mode", "keyword"]).stdout).unwrap();
    assert!(v["hits"][0]["path"].as_str().unwrap().ends_with("shot.m4a"), "{v}");

    // Two names that differ only in a byte that is not UTF-8: never one item.
    use std::os::unix::ffi::OsStrExt;
    let odd = env.path("odd");
    std::fs::create_dir_all(&odd).unwrap();
    for (b, text) in [(0xE9u8, "Первая заметка про яблоки."), (0xE8, "Вторая заметка про груши.")]
    {
        let name = [b'n', b, b'.', b'm', b'd'];
        std::fs::write(odd.join(std::ffi::OsStr::from_bytes(&name)), text).unwrap();
    }
    let o = env.run(&["--json", "ingest", odd.to_str().unwrap()]);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ids: Vec<Option<i64>> = lines.iter().map(|l| l["id"].as_i64()).collect();
    let stored: Vec<i64> = ids.iter().flatten().copied().collect();
    if stored.len() < 2 {
        // Refused: each with one clear line, exit 1.
        assert_eq!(o.status.code(), Some(1));
        for l in &lines {
            assert!(l["status"] == "failed" && l["error"].as_str().unwrap().contains("not valid UTF-8"), "{l}");
        }
        let errors: Vec<&str> = lines.iter().map(|l| l["error"].as_str().unwrap()).collect();
        assert_ne!(errors[0], errors[1], "the two lines tell the files apart");
    } else {
        assert_ne!(stored[0], stored[1]);
    }
    let merged = env.run(&["--json", "search", "заметка", "--mode", "keyword"]);
    let v: Value = serde_json::from_slice(&merged.stdout).unwrap();
    assert!(v["hits"].as_array().unwrap().len() != 1, "two files must not become one item: {v}");

    // A path past the OS limit: one line naming it, exit 1.
    let deep = env.path("deep");
    // Created step by step from inside (the whole path is too long for one call).
    std::fs::create_dir_all(&deep).unwrap();
    let seg = "d".repeat(200);
    let script = format!(
        "import os\nos.chdir({:?})\nfor _ in range(25):\n    os.mkdir({seg:?})\n    os.chdir({seg:?})\nopen('n.md', 'w').write('deep note')\n",
        deep.to_str().unwrap()
    );
    assert!(Command::new("python3").arg("-c").arg(script).status().unwrap().success());
    let o = env.run(&["--json", "ingest", deep.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "failed");
    assert!(lines[0]["error"].as_str().unwrap().contains("too long"), "{}", lines[0]);
    let o = env.run(&["ingest", deep.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("mnema: ")).count(), 1, "{err}");
    assert!(err.contains(deep.to_str().unwrap()), "{err}");
}

#[test]
fn symlink_loops_end_and_each_file_is_indexed_once() {
    let env = Env::new();
    let dir = env.path("notes");
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("a.md"), "Заметка про велосипед.\n").unwrap();
    std::fs::write(dir.join("sub/b.md"), "Note about the bicycle chain.\n").unwrap();
    std::fs::write(dir.join("sub/deeper/c.md"), "Третья заметка про седло.\n").unwrap();
    // Two loops (a link to the folder itself, one to the grandparent) and a second name for a file.
    std::os::unix::fs::symlink(".", dir.join("sub/self")).unwrap();
    std::os::unix::fs::symlink("../..", dir.join("sub/deeper/up")).unwrap();
    std::os::unix::fs::symlink("a.md", dir.join("again.md")).unwrap();
    let o = env.run_within(&["--json".as_ref(), "ingest".as_ref(), dir.as_os_str()], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let mut names: Vec<&str> =
        lines.iter().map(|l| Path::new(l["path"].as_str().unwrap()).file_name().unwrap().to_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a.md", "b.md", "c.md"], "{lines:?}");
}

/// A WAV file of `data` bytes of 16-bit mono PCM whose header claims `rate` Hz.
fn wav(rate: u32, data: usize) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(b"RIFF");
    v.extend((36 + data as u32).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend((rate * 2).to_le_bytes());
    v.extend(2u16.to_le_bytes());
    v.extend(16u16.to_le_bytes());
    v.extend(b"data");
    v.extend((data as u32).to_le_bytes());
    v.extend((0..data).map(|i| ((i * 37) % 251) as u8));
    v
}

#[test]
fn absurd_audio_headers_are_refused_with_one_line() {
    let env = Env::new();
    let dir = env.path("audio");
    std::fs::create_dir_all(&dir).unwrap();
    // 32 KB of samples at "1 Hz": a 4.4-hour recording by its header.
    std::fs::write(dir.join("one-hertz.wav"), wav(1, 32_000)).unwrap();
    let o = env.run_within(&["--json".as_ref(), "ingest".as_ref(), dir.join("one-hertz.wav").as_os_str()], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let l = &json_lines(&o)[0];
    assert_eq!(l["status"], "failed");
    let e = l["error"].as_str().unwrap();
    assert!(e.contains("sample rate 1 Hz") && !e.contains('\n'), "{e}");
    // `transcribe` reads through the same check.
    let o = env.run_within(&["transcribe".as_ref(), dir.join("one-hertz.wav").as_os_str()], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sample rate 1 Hz") && err.lines().count() == 1, "{err}");
}

/// Peak resident memory of a finished child run under `/usr/bin/time`, bytes.
fn peak_rss(stderr: &str) -> u64 {
    stderr.lines().find_map(|l| l.strip_prefix("maxrss_kb=")).unwrap().trim().parse::<u64>().unwrap() * 1024
}

#[test]
fn many_large_images_stay_within_the_memory_budget() {
    let env = Env::new();
    let dir = env.path("big");
    std::fs::create_dir_all(&dir).unwrap();
    // 32 pages of 16 megapixels each (small PNGs: mostly white): 512 MB as grey, 2 GB as RGBA.
    convert(
        &[
            "-size",
            "4000x4000",
            "xc:white",
            "-font",
            "DejaVu-Sans",
            "-pointsize",
            "60",
            "-fill",
            "black",
            "-annotate",
            "+100+200",
            "Large page",
        ],
        &dir.join("p00.png"),
    );
    for i in 1..32 {
        convert(
            &[
                dir.join("p00.png").to_str().unwrap(),
                "-fill",
                "black",
                "-pointsize",
                "60",
                "-annotate",
                &format!("+100+{}", 400 + 90 * i),
                &format!("page number {i}"),
            ],
            &dir.join(format!("p{i:02}.png")),
        );
    }
    let budget: u64 = 768 << 20;
    let o = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(bin())
        .args(["--home", env.path("home").to_str().unwrap(), "--models", models().to_str().unwrap(), "--memory-budget", "768MiB"])
        .args(["--json", "ingest"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines = json_lines(&o);
    assert_eq!(lines.iter().filter(|l| l["status"] == "indexed").count(), 32, "{lines:?}");
    let peak = peak_rss(&err);
    eprintln!("peak RSS {} MiB under a {} MiB budget", peak >> 20, budget >> 20);
    assert!(peak <= budget + (budget >> 3), "peak RSS {} MiB over the {} MiB budget (+12.5%)", peak >> 20, budget >> 20);
    // `mnema ocr` on the same pages.
    let o = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(bin())
        .args(["--home", env.path("home").to_str().unwrap(), "--models", models().to_str().unwrap(), "--memory-budget", "768MiB"])
        .args(["--json", "ocr"])
        .args((0..32).map(|i| dir.join(format!("p{i:02}.png"))))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(json_lines(&o).len(), 32);
    let peak = peak_rss(&err);
    eprintln!("ocr: peak RSS {} MiB under a {} MiB budget", peak >> 20, budget >> 20);
    assert!(peak <= budget + (budget >> 3), "ocr: peak RSS {} MiB over the {} MiB budget (+12.5%)", peak >> 20, budget >> 20);
}
