//! `mnema serve` is safe and bounded: a real server process over a real store, spoken to over
//! loopback with raw HTTP/1.1, so every header (Host, Origin, Content-Type) is what a browser
//! or an attacker's page would send.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| repo().join("models"))
}

const TOKEN: &str = "correct-horse-battery-staple";

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
        // MNEMA_BIN runs these tests against another build (e.g. the one before these fixes).
        let bin = std::env::var_os("MNEMA_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mnema")));
        let mut c = Command::new(bin);
        c.arg("--home").arg(self.home()).arg("--models").arg(models()).env_remove("MNEMA_HOME").env_remove("MNEMA_EMBEDDER");
        c.env_remove("MNEMA_TOKEN");
        c
    }
    /// Writes `rel` (folders created) under the test directory.
    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn ingest(&self, p: &Path) {
        let o = self.cmd().arg("ingest").arg(p).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// A running `mnema serve` on a free loopback port, stopped on drop.
struct Server {
    child: Child,
    addr: String,
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A JSON error body: `{"error": "..."}`.
    fn error(&self) -> String {
        match self.json()["error"].as_str() {
            Some(e) => e.to_string(),
            None => panic!("not a JSON error ({}): {} {}", self.status, self.head, self.text()),
        }
    }
}

impl Server {
    fn start(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Result<Server, String> {
        use std::io::BufRead;
        let mut cmd = env.cmd();
        cmd.arg("serve").args(["--addr", "127.0.0.1:0"]).args(extra).stderr(Stdio::piped()).stdout(Stdio::null());
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

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    /// One HTTP/1.1 request with `Host` set to `host` (or this server's address).
    fn req_host(&self, host: Option<&str>, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let host = host.unwrap_or(&self.addr);
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response to {method} {path}"));
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
        Reply { status, head, body }
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.req_host(None, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Reply {
        self.req("GET", path, &[], b"")
    }

    fn ingest(&self, paths: &[&Path]) -> Reply {
        let body = serde_json::json!({ "paths": paths }).to_string();
        self.req("POST", "/api/ingest", &[("Content-Type", "application/json")], body.as_bytes())
    }

    /// Waits for job `id` to finish; returns its final state.
    fn wait_job(&self, id: u64) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(&format!("/api/jobs/{id}")).json();
            if v["done"] == true {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(300), "job {id} never finished: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn items(&self) -> u64 {
        self.get("/api/health").json()["items"].as_u64().unwrap()
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    fn proc_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines().find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix("kB")?.trim().parse().ok()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OCTETS: (&str, &str) = ("Content-Type", "application/octet-stream");

#[test]
fn a_foreign_host_is_refused_and_loopback_names_are_served() {
    let env = Env::new();
    let srv = Server::start(&env, &[], &[]).unwrap();
    let port = srv.port().to_string();
    // DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1.
    for host in ["attacker.example", &format!("attacker.example:{port}"), &format!("127.0.0.1.nip.io:{port}"), "127.0.0.1:1"] {
        for path in ["/api/health", "/", "/api/files/1"] {
            let r = srv.req_host(Some(host), "GET", path, &[], b"");
            assert_eq!(r.status, 421, "{host} {path}: {}", r.text());
            assert!(r.error().contains("host"), "{}", r.text());
        }
        let body = br#"{"paths": ["/etc"]}"#;
        let r = srv.req_host(Some(host), "POST", "/api/ingest", &[("Content-Type", "application/json")], body);
        assert_eq!(r.status, 421, "{host}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        let r = srv.req_host(Some(&host), "GET", "/api/health", &[], b"");
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(srv.req_host(Some(&host), "GET", "/", &[], b"").status, 200, "{host}");
    }
}

#[test]
fn cross_site_posts_are_refused_and_nothing_is_stored() {
    let env = Env::new();
    let srv = Server::start(&env, &[], &[]).unwrap();
    let own = format!("http://{}", srv.addr);
    let note = "Пароль от Wi-Fi: correct horse".as_bytes();
    // The attack as reproduced: a form-like text/plain POST from a foreign page (no preflight).
    for path in ["/api/upload?name=stolen.md", "/api/ocr", "/api/transcribe?name=a.wav"] {
        for headers in [
            vec![("Origin", "http://attacker.example"), ("Content-Type", "text/plain")],
            vec![("Origin", "http://attacker.example"), OCTETS],
            vec![("Origin", "null"), OCTETS],
            vec![("Origin", &format!("http://localhost:{}", srv.port()) as &str), OCTETS],
            vec![("Sec-Fetch-Site", "cross-site"), OCTETS],
            vec![("Sec-Fetch-Site", "same-site"), OCTETS],
        ] {
            let r = srv.req("POST", path, &headers, note);
            assert_eq!(r.status, 403, "{path} {headers:?}: {}", r.text());
            assert!(r.error().contains("refused"), "{}", r.text());
        }
        // Same origin (or no browser at all) but a CORS-simple or missing content type.
        for ct in [
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let mut h = vec![("Origin", own.as_str())];
            h.extend(ct.map(|c| ("Content-Type", c)));
            let r = srv.req("POST", path, &h, note);
            assert_eq!(r.status, 415, "{path} {ct:?}: {}", r.text());
            assert!(r.error().contains("application/octet-stream"), "{}", r.text());
        }
    }
    let body = serde_json::json!({ "paths": [env.dir.path()] }).to_string();
    let r = srv.req("POST", "/api/ingest", &[("Origin", "http://attacker.example"), ("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 403, "{}", r.text());
    let r = srv.req("POST", "/api/ingest", &[("Content-Type", "text/plain")], body.as_bytes());
    assert_eq!(r.status, 415, "{}", r.text());
    let r = srv.req("DELETE", "/api/items/1", &[("Origin", "http://attacker.example")], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    // Nothing was stored.
    assert_eq!(srv.items(), 0);
    let uploads = env.home().join("uploads");
    assert!(!uploads.exists() || std::fs::read_dir(&uploads).unwrap().next().is_none(), "an upload was saved");
    // The page itself (same origin, a real content type) and non-browser clients still work.
    let r = srv.req("POST", "/api/upload?name=mine.md", &[("Origin", &own), ("Sec-Fetch-Site", "same-origin"), OCTETS], note);
    assert_eq!(r.status, 202, "{}", r.text());
    srv.wait_job(r.json()["job"].as_u64().unwrap());
    let r = srv.req("POST", "/api/upload?name=curl.md", &[("Content-Type", "text/markdown")], "Заметка из curl".as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    srv.wait_job(r.json()["job"].as_u64().unwrap());
    assert_eq!(srv.items(), 2);
}

#[test]
fn api_ingest_reads_only_allowed_folders() {
    let env = Env::new();
    let allowed = env.dir.path().join("allowed");
    let secret = env.write("outside/credentials.md", "Секретный ключ: zebra-quokka-42".as_bytes());
    env.write("allowed/plan.md", "План на неделю: купить билеты.".as_bytes());
    env.write("cli/old.md", "Старая заметка про огород.".as_bytes());
    std::os::unix::fs::symlink(secret.parent().unwrap(), allowed.join("link")).unwrap();
    // Folders ingested from the command line stay allowed.
    env.ingest(&env.dir.path().join("cli"));
    let srv = Server::start(&env, &["--allow-path", allowed.to_str().unwrap()], &[]).unwrap();
    let escapes = [
        secret.clone(),
        secret.parent().unwrap().to_path_buf(),
        allowed.join("../outside/credentials.md"),
        allowed.join("link"),
        allowed.join("link/credentials.md"),
        PathBuf::from("/etc"),
        env.home(),
    ];
    for p in &escapes {
        let r = srv.ingest(&[p]);
        assert_eq!(r.status, 403, "{}: {}", p.display(), r.text());
        assert!(r.error().contains(p.to_str().unwrap()) && r.error().contains("--allow-path"), "{}", r.text());
    }
    // A request with one bad path among good ones is refused whole.
    assert_eq!(srv.ingest(&[&allowed, &secret]).status, 403);
    let r = srv.ingest(&[Path::new("relative/path")]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = srv.ingest(&[&allowed.join("nope.md")]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(srv.items(), 1);
    // Inside: the allowed folder, a file in it, the CLI's folder (a new file there).
    env.write("cli/new.md", "Новая заметка про поезд.".as_bytes());
    for p in [allowed.join("plan.md"), allowed.clone(), env.dir.path().join("cli/new.md")] {
        let r = srv.ingest(&[&p]);
        assert_eq!(r.status, 202, "{}: {}", p.display(), r.text());
        let job = srv.wait_job(r.json()["job"].as_u64().unwrap());
        assert!(job["error"].is_null(), "{job}");
        // Walking the allowed folder meets the link to the secret: refused, with the reason.
        for f in job["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            if path.contains("credentials") {
                assert!(f["status"] == "failed" && f["error"].as_str().unwrap().contains("outside"), "{f}");
            } else {
                assert!(f["status"] == "indexed" || f["status"] == "unchanged", "{f}");
            }
        }
    }
    // The allowed folder's symlink to the secret was not followed out by the API either.
    let r = srv.get("/api/search?q=zebra-quokka&mode=keyword");
    assert_eq!(r.json()["hits"].as_array().map(Vec::len), Some(0), "{}", r.text());
    assert!(srv.items() >= 3);
}

#[test]
fn token_login_sets_the_cookie_and_short_tokens_are_refused() {
    let env = Env::new();
    for short in ["s3cret", "123456789012345"] {
        let err = Server::start(&env, &[], &[("MNEMA_TOKEN", short)]).err().expect("started with a short token");
        assert!(err.contains("MNEMA_TOKEN") && err.contains("16"), "{err}");
    }
    // A token the cookie could not carry would log nobody in: refused at start too.
    let err = Server::start(&env, &[], &[("MNEMA_TOKEN", "correct;horse battery staple")]).err().expect("started with a ';' in the token");
    assert!(err.contains("MNEMA_TOKEN") && err.contains("cookie"), "{err}");
    let srv = Server::start(&env, &[], &[("MNEMA_TOKEN", TOKEN)]).unwrap();
    assert_eq!(srv.get("/").status, 401);
    assert_eq!(srv.get("/api/health").status, 401);
    assert_eq!(srv.req("GET", "/api/health", &[("Authorization", "Bearer correct-horse-battery-stapl")], b"").status, 401);
    assert_eq!(srv.req("GET", "/api/health", &[("Cookie", "mnema_token=correct-horse-battery-staplE")], b"").status, 401);
    assert_eq!(srv.get("/?token=wrong-but-long-enough-token").status, 401);
    // The documented login: the page sets the cookie and drops the token from the address.
    let r = srv.get(&format!("/?token={TOKEN}"));
    assert!(r.status == 303 || r.status == 200, "{} {}", r.status, r.head);
    let cookie = r.head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap_or_else(|| panic!("no cookie: {}", r.head)).to_string();
    assert!(
        cookie.starts_with(&format!("mnema_token={TOKEN}")) && cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    // The UI's calls then carry only the cookie.
    let c = format!("mnema_token={TOKEN}");
    let with_cookie = [("Cookie", c.as_str())];
    assert_eq!(srv.req("GET", "/", &with_cookie, b"").status, 200);
    assert_eq!(srv.req("GET", "/api/health", &with_cookie, b"").status, 200);
    assert_eq!(srv.req("GET", "/api/status", &[("Cookie", &format!("theme=dark; {c}") as &str)], b"").status, 200);
    assert_eq!(srv.req("GET", "/api/health", &[("Authorization", &format!("Bearer {TOKEN}") as &str)], b"").status, 200);
}

#[test]
fn same_name_uploads_keep_both_files_and_items() {
    let env = Env::new();
    let srv = Server::start(&env, &[], &[]).unwrap();
    let bodies = ["Первая версия: встреча в понедельник.", "Вторая версия: встреча во вторник.", "Третья: среда."];
    let mut paths = Vec::new();
    for b in bodies {
        let r = srv.req("POST", "/api/upload?name=%D0%B7%D0%B0%D0%BC%D0%B5%D1%82%D0%BA%D0%B0.md", &[OCTETS], b.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
        let job = srv.wait_job(r.json()["job"].as_u64().unwrap());
        assert_eq!(job["files"][0]["status"], "indexed", "{job}");
        paths.push(PathBuf::from(r.json()["path"].as_str().unwrap()));
    }
    let names: Vec<String> = paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["заметка.md", "заметка (2).md", "заметка (3).md"]);
    for (p, b) in paths.iter().zip(bodies) {
        assert_eq!(std::fs::read_to_string(p).unwrap(), b);
    }
    assert_eq!(srv.items(), 3);
    for word in ["понедельник", "вторник", "среда"] {
        let v = srv.get(&format!("/api/search?mode=keyword&q={}", enc(word))).json();
        assert_eq!(v["hits"].as_array().map(Vec::len), Some(1), "{word}: {v}");
    }
    // Names the file system cannot take are a clear 400, never a 500.
    for name in ["a".repeat(300) + ".md", "я".repeat(150) + ".md"] {
        let r = srv.req("POST", &format!("/api/upload?name={}", enc(&name)), &[OCTETS], b"x");
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.error().contains("long"), "{}", r.text());
    }
    for bad in ["..%2Fevil.md", ".hidden", "a%0Ab.md", ""] {
        let r = srv.req("POST", &format!("/api/upload?name={bad}"), &[OCTETS], b"x");
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(srv.items(), 3);
}

fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'.' { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Ingests a note, then makes its file `size` bytes (sparse): the server serves the stored path.
fn served_file(env: &Env, size: u64) -> (PathBuf, i64) {
    let p = env.write("files/big.md", "Большой файл.".as_bytes());
    let o = env.cmd().args(["--json", "ingest"]).arg(&p).output().unwrap();
    let id = serde_json::from_slice::<Value>(o.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap()["id"].as_i64().unwrap();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(size).unwrap();
    (p, id)
}

#[test]
fn ranges_past_the_end_are_416() {
    let env = Env::new();
    let (_, id) = served_file(&env, 1000);
    let srv = Server::start(&env, &[], &[]).unwrap();
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = srv.req("GET", &format!("/api/files/{id}"), &[("Range", range)], b"");
        assert_eq!(r.status, 416, "{range}: {}", r.head);
        assert!(r.head.contains("content-range: bytes */1000"), "{}", r.head);
        r.error();
    }
    let r = srv.req("GET", &format!("/api/files/{id}"), &[("Range", "bytes=990-")], b"");
    assert_eq!((r.status, r.body.len()), (206, 10));
    assert!(r.head.contains("content-range: bytes 990-999/1000"), "{}", r.head);
    let r = srv.get(&format!("/api/files/{id}"));
    assert_eq!((r.status, r.body.len()), (200, 1000));
    assert!(r.head.contains("content-length: 1000"), "{}", r.head);
    // Another site cannot embed the file (<img>, <audio>, <script>) to probe or read it.
    assert!(
        r.head.contains("cross-origin-resource-policy: same-origin") && r.head.contains("x-content-type-options: nosniff"),
        "{}",
        r.head
    );
}

#[test]
fn large_files_are_streamed_not_read_whole() {
    const SIZE: u64 = 256 << 20;
    let env = Env::new();
    let (_, id) = served_file(&env, SIZE);
    let srv = Server::start(&env, &[], &[]).unwrap();
    assert_eq!(srv.get("/api/health").status, 200);
    let before = srv.proc_kib("VmHWM");
    // Three clients download the whole file at once, reading slowly at first.
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut c = TcpStream::connect(&srv.addr).unwrap();
                write!(c, "GET /api/files/{id} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", srv.addr).unwrap();
                std::thread::sleep(Duration::from_millis(500));
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    match c.read(&mut buf).unwrap() {
                        0 => break,
                        k => n += k as u64,
                    }
                }
                assert!(n > SIZE, "got {n} bytes");
            });
        }
    });
    let grew_mib = (srv.proc_kib("VmHWM") - before) / 1024;
    eprintln!("peak RSS grew by {grew_mib} MiB serving 3 x 256 MiB");
    assert!(grew_mib < 48, "peak RSS grew by {grew_mib} MiB for three 256 MiB downloads");
}

#[test]
fn uploads_are_streamed_to_disk() {
    const SIZE: usize = 96 << 20;
    let env = Env::new();
    let srv = Server::start(&env, &[], &[]).unwrap();
    assert_eq!(srv.get("/api/health").status, 200);
    let before = srv.proc_kib("VmHWM");
    let body = vec![b'z'; SIZE];
    let r = srv.req("POST", "/api/upload?name=big.dat", &[OCTETS], &body);
    assert_eq!(r.status, 202, "{}", r.text());
    let grew_mib = (srv.proc_kib("VmHWM") - before) / 1024;
    eprintln!("peak RSS grew by {grew_mib} MiB for a 96 MiB upload");
    assert!(grew_mib < 32, "peak RSS grew by {grew_mib} MiB for a 96 MiB upload");
    let saved = PathBuf::from(r.json()["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&saved).unwrap().len(), SIZE as u64);
    // Over the limit: refused while streaming, nothing left behind.
    drop(srv);
    let srv = Server::start(&env, &["--max-upload", "1MiB"], &[]).unwrap();
    let mut c = TcpStream::connect(&srv.addr).unwrap();
    // A chunked body declares no length: the limit holds while reading.
    write!(c, "POST /api/upload?name=huge.dat HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", srv.addr).unwrap();
    let piece = vec![b'y'; 256 << 10];
    for _ in 0..8 {
        if write!(c, "{:x}\r\n", piece.len()).and_then(|_| c.write_all(&piece)).and_then(|_| c.write_all(b"\r\n")).is_err() {
            break;
        }
    }
    let _ = c.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&raw));
    let names: Vec<_> = std::fs::read_dir(env.home().join("uploads")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from("big.dat")]);
    assert_eq!(std::fs::read_dir(env.home().join("tmp")).unwrap().count(), 0, "temporary bodies are removed");
}

#[test]
fn slow_connections_are_closed() {
    let env = Env::new();
    let srv = Server::start(&env, &[], &[]).unwrap();
    // Half a request head, then nothing (slowloris).
    let t0 = Instant::now();
    let mut c = TcpStream::connect(&srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    c.write_all(b"GET /api/health HTTP/1.1\r\nHost: ").unwrap();
    let mut buf = [0u8; 512];
    let r = c.read(&mut buf);
    let waited = t0.elapsed();
    assert!(r.is_ok(), "connection still open after {waited:?}: {r:?}");
    assert!(waited < Duration::from_secs(20), "closed only after {waited:?}");
    // An idle keep-alive connection is closed too.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(&srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    write!(c, "GET /api/health HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr).unwrap();
    let mut raw = Vec::new();
    let r = c.read_to_end(&mut raw);
    assert!(r.is_ok() && String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(20), "idle connection kept {:?}", t0.elapsed());
    // A body that stops halfway: the upload is abandoned within the body timeout.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(&srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    write!(
        c,
        "POST /api/upload?name=slow.md HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\nhalf",
        srv.addr
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let head = String::from_utf8_lossy(&raw);
    assert!(head.is_empty() || head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(t0.elapsed() < Duration::from_secs(60), "stalled body kept {:?}", t0.elapsed());
    assert!(!env.home().join("uploads/slow.md").exists());
}

#[test]
fn every_error_is_json_with_its_status() {
    let env = Env::new();
    let srv = Server::start(&env, &[], &[]).unwrap();
    for (method, path, status) in [
        ("GET", "/api/search?q=x&limit=abc", 400),
        ("GET", "/api/search?q=x&limit=-1", 400),
        ("GET", "/api/search?q=x&limit=99999999999999999999999", 400),
        ("GET", "/api/search?q=a&q=b", 400),
        ("GET", "/api/files/1?thumb=1&thumb=2", 400),
        ("POST", "/api/search?q=x", 405),
        ("PUT", "/api/health", 405),
        ("DELETE", "/api/upload", 405),
        ("POST", "/", 405),
        ("GET", "/api/nope", 404),
        ("GET", "/nope", 404),
    ] {
        let r = srv.req(method, path, &[], b"");
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(r.head.contains("content-type: application/json"), "{method} {path}: {}", r.head);
        assert!(!r.error().is_empty());
    }
    // A huge limit is bounded, not allocated.
    let r = srv.get("/api/search?q=x&limit=4000000000&mode=keyword");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn ingest_jobs_queue_on_one_worker_and_finished_ones_are_pruned() {
    let env = Env::new();
    let many = env.dir.path().join("many");
    for i in 0..150 {
        env.write(&format!("many/n{i:03}.md"), format!("Заметка номер {i}: про погоду, поезда и огород, вариант {}.", i * 7).as_bytes());
    }
    let one = env.write("one/only.md", "Одна заметка.".as_bytes());
    let srv = Server::start(&env, &["--allow-path", env.dir.path().to_str().unwrap()], &[]).unwrap();
    let first = srv.ingest(&[&many]);
    assert_eq!(first.status, 202);
    // While the long job runs, jobs beyond the queue are refused with 429 JSON.
    let mut accepted = vec![first.json()["job"].as_u64().unwrap()];
    let mut busy = 0;
    for _ in 0..30 {
        let r = srv.ingest(&[&one]);
        match r.status {
            202 => accepted.push(r.json()["job"].as_u64().unwrap()),
            429 => {
                busy += 1;
                assert!(r.error().contains("waiting"), "{}", r.text());
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    assert!(busy > 0 && accepted.len() <= 18, "accepted {}, busy {busy}", accepted.len());
    let st = srv.get("/api/status").json();
    let running = st["jobs"].as_array().unwrap().iter().filter(|j| j["done"] == false && j["queued"] == false).count();
    assert!(running <= 1, "{running} jobs running at once");
    for id in &accepted {
        assert!(srv.wait_job(*id)["error"].is_null());
    }
    // Finished jobs are kept up to a bound.
    for _ in 0..110 {
        let r = srv.ingest(&[&one]);
        assert_eq!(r.status, 202, "{}", r.text());
        srv.wait_job(r.json()["job"].as_u64().unwrap());
    }
    let jobs = srv.get("/api/status").json()["jobs"].as_array().unwrap().len();
    assert!(jobs <= 100, "{jobs} jobs kept");
    assert_eq!(srv.get(&format!("/api/jobs/{}", accepted[0])).status, 404);
}

/// Decoded pixels are charged to the memory budget before decoding, by their sample format,
/// on `/api/ocr` and on thumbnails as in ingest. Two 5000×5000 images differ only in sample
/// depth: 8-bit RGBA holds 4 bytes a pixel decoded (~175 MB with the grey copies and the
/// page), 16-bit 8 (~275 MB). Under a 300 MiB budget (about 215 MiB left beside mnema itself)
/// the first is served and the second refused with the reason; under the default budget both.
#[test]
fn decoding_on_the_api_is_charged_to_the_budget() {
    let env = Env::new();
    let dir = env.dir.path().join("pics");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ids = Vec::new();
    for (name, format) in [("eight.png", "PNG32"), ("sixteen.png", "PNG64")] {
        let p = dir.join(name);
        assert!(Command::new("convert")
            .args(["-size", "5000x5000", "xc:white", "-fill", "black", "-pointsize", "160", "-annotate", "+200+400", "Budget of pixels"])
            .args(["-alpha", "on", "-depth", if format == "PNG64" { "16" } else { "8" }])
            .arg(format!("{format}:{}", p.display()))
            .status()
            .unwrap()
            .success());
        let o = env.cmd().args(["--json", "ingest"]).arg(&p).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        ids.push(serde_json::from_slice::<Value>(o.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap()["id"].as_i64().unwrap());
    }
    let sixteen = std::fs::read(dir.join("sixteen.png")).unwrap();

    let small = Server::start(&env, &["--memory-budget", "300MiB"], &[]).unwrap();
    let r = small.get(&format!("/api/files/{}?thumb=1", ids[0]));
    assert_eq!(r.status, 200, "the 8-bit image fits: {}", r.text());
    assert!(r.body.starts_with(b"\x89PNG"));
    let r = small.get(&format!("/api/files/{}?thumb=1", ids[1]));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("memory budget"), "{}", r.error());
    let r = small.req("POST", "/api/ocr?engines=tesseract", &[OCTETS], &sixteen);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("memory budget"), "{}", r.error());
    // The original bytes are still served: only decoding is charged.
    assert_eq!(small.get(&format!("/api/files/{}", ids[1])).status, 200);
    drop(small);

    let srv = Server::start(&env, &[], &[]).unwrap();
    let r = srv.get(&format!("/api/files/{}?thumb=1", ids[1]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.starts_with(b"\x89PNG"));
}
