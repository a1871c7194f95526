//! The real `mnema` binary on its error paths: malformed settings are one clear line at start
//! (exit 2), a missing model file is one line naming the file, library logs do not flood the
//! terminal, and `serve` unloads a model nobody used once the idle timeout passes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| repo().join("models"))
}

/// Every setting mnema reads, removed so the tests see only what they set.
const SETTINGS: [&str; 14] = [
    "MNEMA_HOME",
    "MNEMA_MODELS",
    "MNEMA_EMBEDDER",
    "MNEMA_MAX_FILE_SIZE",
    "MNEMA_MAX_AUDIO_SIZE",
    "MNEMA_SPEECH_MODEL",
    "MNEMA_LANGUAGES",
    "MNEMA_IDLE_UNLOAD",
    "MNEMA_OCR_PREPROCESS",
    "MNEMA_SPEECH_DTYPE",
    "MNEMA_DENSE",
    "MNEMA_TOKEN",
    "MNEMA_MEMORY_BUDGET",
    "MNEMA_LOG",
];

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }
    fn cmd_models(&self, models: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mnema"));
        for k in SETTINGS {
            c.env_remove(k);
        }
        c.arg("--home").arg(self.dir.path().join("home")).arg("--models").arg(models);
        c
    }
    fn cmd(&self) -> Command {
        self.cmd_models(&models())
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join("files").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_malformed_setting_is_one_line_naming_the_variable_and_exit_2() {
    let env = Env::new();
    let note = env.write("заметка.md", "Заметка о погоде.".as_bytes());
    let cases = [
        ("MNEMA_MAX_FILE_SIZE", "abc", "10MiB"),
        ("MNEMA_MAX_AUDIO_SIZE", "lots", "2GiB"),
        ("MNEMA_OCR_PREPROCESS", "x", "none, invert, upscale, all"),
        ("MNEMA_LANGUAGES", "xx", "ru,en"),
        ("MNEMA_EMBEDDER", "unknown", "multilingual-e5-small"),
        ("MNEMA_SPEECH_MODEL", "whisper-giant", "whisper-base"),
        ("MNEMA_SPEECH_DTYPE", "f8", "q8"),
        ("MNEMA_DENSE", "turbo", "f32"),
        ("MNEMA_IDLE_UNLOAD", "later", "5m"),
        ("MNEMA_LOG", "warn,[[", "debug"),
    ];
    for (var, value, accepted) in cases {
        let o = env.cmd().env(var, value).arg("ingest").arg(&note).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {err}");
        assert_eq!(err.lines().count(), 1, "{var}={value}: {err}");
        assert!(err.starts_with(&format!("mnema: {var}=")) && err.contains(value) && err.contains(accepted), "{err}");
    }
    // Nothing was ingested by any of those runs: the store was never even created.
    assert!(!env.dir.path().join("home/mnema.db").exists());
    // Blank is unset: the default applies and the command works.
    let o = env.cmd().env("MNEMA_MAX_FILE_SIZE", "").arg("ingest").arg(&note).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_absurd_search_limit_is_refused_not_allocated() {
    let env = Env::new();
    let note = env.write("n.md", "Заметка о погоде и о море.".as_bytes());
    assert_eq!(env.cmd().args(["ingest", note.to_str().unwrap()]).output().unwrap().status.code(), Some(0));
    let o = env.cmd().args(["search", "погода", "--mode", "keyword", "--limit", "4000000000"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("1000"), "{}", stderr(&o));
    let o = env.cmd().args(["--json", "search", "погода", "--mode", "keyword", "--limit", "1000"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_missing_model_file_is_one_line_naming_it() {
    let env = Env::new();
    let note = env.write("n.md", b"some text");
    // A models directory where the embedder lacks its weights (the tokenizer is there).
    let dir = env.dir.path().join("models");
    std::fs::create_dir_all(dir.join("multilingual-e5-small")).unwrap();
    std::fs::copy(models().join("multilingual-e5-small/tokenizer.json"), dir.join("multilingual-e5-small/tokenizer.json")).unwrap();
    let o = env.cmd_models(&dir).arg("ingest").arg(&note).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("multilingual-e5-small") && err.contains("e5-small-q4.bin") && err.contains("scripts/setup.sh"), "{err}");
}

#[test]
fn a_corrupt_recording_is_one_line_naming_the_file() {
    let env = Env::new();
    // An MP3 header followed by garbage: the decoder complains about every frame it skips.
    let mut bytes = b"ID3\x03\x00\x00\x00\x00\x00\x00".to_vec();
    for i in 0..4000u32 {
        bytes.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        bytes.extend((0..413).map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8));
    }
    let memo = env.write("испорченная запись.mp3", &bytes);
    let o = env.cmd().arg("transcribe").arg(&memo).output().unwrap();
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("ERROR"), "unattributed library lines: {err}");
    assert!(err.lines().count() <= 2, "{err}");
    assert!(err.lines().any(|l| l.contains("испорченная запись.mp3")), "no line names the file: {err}");
}

/// A running `mnema serve` on a free loopback port, stopped on drop.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &Env, vars: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut cmd = env.cmd();
        cmd.args(["serve", "--addr", "127.0.0.1:0"]).stderr(Stdio::piped()).stdout(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("serve: {line}")).to_string();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, addr }
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr).unwrap();
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
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

#[test]
fn serve_unloads_an_idle_model_after_the_timeout() {
    let env = Env::new();
    let note = env.write("borsch.md", "Рецепт борща: свёкла, капуста, картофель.".as_bytes());
    assert_eq!(env.cmd().arg("ingest").arg(&note).output().unwrap().status.code(), Some(0));
    let srv = Server::start(&env, &[("MNEMA_IDLE_UNLOAD", "2s")]);
    // A semantic search loads the embedder.
    let (st, v) = srv.get_json("/api/search?q=%D0%B1%D0%BE%D1%80%D1%89&mode=semantic");
    assert_eq!(st, 200, "{v}");
    let loaded_at = Instant::now();
    let names =
        |v: &Value| v["models"].as_array().map(|m| m.iter().filter_map(|x| x["name"].as_str().map(String::from)).collect::<Vec<_>>());
    let (_, status) = srv.get_json("/api/status");
    assert_eq!(names(&status), Some(vec!["multilingual-e5-small".to_string()]), "{status}");
    // Nobody touches it: within a few seconds of the 2 s timeout it is gone, and the event
    // log says why. No request but status polling happens meanwhile.
    let status = loop {
        std::thread::sleep(Duration::from_millis(250));
        let (_, status) = srv.get_json("/api/status");
        if names(&status).is_some_and(|n| n.is_empty()) {
            break status;
        }
        assert!(loaded_at.elapsed() < Duration::from_secs(15), "still loaded after 15 s: {status}");
    };
    assert!(loaded_at.elapsed() >= Duration::from_millis(1900), "unloaded before the timeout");
    let events = status["model_events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["event"] == "unload" && e["model"] == "multilingual-e5-small" && e["reason"] == "idle"), "{status}");
    // It comes back on demand (another query: the server caches query vectors).
    let (st, v) = srv.get_json("/api/search?q=%D1%81%D0%B2%D1%91%D0%BA%D0%BB%D0%B0&mode=semantic");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, status) = srv.get_json("/api/status");
    assert_eq!(names(&status), Some(vec!["multilingual-e5-small".to_string()]), "{status}");
}
