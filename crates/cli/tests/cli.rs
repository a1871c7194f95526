//! End-to-end tests of the `mnema` binary on real models and a real SQLite file in a
//! temporary data directory: the JSON contract, exit codes, bad input, crash safety.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn cmd(&self) -> Command {
        self.cmd_models(&models())
    }
    fn cmd_models(&self, models: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mnema"));
        c.arg("--home").arg(self.home()).arg("--models").arg(models).env_remove("MNEMA_HOME").env_remove("MNEMA_EMBEDDER");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join("files").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn search(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json", "search"];
        a.extend_from_slice(args);
        let o = self.run(&a);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
    fn top_path(&self, args: &[&str]) -> String {
        let v = self.search(args);
        v["hits"][0]["path"].as_str().map(|p| Path::new(p).file_name().unwrap().to_string_lossy().into_owned()).unwrap_or_default()
    }
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn by_name<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines.iter().find(|l| l["path"].as_str().unwrap().ends_with(name)).unwrap_or_else(|| panic!("no line for {name}: {lines:?}"))
}

#[test]
fn finds_russian_recipe_in_both_languages() {
    let env = Env::new();
    let o = env.run(&["--json", "ingest", repo().join("samples/notes").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 8);
    assert!(lines.iter().all(|l| l["status"] == "indexed" && l["kind"] == "note" && l["id"].is_i64()));
    assert_eq!(env.top_path(&["как приготовить борщ"]), "borsch.md");
    assert_eq!(env.top_path(&["beet soup recipe"]), "borsch.md");
    assert_eq!(env.top_path(&["beet soup recipe", "--mode", "semantic"]), "borsch.md");
    assert_eq!(env.top_path(&["идеи по векторизации"]), "vectorization-ideas.md");
    assert_eq!(env.top_path(&["how to cancel a subscription"]), "subscriptions.md");
    assert_eq!(env.top_path(&["watering tomatoes", "--mode", "semantic"]), "garden.txt");
    // Keyword mode: morphology ("подписки" ↔ "подписку"), snippet marks the match.
    let v = env.search(&["подписки", "--mode", "keyword"]);
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{v}");
    assert!(hits[0]["snippet"].as_str().unwrap().contains("[подписку]"), "{v}");
    assert!(Path::new(hits[0]["path"].as_str().unwrap()).is_absolute());
    assert!(hits[0]["start_ms"].is_null());
    // English keyword on English text; no result for words nowhere in the corpus.
    assert_eq!(env.top_path(&["tomatoes", "--mode", "keyword"]), "garden.txt");
    assert_eq!(env.search(&["квантовая хромодинамика", "--mode", "keyword"])["hits"].as_array().unwrap().len(), 0);
    // Limit and one hit per item.
    let v = env.search(&["notes", "--limit", "3"]);
    let ids: Vec<i64> = v["hits"].as_array().unwrap().iter().map(|h| h["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| ids.iter().filter(|j| *j == i).count() == 1));
}

#[test]
fn filters_by_kind_path_and_time() {
    let env = Env::new();
    env.write("a/one.md", "Купить молоко и хлеб.".as_bytes());
    env.write("b/two.md", "Купить билеты в театр.".as_bytes());
    let files = env.dir.path().join("files");
    assert_eq!(env.run(&["ingest", files.to_str().unwrap()]).status.code(), Some(0));
    let prefix = files.join("b").canonicalize().unwrap();
    let v = env.search(&["купить", "--path", prefix.to_str().unwrap()]);
    assert_eq!(v["hits"].as_array().unwrap().len(), 1);
    assert!(v["hits"][0]["path"].as_str().unwrap().ends_with("two.md"));
    assert_eq!(env.search(&["купить", "--kind", "image"])["hits"].as_array().unwrap().len(), 0);
    assert_eq!(env.search(&["купить", "--kind", "note"])["hits"].as_array().unwrap().len(), 2);
    assert_eq!(env.search(&["купить", "--since", "2999-01-01"])["hits"].as_array().unwrap().len(), 0);
    assert_eq!(env.search(&["купить", "--until", "2999-01-01"])["hits"].as_array().unwrap().len(), 2);
    let bad = env.run(&["search", "x", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn bad_files_fail_alone_with_a_reason() {
    let env = Env::new();
    let good = env.write("good.md", "Заметка о хорошей погоде.".as_bytes());
    let bin = env.write("binary.txt", &(0u8..=255).cycle().take(512).collect::<Vec<_>>());
    let latin1 = env.write("latin1.txt", b"caf\xe9 cr\xe8me");
    let empty = env.write("empty.md", b"");
    let blank = env.write("blank.md", b"  \n\n\t ");
    let huge = env.write("huge.md", "слово ".repeat(400).as_bytes());
    let pdf = env.write("paper.pdf", b"%PDF-1.7");
    let missing = env.dir.path().join("files/nope.md");
    let args: Vec<&str> = [&good, &bin, &latin1, &empty, &blank, &huge, &pdf, &missing].iter().map(|p| p.to_str().unwrap()).collect();
    let mut cmd = env.cmd();
    cmd.env("MNEMA_MAX_FILE_SIZE", "1KiB").arg("--json").arg("ingest").args(&args);
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "some failed → exit 1");
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(by_name(&lines, "good.md")["status"], "indexed");
    for (name, reason) in [
        ("binary.txt", "binary"),
        ("latin1.txt", "UTF-8"),
        ("empty.md", "empty"),
        ("blank.md", "empty"),
        ("huge.md", "too large"),
        ("paper.pdf", "unsupported"),
        ("nope.md", "no such file"),
    ] {
        let l = by_name(&lines, name);
        assert_eq!(l["status"], "failed", "{name}");
        let e = l["error"].as_str().unwrap();
        assert!(e.contains(reason) && !e.contains('\n'), "{name}: {e}");
    }
    // Human mode: one line per failure on stderr, naming the file.
    let o = env.cmd().env("MNEMA_MAX_FILE_SIZE", "1KiB").arg("ingest").args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("mnema: ")).count(), 7, "{err}");
    assert!(err.lines().any(|l| l.contains("latin1.txt") && l.contains("UTF-8")), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("unchanged 1, failed 7"));
    // The store holds exactly the good file.
    let v = env.search(&["погода"]);
    assert_eq!(v["hits"].as_array().unwrap().len(), 1);
}

#[test]
fn reingest_is_a_noop_and_changes_replace_old_text() {
    let env = Env::new();
    let p = env.write("note.md", "Встреча с Анной во вторник.".as_bytes());
    let first = json_lines(&env.run(&["--json", "ingest", p.to_str().unwrap()]));
    let id = first[0]["id"].as_i64().unwrap();
    let again = env.run(&["--json", "ingest", p.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(json_lines(&again)[0]["status"], "unchanged");
    assert_eq!(json_lines(&again)[0]["id"].as_i64(), Some(id));
    std::fs::write(&p, "Встреча с Игорем в пятницу.".as_bytes()).unwrap();
    let changed = json_lines(&env.run(&["--json", "ingest", p.to_str().unwrap()]));
    assert_eq!(changed[0]["status"], "indexed");
    assert_eq!(changed[0]["id"].as_i64(), Some(id), "same item, replaced");
    assert_eq!(env.search(&["Анной", "--mode", "keyword"])["hits"].as_array().unwrap().len(), 0);
    assert_eq!(env.search(&["Игорем", "--mode", "keyword"])["hits"].as_array().unwrap().len(), 1);
    // Same content under another name: indexed from the stored chunks (no model needed).
    let copy = env.write("copy.md", "Встреча с Игорем в пятницу.".as_bytes());
    let o = env.cmd_models(Path::new("/nonexistent")).args(["--json", "ingest", copy.to_str().unwrap()]).output().unwrap();
    assert_eq!(json_lines(&o)[0]["status"], "indexed", "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.search(&["Игорем", "--mode", "keyword"])["hits"].as_array().unwrap().len(), 2);
}

#[test]
fn show_and_delete() {
    let env = Env::new();
    let p = env.write("n.md", "# Список\nКупить лампочки.".as_bytes());
    let id = json_lines(&env.run(&["--json", "ingest", p.to_str().unwrap()]))[0]["id"].as_i64().unwrap();
    let o = env.run(&["--json", "show", &id.to_string()]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["item"]["meta"]["title"], "Список");
    assert_eq!(v["chunks"][0]["text"], "# Список\nКупить лампочки.");
    let o = env.run(&["--json", "delete", &id.to_string()]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(env.search(&["лампочки"])["hits"].as_array().unwrap().len(), 0);
    assert_eq!(env.run(&["show", &id.to_string()]).status.code(), Some(3));
    assert_eq!(env.run(&["delete", &id.to_string()]).status.code(), Some(3));
    // Deleted means re-ingest indexes it again.
    assert_eq!(json_lines(&env.run(&["--json", "ingest", p.to_str().unwrap()]))[0]["status"], "indexed");
}

#[test]
fn missing_or_corrupt_model_is_a_clear_error() {
    let env = Env::new();
    let p = env.write("n.md", b"some text");
    let o = env.cmd_models(&env.dir.path().join("no-models")).args(["ingest", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("multilingual-e5-small") && err.contains("scripts/setup.sh"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A truncated weights file.
    let bad = env.dir.path().join("bad-models/multilingual-e5-small");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(models().join("multilingual-e5-small/tokenizer.json"), bad.join("tokenizer.json")).unwrap();
    let full = std::fs::read(models().join("multilingual-e5-small/e5-small-q4.bin")).unwrap();
    std::fs::write(bad.join("e5-small-q4.bin"), &full[..full.len() / 3]).unwrap();
    let o = env.cmd_models(&env.dir.path().join("bad-models")).args(["ingest", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("e5-small-q4.bin") && err.contains("scripts/setup.sh"), "{err}");
    // doctor sees it, and verify flags the checksum.
    let o = env.cmd_models(&env.dir.path().join("bad-models")).args(["--json", "doctor"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let e5 = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "model multilingual-e5-small").unwrap();
    assert_eq!(e5["status"], "fail");
    assert!(e5["detail"].as_str().unwrap().contains("corrupt"));
}

#[test]
fn doctor_and_models_on_a_good_install() {
    let env = Env::new();
    let o = env.run(&["--json", "doctor"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(o.status.code(), Some(0));
    let names: Vec<&str> = v["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in ["data directory", "database", "model multilingual-e5-small", "memory", "swap", "cpu"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let o = env.run(&["--json", "models", "verify", "multilingual-e5-small"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["models"][0]["verified"], true);
    assert_eq!(env.run(&["models", "verify", "no-such-model"]).status.code(), Some(2));
}

#[test]
fn killed_ingest_loses_nothing_on_rerun() {
    let env = Env::new();
    let dir = env.dir.path().join("files/many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..120 {
        let text = format!("Заметка номер {i}. Note number {i} about topic {}.\n", i % 7).repeat(3);
        std::fs::write(dir.join(format!("n{i:03}.md")), text).unwrap();
    }
    let mut child = env.cmd().args(["--json", "ingest", dir.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    // Wait for the first committed file, then kill -9.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"indexed\""));
    child.kill().unwrap();
    child.wait().unwrap();
    let o = env.run(&["--json", "ingest", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let l = json_lines(&o);
    assert_eq!(l.len(), 120);
    let unchanged = l.iter().filter(|x| x["status"] == "unchanged").count();
    assert!((1..120).contains(&unchanged), "kill came mid-run: {unchanged} unchanged");
    // Every file exactly once, and the vector index agrees with the database.
    let ids: std::collections::HashSet<i64> = l.iter().map(|x| x["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 120);
    let v = env.search(&["Note number 117", "--limit", "200", "--mode", "semantic"]);
    assert_eq!(v["hits"].as_array().unwrap().len(), 120);
    let v = env.search(&["117", "--mode", "keyword"]);
    assert!(v["hits"][0]["path"].as_str().unwrap().ends_with("n117.md"));
}

#[test]
fn json_flag_on_every_command_and_help() {
    let env = Env::new();
    for args in [vec!["--json", "doctor"], vec!["--json", "models", "list"], vec!["--json", "embed", "привет", "hello"]] {
        let o = env.run(&args);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(v.is_object());
    }
    let v: Value = serde_json::from_slice(&env.run(&["--json", "embed", "привет", "hello"]).stdout).unwrap();
    assert_eq!(v["dim"], 384);
    assert_eq!(v["vectors"].as_array().unwrap().len(), 2);
    let h = env.run(&["--help"]);
    let help = String::from_utf8_lossy(&h.stdout);
    for c in ["ingest", "search", "show", "delete", "embed", "models", "doctor", "--json", "--home"] {
        assert!(help.contains(c), "help lacks {c}");
    }
    let e = env.run(&["search", "   "]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("empty query"));
}

/// Both arithmetics of the large products run here: bfloat16 (default where the CPU has
/// AVX-512 BF16) and f32 (`MNEMA_DENSE=f32`, the path of every other CPU) must give the same
/// vectors to a cosine of 0.9999; the speech encoder's bfloat16 and 8-bit forms the same words.
#[test]
fn bfloat16_and_f32_paths_agree() {
    let env = Env::new();
    let long = "Векторизация заметок: режем текст на куски по двести токенов и ищем по смыслу. ".repeat(12);
    let texts = ["как приготовить борщ", "beet soup recipe", "идеи по векторизации", long.as_str()];
    let embed = |dense: &str| -> Vec<Vec<f32>> {
        let o = env.cmd().env("MNEMA_DENSE", dense).args(["--json", "embed"]).args(texts).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_array().unwrap().iter().map(|f| f.as_f64().unwrap() as f32).collect())
            .collect()
    };
    let (fast, exact) = (embed("auto"), embed("f32"));
    assert_eq!(fast.len(), texts.len());
    for (i, (a, b)) in fast.iter().zip(&exact).enumerate() {
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.9999, "text {i}: cosine {cos} between the two paths");
    }
    if mnema_extract::dense::bf16_supported() {
        assert_ne!(fast, exact, "MNEMA_DENSE=f32 did not change the arithmetic");
    }
    let memo = repo().join("samples/voice/vectorization-ideas.mp3");
    let words = |dtype: &str| -> String {
        let o = env.cmd().env("MNEMA_SPEECH_DTYPE", dtype).args(["--json", "transcribe"]).arg(&memo).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["text"].as_str().unwrap().to_lowercase()
    };
    let (a, b) = (words("bf16"), words("q8"));
    let (_, wer) = mnema_extract::ocr::error_rates(&a, &b);
    assert!(wer <= 0.15 && a.contains("multilingual"), "bf16 {a:?} against q8 {b:?}");
}

#[test]
fn memory_budget_refuses_clearly_and_is_kept() {
    let env = Env::new();
    let p = env.write("n.md", "Заметка про бюджет памяти.".as_bytes());
    // Too small for the model: the error names the model, its cost and the budget.
    let o = env.run(&["--memory-budget", "200MiB", "ingest", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("multilingual-e5-small") && err.contains("memory budget") && err.contains("MiB"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = env.run(&["--memory-budget", "1MiB", "status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("too small"));
    assert_eq!(env.run(&["--memory-budget", "lots", "status"]).status.code(), Some(2));
    // 512 MiB is enough for the notes pipeline, and the OS-measured peak stays under it.
    let o = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(env!("CARGO_BIN_EXE_mnema"))
        .args(["--home", env.home().to_str().unwrap(), "--models", models().to_str().unwrap(), "--memory-budget", "512MiB", "ingest"])
        .arg(repo().join("samples/notes"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let kb: u64 = err.lines().find_map(|l| l.strip_prefix("maxrss_kb=")).unwrap().trim().parse().unwrap();
    assert!(kb * 1024 <= 512 << 20, "peak RSS {} MiB over the 512 MiB budget", kb / 1024);
}

#[test]
fn status_and_profile_report_memory_and_stages() {
    let env = Env::new();
    let o = env.run(&["--json", "--memory-budget", "1GiB", "status"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["memory_budget_bytes"], 1u64 << 30);
    assert!(v["models_budget_bytes"].as_u64().unwrap() < 1 << 30);
    assert!(v["machine"]["total_bytes"].as_u64().unwrap() > 0);
    let notes = repo().join("samples/notes");
    let o = env.run(&["--json", "profile", "--", "ingest", notes.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    for s in ["decode", "embed", "store", "load-model"] {
        assert!(stages.contains(&s), "{stages:?}");
    }
    let embed = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "embed").unwrap();
    assert!(embed["cpu_ms"].as_f64().unwrap() > 0.0 && embed["wall_ms"].as_f64().unwrap() > 0.0);
    let load = &report["model_events"][0];
    assert_eq!(load["event"], "load");
    assert_eq!(load["model"], "multilingual-e5-small");
    assert!(load["bytes"].as_u64().unwrap() > 100 << 20, "{load}");
    assert!(report["peak_rss_bytes"].as_u64().unwrap() >= load["bytes"].as_u64().unwrap());
    // The profiled command really ran: its items are searchable.
    assert_eq!(env.top_path(&["beet soup recipe"]), "borsch.md");
}

/// A screenshot-like PNG drawn by ImageMagick: `lines` of text, light or dark theme.
fn screenshot(path: &Path, lines: &[&str], dark: bool) {
    let (bg, fg) = if dark { ("#1e1e1e", "#e0e0e0") } else { ("white", "black") };
    let mut c = Command::new("convert");
    c.args(["-size", "1000x260", &format!("xc:{bg}"), "-font", "DejaVu-Sans", "-pointsize", "30", "-fill", fg]);
    for (i, l) in lines.iter().enumerate() {
        c.args(["-annotate", &format!("+24+{}", 60 + 70 * i), l]);
    }
    assert!(c.arg(path).status().unwrap().success());
}

#[test]
fn screenshots_are_found_by_their_text_with_boxes() {
    let env = Env::new();
    let dir = env.dir.path().join("shots");
    std::fs::create_dir_all(&dir).unwrap();
    screenshot(&dir.join("settings.png"), &["Подписка стоит 299 рублей в месяц", "Отменить подписку можно в настройках"], false);
    screenshot(&dir.join("editor.png"), &["Идеи по векторизации заметок", "Vector index: HNSW, 384 dims"], true);
    screenshot(&dir.join("weather.png"), &["Weather tomorrow: sunny, 21 degrees", "Погода на завтра: солнечно"], false);
    // A near-identical copy (one corner pixel block differs): linked, not OCRed again.
    assert!(Command::new("convert")
        .arg(dir.join("settings.png"))
        .args(["-fill", "#fefefe", "-draw", "rectangle 990,250 999,259"])
        .arg(dir.join("settings-again.png"))
        .status()
        .unwrap()
        .success());
    // Bad ones.
    std::fs::write(dir.join("broken.png"), b"not really a png").unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let full = std::fs::read(dir.join("weather.png")).unwrap();
    std::fs::write(dir.join("truncated.png"), &full[..full.len() / 2]).unwrap();
    assert!(Command::new("convert").args(["-size", "1x1", "xc:white"]).arg(dir.join("dot.png")).status().unwrap().success());
    let mut huge = std::fs::read(dir.join("dot.png")).unwrap();
    huge[16..20].copy_from_slice(&20000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&20000u32.to_be_bytes());
    std::fs::write(dir.join("huge.png"), huge).unwrap();
    std::fs::copy(dir.join("weather.png"), dir.join("weather-really-png.jpg")).unwrap();

    let o = env.run(&["--json", "ingest", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    for (name, reason) in [("broken.png", "not an image"), ("empty.png", "empty"), ("truncated.png", "corrupt"), ("dot.png", "too small")] {
        let l = by_name(&lines, name);
        assert_eq!(l["status"], "failed", "{name}");
        assert!(l["error"].as_str().unwrap().contains(reason), "{name}: {l}");
    }
    for name in ["settings.png", "editor.png", "weather.png", "settings-again.png", "weather-really-png.jpg"] {
        assert_eq!(by_name(&lines, name)["status"], "indexed", "{name}");
    }
    assert_eq!(env.top_path(&["сколько стоит подписка"]).trim_end_matches(".png").trim_end_matches("-again"), "settings");
    assert_eq!(env.top_path(&["идеи по векторизации", "--kind", "image"]), "editor.png", "dark theme read");
    assert_eq!(env.top_path(&["HNSW", "--mode", "keyword"]), "editor.png");
    // The hit carries the box of the matching line, inside the image.
    let v = env.search(&["отменить", "--mode", "keyword", "--kind", "image"]);
    let hit = &v["hits"][0];
    let boxes = hit["boxes"].as_array().unwrap();
    assert_eq!(boxes.len(), 1, "{hit}");
    let b: Vec<u64> = boxes[0].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert!(b[1] > 80 && b[1] + b[3] < 260 && b[0] + b[2] <= 1000, "second line's box: {b:?}");
    // Whichever of the pair came first was OCRed; the other points at it.
    let ids: Vec<i64> = ["settings-again.png", "settings.png"].iter().map(|n| by_name(&lines, n)["id"].as_i64().unwrap()).collect();
    let meta = |id: i64| -> Value {
        serde_json::from_slice::<Value>(&env.run(&["--json", "show", &id.to_string()]).stdout).unwrap()["item"]["meta"].clone()
    };
    let links: Vec<Option<i64>> = ids.iter().map(|&id| meta(id)["near_duplicate_of"].as_i64()).collect();
    assert!(links == vec![None, Some(ids[0])] || links == vec![Some(ids[1]), None], "{links:?}");
    // Rerun: all unchanged.
    let o = env.run(&["--json", "ingest", dir.join("settings.png").to_str().unwrap()]);
    assert_eq!(json_lines(&o)[0]["status"], "unchanged");
}

#[test]
fn ocr_command_reports_text_boxes_time_and_error_rates() {
    let env = Env::new();
    let img = env.dir.path().join("t.png");
    screenshot(&img, &["Привет, world 42", "Second line here"], false);
    let truth = env.write("truth.txt", "Привет, world 42\nSecond line here".as_bytes());
    let o = env.run(&["--json", "ocr", img.to_str().unwrap(), "--truth", truth.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v = &json_lines(&o)[0];
    assert_eq!(v["engine"], "tesseract");
    assert_eq!(v["lines"].as_array().unwrap().len(), 2);
    assert_eq!(v["text"], "Привет, world 42\nSecond line here");
    assert!(
        v["cer"].as_f64().unwrap() < 0.05 && v["elapsed_ms"].as_f64().unwrap() > 0.0 && v["peak_rss_mb"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(v["lines"][0]["conf"].as_f64().unwrap() > 50.0);
    // --compare runs both engines that run here; PaddleOCR reads the English line (it has no
    // Cyrillic model, so the Russian words are not checked) and boxes it.
    let en = env.dir.path().join("en.png");
    screenshot(&en, &["Vector index: HNSW, 384 dims", "Meeting moved to Thursday"], false);
    let o = env.run(&["--json", "ocr", en.to_str().unwrap(), "--compare"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let l = json_lines(&o);
    let engines: Vec<&str> = l.iter().map(|v| v["engine"].as_str().unwrap()).collect();
    assert_eq!(engines, ["tesseract", "paddle-ocr"]);
    for v in &l {
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("HNSW, 384 dims") && text.contains("Thursday"), "{v}");
        let b = &v["lines"][1]["bbox"];
        assert!(b[1].as_u64().unwrap() > 80 && b[1].as_u64().unwrap() < 200, "second line's box: {v}");
    }
    let o = env.run(&["ocr", img.to_str().unwrap(), "--compare"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[tesseract]") && text.contains("[paddle-ocr]") && text.contains("apple-vision unavailable"), "{text}");
    // Without its model files, PaddleOCR is listed as unavailable with the reason.
    let empty = env.dir.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let o = env.cmd_models(&empty).args(["ocr", img.to_str().unwrap(), "--engine", "paddle-ocr"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("paddle-ocr is unavailable") && String::from_utf8_lossy(&o.stderr).contains("setup.sh"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.run(&["ocr", img.to_str().unwrap(), "--engine", "apple-vision"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("macOS only"));
    let bad = env.write("bad.png", b"nope");
    let o = env.run(&["--json", "ocr", bad.to_str().unwrap(), img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let l = json_lines(&o);
    assert_eq!(l.len(), 2);
    assert!(l[0]["error"].as_str().unwrap().contains("not an image"));
}

/// English speech (espeak-ng) in a 16 kHz WAV with `before` seconds of silence first.
fn voice_memo(path: &Path, text: &str, before: f32) {
    let raw = path.with_extension("raw.wav");
    assert!(Command::new("espeak-ng").args(["-v", "en", "-s", "150", "-w"]).arg(&raw).arg(text).status().unwrap().success());
    assert!(Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1"])
        .arg(path)
        .args(["pad", &before.to_string(), "0.5"])
        .status()
        .unwrap()
        .success());
    std::fs::remove_file(raw).unwrap();
}

#[test]
fn voice_memos_are_found_by_what_was_said_at_the_right_second() {
    let env = Env::new();
    let dir = env.dir.path().join("memos");
    std::fs::create_dir_all(&dir).unwrap();
    voice_memo(&dir.join("ideas.wav"), "My ideas about vectorization: store every note as an embedding and search by meaning.", 6.0);
    voice_memo(&dir.join("shopping.wav"), "Remember to buy milk, bread and apples on the way home.", 1.0);
    // The same memo as MP3: transcribed from its own bytes.
    assert!(Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-i"])
        .arg(dir.join("shopping.wav"))
        .arg(dir.join("shopping-copy.mp3"))
        .status()
        .unwrap()
        .success());
    std::fs::write(dir.join("broken.m4a"), vec![3u8; 4096]).unwrap();
    std::fs::write(dir.join("empty.ogg"), b"").unwrap();
    assert!(Command::new("sox")
        .args(["-n", "-r", "16000", "-c", "1"])
        .arg(dir.join("quiet.wav"))
        .args(["trim", "0", "12"])
        .status()
        .unwrap()
        .success());

    let o = env.run(&["--json", "ingest", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert!(by_name(&lines, "broken.m4a")["error"].as_str().unwrap().contains("not a readable audio file"));
    assert!(by_name(&lines, "empty.ogg")["error"].as_str().unwrap().contains("empty file"));
    for name in ["ideas.wav", "shopping.wav", "shopping-copy.mp3", "quiet.wav"] {
        assert_eq!(by_name(&lines, name)["status"], "indexed", "{name}");
        assert_eq!(by_name(&lines, name)["kind"], "audio", "{name}");
    }
    // Silence is stored with no text: nothing invented to be found.
    assert_eq!(by_name(&lines, "quiet.wav")["chunks"], 0);
    // Found in English and Russian, with the second it was said (speech starts at 6 s).
    for q in ["ideas about vectorization", "идеи по векторизации"] {
        let v = env.search(&[q, "--kind", "audio"]);
        let hit = &v["hits"][0];
        assert!(hit["path"].as_str().unwrap().ends_with("ideas.wav"), "{q}: {v}");
        let ms = hit["start_ms"].as_i64().unwrap();
        assert!((5000..=7500).contains(&ms), "{q}: start_ms {ms}");
    }
    assert!(env.top_path(&["milk and bread", "--mode", "keyword"]).starts_with("shopping"));
    // The transcript with its segments is in the item.
    let id = by_name(&lines, "ideas.wav")["id"].as_i64().unwrap();
    let item: Value = serde_json::from_slice(&env.run(&["--json", "show", &id.to_string()]).stdout).unwrap();
    assert_eq!(item["item"]["meta"]["language"], "en");
    assert!(item["item"]["meta"]["segments"].as_array().is_some_and(|s| !s.is_empty()), "{item}");
    // Rerun: unchanged, nothing transcribed again.
    let o = env.run(&["--json", "ingest", dir.join("ideas.wav").to_str().unwrap()]);
    assert_eq!(json_lines(&o)[0]["status"], "unchanged");
}

#[test]
fn transcribe_command_prints_segments_and_fails_per_file() {
    let env = Env::new();
    let memo = env.dir.path().join("memo.wav");
    voice_memo(&memo, "The meeting moved to Thursday at three o'clock.", 2.0);
    let bad = env.write("bad.mp3", b"ID3 but nothing else");
    let o = env.run(&["--json", "transcribe", memo.to_str().unwrap(), bad.to_str().unwrap(), "--language", "en"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    let good = by_name(&lines, "memo.wav");
    for k in ["path", "model", "language", "text", "segments", "audio_ms", "elapsed_ms"] {
        assert!(good.get(k).is_some(), "{k} missing: {good}");
    }
    assert_eq!(good["model"], "whisper-base");
    assert!(good["text"].as_str().unwrap().to_lowercase().contains("thursday"), "{good}");
    let seg = &good["segments"][0];
    assert!((1300..=2800).contains(&seg["start_ms"].as_i64().unwrap()), "{seg}");
    assert!(seg["end_ms"].as_i64().unwrap() > seg["start_ms"].as_i64().unwrap());
    let audio_ms = good["audio_ms"].as_i64().unwrap();
    assert!((5000..9000).contains(&audio_ms), "{audio_ms}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().any(|l| l.starts_with("mnema: ") && l.contains("bad.mp3")), "{err}");
    assert!(by_name(&lines, "bad.mp3")["error"].is_string());
    // Human output: timestamps and text.
    let o = env.run(&["transcribe", memo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[00:0") && text.to_lowercase().contains("thursday"), "{text}");
}

/// A running `mnema serve` on a free loopback port, stopped on drop.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Result<Server, String> {
        use std::io::BufRead;
        let mut cmd = env.cmd();
        cmd.arg("serve").args(extra).stderr(Stdio::piped()).stdout(Stdio::null());
        if !extra.contains(&"--addr") {
            cmd.args(["--addr", "127.0.0.1:0"]);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        match line.split("http://").nth(1).and_then(|r| r.split('/').next()) {
            Some(addr) => Ok(Server { child, addr: addr.to_string() }),
            None => {
                let _ = child.wait();
                Err(line)
            }
        }
    }

    /// One HTTP/1.1 request; returns status, headers (lowercase) and body.
    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n", self.addr, body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            let mut out = Vec::new();
            let mut rest = &body[..];
            while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
                let n = usize::from_str_radix(std::str::from_utf8(&rest[..p]).unwrap().trim(), 16).unwrap_or(0);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[p + 2..p + 2 + n]);
                rest = &rest[p + 2 + n + 2..];
            }
            body = out;
        }
        (status, head, body)
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (st, _, b) = self.req("GET", path, &[], b"");
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn srv2(env: &Env) -> Server {
    Server::start(env, &[], &[]).unwrap()
}

#[test]
fn http_api_over_a_real_store() {
    let env = Env::new();
    let dir = env.dir.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("samples/notes/borsch.md"), dir.join("borsch.md")).unwrap();
    screenshot(&dir.join("settings.png"), &["Подписка стоит 299 рублей в месяц", "Отменить подписку можно в настройках"], false);
    voice_memo(&dir.join("memo.wav"), "My ideas about vectorization: store every note as an embedding.", 3.0);
    assert_eq!(env.run(&["ingest", dir.to_str().unwrap()]).status.code(), Some(0));
    let srv = Server::start(&env, &["--allow-path", env.dir.path().to_str().unwrap()], &[]).unwrap();

    let (st, h) = srv.get_json("/api/health");
    assert_eq!((st, h["ok"].as_bool(), h["items"].as_u64()), (200, Some(true), Some(3)));
    // Same JSON as the CLI.
    let (st, v) = srv.get_json("/api/search?q=beet%20soup%20recipe&limit=3");
    assert_eq!(st, 200);
    let cli = env.search(&["beet soup recipe", "--limit", "3"]);
    let ids = |v: &Value| v["hits"].as_array().unwrap().iter().map(|h| h["id"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(&v), ids(&cli));
    assert!(v["hits"][0]["path"].as_str().unwrap().ends_with("borsch.md"));
    let (_, v) = srv.get_json("/api/search?q=%D0%BE%D1%82%D0%BC%D0%B5%D0%BD%D0%B8%D1%82%D1%8C&kind=image&mode=keyword");
    let hit = &v["hits"][0];
    assert_eq!(hit["kind"], "image");
    assert_eq!(hit["boxes"].as_array().unwrap().len(), 1, "{hit}");
    let (_, v) = srv.get_json("/api/search?q=ideas%20about%20vectorization&kind=audio");
    assert!((2000..=4500).contains(&v["hits"][0]["start_ms"].as_i64().unwrap()), "{v}");
    let audio_id = v["hits"][0]["id"].as_i64().unwrap();
    let image_id = hit["id"].as_i64().unwrap();
    // Malformed queries: 400 with a JSON reason.
    for bad in
        ["/api/search", "/api/search?q=", "/api/search?q=x&mode=fuzzy", "/api/search?q=x&kind=video", "/api/search?q=x&since=yesterday"]
    {
        let (st, v) = srv.get_json(bad);
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}");
    }
    // Items: found, unknown (404 JSON), nonsense ids.
    let (st, v) = srv.get_json(&format!("/api/items/{audio_id}"));
    assert_eq!(st, 200);
    assert!(v["item"]["meta"]["segments"].as_array().is_some_and(|s| !s.is_empty()));
    for bad in ["/api/items/999999", "/api/items/abc", "/api/items/-1", "/api/nope"] {
        let (st, v) = srv.get_json(bad);
        assert_eq!(st, 404, "{bad}");
        assert!(v["error"].is_string(), "{bad}");
    }
    // Files: the original, a range of it (audio seeks), a thumbnail; traversal finds nothing.
    let (st, h, b) = srv.req("GET", &format!("/api/files/{image_id}"), &[], b"");
    assert_eq!(st, 200);
    assert!(h.contains("content-type: image/png"));
    assert_eq!(b, std::fs::read(dir.join("settings.png")).unwrap());
    let (st, h, b) = srv.req("GET", &format!("/api/files/{audio_id}"), &[("Range", "bytes=10-19")], b"");
    assert_eq!((st, b.len()), (206, 10));
    assert!(h.contains("content-range: bytes 10-19/"), "{h}");
    let (st, h, b) = srv.req("GET", &format!("/api/files/{image_id}?thumb=1"), &[], b"");
    assert_eq!(st, 200);
    assert!(
        h.contains("image/png") && b.len() < std::fs::metadata(dir.join("settings.png")).unwrap().len() as usize,
        "thumbnail is smaller"
    );
    for bad in
        ["/api/files/..%2F..%2F..%2Fetc%2Fpasswd", "/api/files/../../etc/passwd", "/api/files/%2Fetc%2Fpasswd", "/..%2f..%2fetc/passwd"]
    {
        let (st, _, b) = srv.req("GET", bad, &[], b"");
        assert!(st == 404 || st == 400, "{bad}: {st}");
        assert!(!String::from_utf8_lossy(&b).contains("root:"), "{bad} leaked a system file");
    }
    // Ingest job with server-sent progress events, and bad JSON bodies.
    let more = env.dir.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    std::fs::write(more.join("plan.md"), "# План\nКупить билеты на поезд в четверг.").unwrap();
    std::fs::write(more.join("bad.md"), b"\0\0binary").unwrap();
    let body = serde_json::json!({ "paths": [more] }).to_string();
    let (st, _, b) = srv.req("POST", "/api/ingest", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    let job = serde_json::from_slice::<Value>(&b).unwrap()["job"].as_u64().unwrap();
    let (st, _, events) = srv.req("GET", &format!("/api/jobs/{job}/events"), &[], b"");
    assert_eq!(st, 200);
    let events = String::from_utf8_lossy(&events);
    assert_eq!(events.matches("event: progress").count(), 2, "{events}");
    assert!(events.contains("event: done") && events.contains("\"failed\":1"), "{events}");
    assert!(srv.get_json("/api/search?q=%D0%B1%D0%B8%D0%BB%D0%B5%D1%82%D1%8B&mode=keyword").1["hits"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("plan.md"));
    for bad in [&b"{not json"[..], b"{\"paths\": []}", b"{\"paths\": 5}"] {
        let (st, _, b) = srv.req("POST", "/api/ingest", &[("Content-Type", "application/json")], bad);
        assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    }
    // Uploads: a plain name only; over the limit is 413 JSON.
    let octets = [("Content-Type", "application/octet-stream")];
    let (st, _, _) = srv.req("POST", "/api/upload?name=..%2Fevil.md", &octets, b"x");
    assert_eq!(st, 400);
    let (st, _, b) = srv.req("POST", "/api/upload?name=note.md", &octets, "Загружено через API".as_bytes());
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    drop(srv);
    let small = Server::start(&env, &["--max-upload", "1KiB"], &[]).unwrap();
    let (st, _, b) = small.req("POST", "/api/upload?name=big.md", &octets, &vec![b'a'; 4096]);
    assert_eq!(st, 413);
    assert!(String::from_utf8_lossy(&b).contains("limit"), "{}", String::from_utf8_lossy(&b));
    // OCR comparison: one JSON line per engine, with error rates against the truth.
    let png = std::fs::read(dir.join("settings.png")).unwrap();
    let (st, h, b) =
        srv2(&env).req("POST", "/api/ocr?truth=%D0%9F%D0%BE%D0%B4%D0%BF%D0%B8%D1%81%D0%BA%D0%B0", &[("Content-Type", "image/png")], &png);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert!(h.contains("application/x-ndjson"));
    let lines: Vec<Value> = String::from_utf8_lossy(&b).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["engine"].as_str().unwrap()).collect::<Vec<_>>(), ["tesseract", "paddle-ocr"]);
    assert!(lines[0]["text"].as_str().unwrap().contains("Подписка") && lines[0]["cer"].is_number(), "{}", lines[0]);
    assert_eq!(small.req("POST", "/api/ocr", &octets, b"not an image").0, 400);
    assert_eq!(srv2(&env).req("POST", "/api/ocr?engines=apple-vision", &octets, &png).0, 400);
    // Transcription of an uploaded recording: the CLI's JSON.
    let wav = std::fs::read(dir.join("memo.wav")).unwrap();
    let (st, _, b) = small.req("POST", "/api/transcribe?name=memo.wav", &octets, &wav);
    assert_eq!(st, 413, "the 1 KiB limit applies to recordings too");
    let (st, _, b2) = srv2(&env).req("POST", "/api/transcribe?name=memo.wav&language=en", &[("Content-Type", "audio/wav")], &wav);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b2));
    let t: Value = serde_json::from_slice(&b2).unwrap();
    assert!(
        t["text"].as_str().unwrap().to_lowercase().contains("ideas about")
            && t["text"].as_str().unwrap().contains("embedding")
            && t["segments"].as_array().is_some_and(|s| !s.is_empty()),
        "{t}"
    );
    let _ = b;
    let (st, v) = small.get_json("/api/models");
    assert!(st == 200 && v["models"].as_array().unwrap().iter().any(|m| m["name"] == "whisper-base"), "{v}");
    // Delete, then it is gone.
    let (st, v) = small.get_json("/api/openapi.json");
    assert!(st == 200 && v["paths"]["/api/search"].is_object());
    let (st, _, _) = small.req("DELETE", &format!("/api/items/{image_id}"), &[], b"");
    assert_eq!(st, 200);
    assert_eq!(small.get_json(&format!("/api/items/{image_id}")).0, 404);
    assert_eq!(small.req("DELETE", &format!("/api/items/{image_id}"), &[], b"").0, 404);
}

#[test]
fn http_token_is_required_off_loopback_and_checked() {
    let env = Env::new();
    // Any address but loopback without a token: refused at start.
    let err = Server::start(&env, &["--addr", "0.0.0.0:0"], &[("MNEMA_TOKEN", "")]).err().expect("started without a token");
    assert!(err.contains("MNEMA_TOKEN"), "{err}");
    let srv = Server::start(&env, &[], &[("MNEMA_TOKEN", "s3cret-s3cret-s3cret")]).unwrap();
    assert_eq!(srv.req("GET", "/api/health", &[], b"").0, 401);
    assert_eq!(srv.req("GET", "/api/health", &[("Authorization", "Bearer wrong")], b"").0, 401);
    assert_eq!(srv.req("GET", "/api/health", &[("Authorization", "Bearer s3cret-s3cret-s3cret")], b"").0, 200);
    let (st, h, _) = srv.req("GET", "/api/health?token=s3cret-s3cret-s3cret", &[], b"");
    assert_eq!(st, 200);
    assert!(h.contains("set-cookie: mnema_token=s3cret-s3cret-s3cret"), "{h}");
    assert_eq!(srv.req("GET", "/api/health", &[("Cookie", "mnema_token=s3cret-s3cret-s3cret")], b"").0, 200);
}
