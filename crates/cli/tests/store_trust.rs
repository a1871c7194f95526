//! The store never loses vectors across real processes: two `mnema ingest` at once into one
//! new data directory, and `mnema serve` running while the CLI writes; data files are private.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
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
        self.dir.path().join("дом")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mnema"));
        c.arg("--home").arg(self.home()).arg("--models").arg(models()).env_remove("MNEMA_HOME").env_remove("MNEMA_EMBEDDER");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(&a);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// `n` notes on distinct subjects in folder `name`.
    fn notes(&self, name: &str, n: usize, offset: usize) -> PathBuf {
        let dir = self.dir.path().join("files").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let k = offset + i;
            let text = format!(
                "Заметка {k} о предмете номер {k}: {}. Note {k} on subject {k}: {}.\n",
                SUBJECTS_RU[k % SUBJECTS_RU.len()],
                SUBJECTS_EN[(k / SUBJECTS_RU.len()) % SUBJECTS_EN.len()]
            );
            std::fs::write(dir.join(format!("заметка-{k:03}.md")), text).unwrap();
        }
        dir
    }
    /// The paths `mnema search --mode semantic` returns, all of them.
    fn semantic_paths(&self, q: &str) -> Vec<String> {
        let v = self.json(&["search", q, "--mode", "semantic", "--limit", "200"]);
        v["hits"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap().to_string()).collect()
    }
}

const SUBJECTS_RU: &[&str] = &[
    "рецепт борща со свёклой",
    "ремонт велосипеда",
    "поездка в Казань",
    "налоговый вычет",
    "полив помидоров",
    "урок немецкого",
    "замена масла в машине",
    "день рождения бабушки",
];
const SUBJECTS_EN: &[&str] = &["quarterly budget", "hiking boots", "piano practice", "server migration", "dentist visit"];

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every file of `dirs` exactly once in semantic search, and the index equal to SQLite.
fn assert_nothing_lost(env: &Env, want: &HashSet<String>, what: &str) {
    let got = env.semantic_paths("заметка о предмете");
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), unique.len(), "{what}: one hit per item");
    let lost: Vec<&String> = want.difference(&unique).collect();
    assert!(lost.is_empty(), "{what}: semantic search lost {} of {}: {lost:?}", lost.len(), want.len());
    assert_eq!(unique.len(), want.len(), "{what}: {unique:?}");
    let d = env.json(&["doctor"]);
    let i = &d["index"];
    assert_eq!(i["ok"], true, "{what}: {d}");
    assert_eq!(i["repaired"], false, "{what}: {d}");
    assert_eq!(i["sqlite_vectors"], i["index_vectors"], "{what}: {d}");
}

fn md_files(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path().canonicalize().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn two_concurrent_ingests_into_one_new_home_lose_nothing() {
    for round in 0..3 {
        let env = Env::new();
        let a = env.notes("a", 16, 0);
        let b = env.notes("b", 16, 16);
        // Both start before the data directory exists: they race on creating the schema too.
        let spawn = |d: &Path| {
            env.cmd().args(["--json", "ingest", d.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap());
        for (o, name) in [(&oa, "a"), (&ob, "b")] {
            assert_eq!(o.status.code(), Some(0), "round {round}, ingest {name}: {}", String::from_utf8_lossy(&o.stderr));
            let lines = json_lines(o);
            assert_eq!(lines.len(), 16, "round {round}: {lines:?}");
            assert!(lines.iter().all(|l| l["status"] == "indexed"), "round {round}: {lines:?}");
        }
        let ids: HashSet<i64> = json_lines(&oa).iter().chain(&json_lines(&ob)).map(|l| l["id"].as_i64().unwrap()).collect();
        assert_eq!(ids.len(), 32, "round {round}: every file its own item");
        let mut want = md_files(&a);
        want.extend(md_files(&b));
        assert_nothing_lost(&env, &want, &format!("round {round}"));
    }
}

/// A running `mnema serve` on a free loopback port.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start(env: &Env) -> Server {
        use std::io::BufRead;
        let mut cmd = env.cmd();
        cmd.args(["serve", "--addr", "127.0.0.1:0"]).stderr(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("serve: {line}")).to_string();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, addr }
    }

    fn req(&self, method: &str, path: &str) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", self.addr).unwrap();
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

    fn semantic_paths(&self, q: &str) -> HashSet<String> {
        let (st, v) = self.req("GET", &format!("/api/search?q={q}&mode=semantic&limit=200"));
        assert_eq!(st, 200, "{v}");
        v["hits"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap().to_string()).collect()
    }

    /// SIGTERM: the server shuts down gracefully (and saves its vector index).
    fn stop(mut self) {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let code = self.child.wait().unwrap();
        assert!(code.success() || code.code().is_none(), "{code:?}");
    }
}

#[test]
fn serve_sees_cli_writes_and_never_saves_a_stale_index() {
    let env = Env::new();
    let a = env.notes("a", 12, 0);
    assert_eq!(env.run(&["ingest", a.to_str().unwrap()]).status.code(), Some(0));
    let srv = Server::start(&env);
    let q = "%D0%B7%D0%B0%D0%BC%D0%B5%D1%82%D0%BA%D0%B0"; // "заметка"
    assert_eq!(srv.semantic_paths(q), md_files(&a), "the server's index is loaded");
    // A CLI ingest while the server runs: the server's next search sees it.
    let b = env.notes("b", 12, 12);
    let o = env.run(&["ingest", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let mut want = md_files(&a);
    want.extend(md_files(&b));
    assert_eq!(srv.semantic_paths(q), want, "the server sees the CLI's notes");
    // Delete through the API, then stop the server: it saves its index on the way out.
    let gone = env.json(&["search", "заметка 3 о предмете номер 3", "--mode", "keyword", "--limit", "1"]);
    let (id, path) = (gone["hits"][0]["id"].as_i64().unwrap(), gone["hits"][0]["path"].as_str().unwrap().to_string());
    let (st, v) = srv.req("DELETE", &format!("/api/items/{id}"));
    assert_eq!((st, &v["deleted"]), (200, &Value::Bool(true)), "{v}");
    want.remove(&path);
    // Another CLI write after the delete, before the server stops.
    let c = env.notes("c", 4, 24);
    assert_eq!(env.run(&["ingest", c.to_str().unwrap()]).status.code(), Some(0));
    want.extend(md_files(&c));
    assert_eq!(srv.semantic_paths(q), want);
    srv.stop();
    assert_nothing_lost(&env, &want, "after the server stopped");
}

#[cfg(unix)]
#[test]
fn data_files_are_private_and_doctor_names_loose_ones() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let env = Env::new();
    let a = env.notes("a", 3, 0);
    assert_eq!(env.run(&["ingest", a.to_str().unwrap()]).status.code(), Some(0));
    let home = env.home();
    assert_eq!(mode(&home), 0o700);
    let mut modes = HashMap::new();
    for e in std::fs::read_dir(&home).unwrap() {
        let p = e.unwrap().path();
        modes.insert(p.file_name().unwrap().to_string_lossy().into_owned(), mode(&p));
    }
    for f in ["mnema.db", "vectors.usearch", "vectors.usearch.gen"] {
        assert_eq!(modes.get(f), Some(&0o600), "{f}: {modes:?}");
    }
    assert!(modes.values().all(|m| m & 0o077 == 0), "{modes:?}");
    let d = env.json(&["doctor"]);
    let perm = d["checks"].as_array().unwrap().iter().find(|c| c["name"] == "data file permissions").unwrap().clone();
    assert_eq!(perm["status"], "ok", "{d}");
    // A file left readable by an older mnema (or copied in): doctor warns and names it;
    // opening the store tightens the directory.
    let loose = home.join("uploads").join("скриншот.png");
    std::fs::create_dir_all(loose.parent().unwrap()).unwrap();
    std::fs::write(&loose, b"x").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = env.json(&["doctor"]);
    let perm = d["checks"].as_array().unwrap().iter().find(|c| c["name"] == "data file permissions").unwrap().clone();
    assert_eq!(perm["status"], "warn", "{d}");
    let detail = perm["detail"].as_str().unwrap();
    assert!(detail.contains("скриншот.png") && detail.contains(&home.display().to_string()), "{detail}");
    assert_eq!(mode(&home), 0o700, "tightened when the store opened");
}
