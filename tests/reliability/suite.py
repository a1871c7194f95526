#!/usr/bin/env python3
"""The reliability suite: crash safety, concurrency and a server soak, on the real binary.

    suite.py crash-ingest [--rounds N]   kill -9 `mnema ingest` at random points, rerun, verify
    suite.py crash-serve  [--rounds N]   kill -9 `mnema serve` mid-job, rerun the job, verify
    suite.py concurrency                 two CLI ingests + serve under 8 searching clients + API jobs
    suite.py soak [--seconds S]          mixed API traffic with ingest running; RSS slope
    suite.py all [--quick]               everything (--quick: 3 rounds each, a 60 s soak)

After every rerun the store must hold every corpus file exactly once with its current content,
`PRAGMA integrity_check` must say ok, `mnema doctor` must find the vector index equal to SQLite
(count and ids) before repairing anything, and keyword and semantic self-recall must be 100%
(each item is among the first 10 hits for words of its own text). A JSON summary of the figures is
printed last (and written to --report FILE).

Environment: MNEMA_BIN (default ~/.cache/mnema-target/release/mnema), MNEMA_MODELS (default
models/ of this checkout). Needs ImageMagick, espeak-ng and sox (scripts/setup.sh installs them).
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/mnema-target"))
BIN = os.environ.get("MNEMA_BIN", os.path.join(TARGET, "release/mnema"))
MODELS = os.environ.get("MNEMA_MODELS", os.path.join(REPO, "models"))


def say(*a):
    print("reliability:", *a, file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# --- corpus ------------------------------------------------------------------------------------

RU_TOPICS = [
    ("Рецепт", "Для пирога с яблоками нужна мука, сахар, масло и корица; духовку греем до ста восьмидесяти градусов."),
    ("Поездка", "Поезд в Казань уходит в семь утра с Казанского вокзала, билеты лежат в почте, место у окна."),
    ("Ремонт", "Плитку в ванной кладём на клей, швы затираем через сутки, сантехник придёт во вторник."),
    ("Сад", "Розы подкармливаем калием в августе, обрезаем весной, укрываем на зиму лапником."),
    ("Финансы", "Налоговый вычет за лечение подаётся до конца апреля, нужны чеки и справка из клиники."),
    ("Книги", "Прочитать Чехова, рассказы о любви, и дочитать вторую часть Войны и мира к отпуску."),
    ("Спорт", "Бег по понедельникам и четвергам, пять километров в лёгком темпе, растяжка после пробежки."),
    ("Работа", "Собрание по квартальному отчёту перенесли на пятницу, подготовить графики продаж по регионам."),
    ("Здоровье", "Записаться к стоматологу на чистку, сдать анализ крови натощак, купить витамин D."),
    ("Машина", "Заменить масло и фильтры на пробеге девяносто тысяч, проверить тормозные колодки и шины."),
    ("Кино", "Посмотреть старые фильмы Тарковского: Солярис, Сталкер и Зеркало, лучше на большом экране."),
    ("Музыка", "Выучить на гитаре вальс Карулли, повторять гаммы по двадцать минут каждый вечер."),
    ("Дача", "Привезти на дачу рассаду помидоров, починить забор и покрасить крыльцо до июня."),
    ("Учёба", "Курс по линейной алгебре: собственные векторы, сингулярное разложение, домашнее задание к среде."),
    ("Питомец", "Кошке нужна прививка от бешенства в марте, корм для стерилизованных и новый когтеточ."),
]

EN_TOPICS = [
    ("Garden", "Water the tomatoes every second evening and tie the vines to the stakes before the wind picks up."),
    ("Travel", "The ferry to the island leaves at nine; bring passports, sunscreen and cash for the harbour fee."),
    ("Cooking", "For the curry, toast cumin and coriander seeds, then add onions, ginger, garlic and coconut milk."),
    ("Finance", "Move the emergency fund to the high interest account and cancel the unused gym membership."),
    ("Reading", "Finish the chapter on distributed consensus: Paxos, Raft and why leader leases need clocks."),
    ("Health", "Physiotherapy twice a week for the knee; ice after exercise, no running until the swelling is gone."),
    ("Work", "The release checklist: freeze the branch, run the migration on staging, announce downtime to users."),
    ("Home", "Call the plumber about the leaking kitchen tap and replace the smoke detector batteries."),
    ("Music", "Practice the Bach prelude slowly with a metronome at sixty, then record it on Sunday."),
    ("Photography", "Golden hour at the lighthouse is around eight; use the wide lens and a tripod for the long exposures."),
    ("Astronomy", "Jupiter and Saturn are visible after midnight in the south; the telescope needs collimation first."),
    ("Language", "Learn twenty Russian verbs of motion this week: идти, ходить, ехать, ездить and their prefixes."),
    ("Sailing", "Check the forecast for gusts above twenty knots; reef the mainsail early and keep the jib small."),
    ("Chess", "Study the Catalan opening: the fianchettoed bishop, pressure on the long diagonal, quiet development."),
    ("Baking", "Sourdough: feed the starter at night, autolyse for an hour, four sets of folds, cold proof overnight."),
]

IMAGE_TEXTS = [
    ["Настройки проекта", "Лимит запросов: 600 в минуту", "Ключ доступа истекает через 30 дней"],
    ["Project settings", "Rate limit: 600 requests per minute", "Access key expires in 30 days"],
    ["Кафе Ромашка", "Капучино 250 руб", "Сырники со сметаной 390 руб", "Итого 640 руб"],
    ["Meeting notes", "Decide the launch date for the mobile app", "Budget review on Friday"],
]

AUDIO_TEXTS = [
    ("en", "Remember to buy train tickets for Thursday morning and call the dentist about the appointment."),
    ("ru", "Не забыть купить подарок маме на день рождения и заказать торт в пекарне на углу."),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def write_note(path, title, body, extra=""):
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# {title}\n\n{body}\n{extra}")


def draw_image(path, lines, dark=False):
    bg, fg = ("#1e1e1e", "#e0e0e0") if dark else ("white", "black")
    args = ["convert", "-size", "1280x720", f"xc:{bg}", "-font", "DejaVu-Sans", "-pointsize", "30", "-fill", fg]
    for i, line in enumerate(lines):
        args += ["-annotate", f"+40+{80 + i * 60}", line]
    run(args + [path])


def make_corpus(root, cache):
    """Notes (ru/en), images (2 samples + 4 drawn) and recordings (1 sample + 2 spoken)."""
    os.makedirs(cache, exist_ok=True)
    for sub in ("notes", "images", "audio"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    n = 0
    for i, (title, body) in enumerate(RU_TOPICS + EN_TOPICS):
        write_note(os.path.join(root, "notes", f"note-{i:02d}.md"), title, body)
        n += 1
    for name in sorted(os.listdir(os.path.join(REPO, "samples/notes"))):
        shutil.copy(os.path.join(REPO, "samples/notes", name), os.path.join(root, "notes", name))
    for name in sorted(os.listdir(os.path.join(REPO, "samples/screenshots"))):
        shutil.copy(os.path.join(REPO, "samples/screenshots", name), os.path.join(root, "images", name))
    for i, lines in enumerate(IMAGE_TEXTS):
        cached = os.path.join(cache, f"shot-{i}.png")
        if not os.path.exists(cached):
            draw_image(cached, lines, dark=i % 2 == 1)
        shutil.copy(cached, os.path.join(root, "images", f"shot-{i}.png"))
    shutil.copy(os.path.join(REPO, "samples/voice/vectorization-ideas.mp3"), os.path.join(root, "audio"))
    for i, (lang, text) in enumerate(AUDIO_TEXTS):
        cached = os.path.join(cache, f"memo-{i}.wav")
        if not os.path.exists(cached):
            raw = os.path.join(cache, f"raw-{i}.wav")
            run(["espeak-ng", "-v", lang, "-s", "150", "-w", raw, text])
            run(["sox", raw, "-r", "16000", "-c", "1", cached, "pad", "0.5", "0.5"])
        shutil.copy(cached, os.path.join(root, "audio", f"memo-{i}.wav"))


def corpus_files(root):
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.realpath(os.path.join(d, name))
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).hexdigest()
    return out


def change_some(root, rnd, round_no):
    """Changes a few notes (new text), one image (a new line) and now and then a recording (new
    padding): the next run re-ingests changed files, removing old vectors and adding new ones."""
    notes = sorted(os.listdir(os.path.join(root, "notes")))
    changed = rnd.sample(notes, 5)
    for name in changed:
        with open(os.path.join(root, "notes", name), "a", encoding="utf-8") as f:
            f.write(f"\nДобавлено в раунде {round_no}: проверить ещё раз. Added in round {round_no}.\n")
    i = rnd.randrange(len(IMAGE_TEXTS))
    draw_image(os.path.join(root, "images", f"shot-{i}.png"), IMAGE_TEXTS[i] + [f"Round {round_no} / Раунд {round_no}"], dark=i % 2 == 1)
    if round_no % 3 == 1:
        memo = os.path.join(root, "audio", "memo-0.wav")
        run(["sox", memo, memo + ".tmp.wav", "pad", "0", "0.1"])
        os.replace(memo + ".tmp.wav", memo)
    return len(changed) + 1 + (round_no % 3 == 1)


# --- the binary and the server -----------------------------------------------------------------


def mnema(home, *args, check_rc=True, env=None, timeout=900):
    e = dict(os.environ, **(env or {}))
    e.pop("MNEMA_EMBEDDER", None)
    p = subprocess.run([BIN, "--home", home, "--models", MODELS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise Failure(f"mnema {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return p


def spawn_mnema(home, *args):
    return subprocess.Popen([BIN, "--home", home, "--models", MODELS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Server:
    def __init__(self, home, allow=()):
        args = [BIN, "--home", home, "--models", MODELS, "serve", "--addr", "127.0.0.1:0"]
        for a in allow:
            args += ["--allow-path", a]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode(errors="replace")
        m = re.search(r"http://([\d.]+:\d+)/", line)
        if not m:
            self.proc.wait()
            raise Failure(f"serve did not start: {line}{self.proc.stderr.read().decode(errors='replace')}")
        self.addr = m.group(1)
        # Keep draining stderr so the server never blocks on a full pipe.
        self.log = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))

    def request(self, method, path, body=None, headers=None, timeout=120):
        req = urllib.request.Request(f"http://{self.addr}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method, path, payload=None, headers=None):
        body = None
        h = dict(headers or {})
        if payload is not None:
            body = json.dumps(payload).encode()
            h["Content-Type"] = "application/json"
        st, b = self.request(method, path, body, h)
        try:
            return st, json.loads(b)
        except ValueError:
            return st, {"raw": b.decode(errors="replace")}

    def ingest(self, paths):
        st, v = self.json("POST", "/api/ingest", {"paths": paths})
        check(st == 202, f"POST /api/ingest: {st} {v}")
        return v["job"]

    def wait_job(self, job, timeout=900):
        t0 = time.time()
        while time.time() - t0 < timeout:
            st, v = self.json("GET", f"/api/jobs/{job}")
            check(st == 200, f"job {job}: {st} {v}")
            if v.get("done"):
                return v
            time.sleep(0.3)
        raise Failure(f"job {job} did not finish in {timeout} s")

    def search(self, q, mode, limit=10):
        qs = urllib.parse.urlencode({"q": q, "mode": mode, "limit": limit})
        return self.json("GET", f"/api/search?{qs}")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


# --- verification ------------------------------------------------------------------------------


def query_words(text, n=10):
    words = re.findall(r"\w+", text)
    return " ".join(words[:n])


def verify(home, root, server=None):
    """The store equals the corpus: every file once with its current content, integrity ok,
    index == SQLite, keyword and semantic self-recall 100%. Returns figures."""
    expected = corpus_files(root)
    db = sqlite3.connect(f"file:{os.path.join(home, 'mnema.db')}?mode=ro", uri=True, timeout=30)
    try:
        check(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "PRAGMA integrity_check failed")
        rows = db.execute("SELECT id, path, sha256, kind FROM items").fetchall()
        paths = [r[1] for r in rows]
        check(len(paths) == len(set(paths)), "an item path is stored twice")
        stored = {r[1]: r[2] for r in rows}
        missing = sorted(set(expected) - set(stored))
        extra = sorted(set(stored) - set(expected))
        check(not missing, f"{len(missing)} files not indexed: {missing[:5]}")
        check(not extra, f"{len(extra)} items for files that do not exist: {extra[:5]}")
        stale = [p for p, sha in expected.items() if stored[p] != sha]
        check(not stale, f"{len(stale)} items hold old content: {stale[:5]}")
        firsts = db.execute(
            "SELECT i.id, i.path, c.text FROM items i JOIN chunks c ON c.item_id = i.id WHERE c.seq = 0 AND c.vector IS NOT NULL"
        ).fetchall()
        novec = db.execute("SELECT count(*) FROM chunks WHERE vector IS NULL").fetchone()[0]
        check(novec == 0, f"{novec} chunks without a vector")
    finally:
        db.close()
    doc = json.loads(mnema(home, "--json", "doctor", check_rc=False).stdout or b"{}")
    idx = doc.get("index")
    check(isinstance(idx, dict), f"doctor reports no vector index check: {sorted(doc)}")
    check(idx.get("ok") is True, f"vector index differs from SQLite before repair: {idx}")
    own = server is None
    srv = server or Server(home)
    recall = {}
    try:
        for mode in ("keyword", "semantic"):
            found = 0
            for item_id, path, text in firsts:
                st, v = srv.search(query_words(text), mode)
                check(st == 200, f"search failed: {st} {v}")
                if any(h.get("path") == path for h in v.get("hits", [])):
                    found += 1
                else:
                    say(f"{mode} self-recall miss: {os.path.basename(path)} ({query_words(text)!r})")
            recall[mode] = (found, len(firsts))
            check(found == len(firsts), f"{mode} self-recall {found}/{len(firsts)}")
    finally:
        if own:
            srv.stop()
    return {"items": len(rows), "chunks_checked": len(firsts), "recall": recall}


# --- scenarios ---------------------------------------------------------------------------------


def fresh(work, name):
    root = os.path.join(work, name, "corpus")
    home = os.path.join(work, name, "home")
    shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    make_corpus(root, os.path.join(work, "cache"))
    return root, home


def kill_after_lines(p, k, rnd):
    """Kills `p` (kill -9) a random moment after its k-th line of JSON output; True if it was
    still running."""
    seen = 0
    while seen < k:
        line = p.stdout.readline()
        if not line:
            break
        seen += 1
    time.sleep(rnd.uniform(0, 1.5))
    alive = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.communicate()
    return alive


def crash_ingest(work, rounds, rnd):
    root, home = fresh(work, "crash-ingest")
    t0 = time.time()
    mnema(home, "ingest", root)
    clean = time.time() - t0
    verify(home, root)
    say(f"crash-ingest: clean ingest {clean:.1f} s")
    mid = 0
    for r in range(rounds):
        work_files = change_some(root, rnd, r)
        if r % 3 == 2:
            # From scratch now and then, so kills land in first-time ingest too.
            shutil.rmtree(home)
            work_files = len(corpus_files(root))
        # One JSON line per file (unchanged ones too): kills spread over the whole run.
        k = rnd.randrange(0, len(corpus_files(root)))
        p = spawn_mnema(home, "--json", "ingest", root)
        alive = kill_after_lines(p, k, rnd)
        mid += alive
        mnema(home, "ingest", root)
        f = verify(home, root)
        say(f"crash-ingest round {r + 1}/{rounds}: kill -9 {'mid-run' if alive else 'after exit'} after {k} files ({work_files} to redo), verified {f['items']} items")
    return {"rounds": rounds, "kills_mid_run": mid, "clean_ingest_s": round(clean, 1)}


def crash_serve(work, rounds, rnd):
    root, home = fresh(work, "crash-serve")
    srv = Server(home, allow=[root])
    t0 = time.time()
    srv.wait_job(srv.ingest([root]))
    clean = time.time() - t0
    verify(home, root, srv)
    srv.stop()
    say(f"crash-serve: clean API ingest {clean:.1f} s")
    mid = 0
    for r in range(rounds):
        work_files = change_some(root, rnd, r)
        if r % 3 == 2:
            shutil.rmtree(home)
            work_files = len(corpus_files(root))
        srv = Server(home, allow=[root])
        job = srv.ingest([root])
        k = rnd.randrange(0, len(corpus_files(root)))
        while True:
            st, v = srv.json("GET", f"/api/jobs/{job}")
            if v.get("done") or v.get("done_files", 0) >= k:
                break
            time.sleep(0.05)
        time.sleep(rnd.uniform(0, 1.5))
        st, v = srv.json("GET", f"/api/jobs/{job}")
        alive = not v.get("done")
        mid += alive
        srv.kill9()
        srv = Server(home, allow=[root])
        v = srv.wait_job(srv.ingest([root]))
        check(not v.get("error") and v.get("failed", 0) == 0, f"rerun job failed: {v.get('error')} {v.get('failed')}")
        try:
            f = verify(home, root, srv)
        finally:
            srv.stop()
        say(f"crash-serve round {r + 1}/{rounds}: kill -9 {'mid-job' if alive else 'after the job'} after {k} files ({work_files} to redo), verified {f['items']} items")
    return {"rounds": rounds, "kills_mid_job": mid, "clean_api_ingest_s": round(clean, 1)}


QUERIES = ["как приготовить борщ", "beet soup recipe", "идеи по векторизации", "rate limit", "лимит запросов",
           "train tickets", "подарок маме", "sourdough starter", "поезд в Казань", "налоговый вычет"]


def load(srv, stop, stats, modes=("hybrid", "semantic", "keyword")):
    rnd = random.Random()
    while not stop.is_set():
        q = rnd.choice(QUERIES)
        mode = rnd.choice(modes)
        t0 = time.time()
        try:
            st, _ = srv.search(q, mode)
        except Exception as e:  # connection errors count as errors
            st = f"exception {type(e).__name__}"
        with stats["lock"]:
            stats["requests"] += 1
            stats["latency"].append(time.time() - t0)
            if st != 200:
                stats["errors"].append(st)


def concurrency(work, rnd):
    root, home = fresh(work, "concurrency")
    # Three overlapping sets: two CLI ingests and one API job share the notes folder.
    srv = Server(home, allow=[root])
    stop = threading.Event()
    stats = {"lock": threading.Lock(), "requests": 0, "latency": [], "errors": []}
    clients = [threading.Thread(target=load, args=(srv, stop, stats)) for _ in range(8)]
    for c in clients:
        c.start()
    t0 = time.time()
    a = spawn_mnema(home, "--json", "ingest", os.path.join(root, "notes"), os.path.join(root, "images"))
    b = spawn_mnema(home, "--json", "ingest", os.path.join(root, "notes"), os.path.join(root, "audio"))
    job = srv.ingest([os.path.join(root, "notes"), os.path.join(root, "images")])
    outs = [a.communicate(), b.communicate()]
    jv = srv.wait_job(job)
    elapsed = time.time() - t0
    stop.set()
    for c in clients:
        c.join()
    try:
        for p, (out, err) in zip((a, b), outs):
            check(p.returncode == 0, f"a concurrent ingest exited {p.returncode}: {err.decode(errors='replace')[-1500:]}")
            failed = [l for l in out.decode().splitlines() if '"failed"' in l]
            check(not failed, f"files failed in a concurrent ingest: {failed[:3]}")
        check(not jv.get("error") and jv.get("failed", 0) == 0, f"API job failed: {jv.get('error')} {jv.get('failed')}")
        check(not stats["errors"], f"{len(stats['errors'])} search errors under load: {stats['errors'][:5]}")
        f = verify(home, root, srv)
        # Every mode agrees with the CLI (a separate process with its own index).
        for q in QUERIES[:5]:
            for mode in ("hybrid", "semantic", "keyword"):
                st, v = srv.search(q, mode, limit=5)
                cli = json.loads(mnema(home, "--json", "search", q, "--mode", mode, "--limit", "5").stdout)
                api_paths = [h["path"] for h in v["hits"]]
                cli_paths = [h["path"] for h in cli["hits"]]
                check(api_paths == cli_paths, f"{mode} {q!r}: API {api_paths} != CLI {cli_paths}")
    finally:
        srv.stop()
    lat = sorted(stats["latency"])
    return {
        "elapsed_s": round(elapsed, 1),
        "searches": stats["requests"],
        "search_errors": len(stats["errors"]),
        "search_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "search_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "items": f["items"],
    }


def soak(work, seconds, rnd):
    root, home = fresh(work, "soak")
    uploads_dir = os.path.join(work, "soak", "gen")
    os.makedirs(uploads_dir, exist_ok=True)
    mnema(home, "ingest", os.path.join(root, "notes"))
    srv = Server(home, allow=[root])
    stop = threading.Event()
    lock = threading.Lock()
    statuses = {}
    unexpected = []

    def count(kind, st, ok):
        with lock:
            statuses[f"{kind} {st}"] = statuses.get(f"{kind} {st}", 0) + 1
            if not ok:
                unexpected.append(f"{kind} {st}")

    def searcher():
        r = random.Random()
        while not stop.is_set():
            try:
                st, _ = srv.search(r.choice(QUERIES), r.choice(("hybrid", "semantic", "keyword")))
            except Exception as e:
                st = type(e).__name__
            count("search", st, st == 200)

    def poller():
        while not stop.is_set():
            try:
                st, _ = srv.json("GET", "/api/status")
            except Exception as e:
                st = type(e).__name__
            count("status", st, st == 200)
            time.sleep(1)

    def uploader():
        r = random.Random()
        n = 0
        while not stop.is_set():
            n += 1
            topic = r.choice(RU_TOPICS + EN_TOPICS)
            body = f"# {topic[0]} {n}\n\n{topic[1]}\nЗаметка номер {n}.\n".encode()
            try:
                st, _ = srv.request("POST", f"/api/upload?name=soak-{n % 50}.md", body, {"Content-Type": "application/octet-stream"})
            except Exception as e:
                st = type(e).__name__
            # 429: the job queue is full (an expected answer under load).
            count("upload", st, st in (202, 429))
            time.sleep(r.uniform(0.5, 2.0))

    def ranger():
        r = random.Random()
        while not stop.is_set():
            st, v = srv.json("GET", "/api/search?q=note&mode=keyword&limit=20")
            ids = [h["id"] for h in v.get("hits", [])] if st == 200 else []
            if not ids:
                time.sleep(0.5)
                continue
            a = r.randrange(0, 200)
            try:
                st, _ = srv.request("GET", f"/api/files/{r.choice(ids)}", headers={"Range": f"bytes={a}-{a + r.randrange(1, 4096)}"})
            except Exception as e:
                st = type(e).__name__
            # 416: a range past the end of a short note; 404: an upload replaced meanwhile.
            count("range", st, st in (206, 416, 404))

    threads = [threading.Thread(target=f) for f in [searcher] * 4 + [poller, uploader, ranger, ranger]]
    for t in threads:
        t.start()
    job = srv.ingest([os.path.join(root, "images"), os.path.join(root, "audio")])
    samples = []
    t0 = time.time()
    while time.time() - t0 < seconds:
        samples.append((time.time() - t0, srv.rss_kib() / 1024))
        time.sleep(5)
    stop.set()
    for t in threads:
        t.join()
    # The job may already be pruned (the server keeps the last 100 finished jobs, and the
    # uploads made many): then it has finished.
    st, v = srv.json("GET", f"/api/jobs/{job}")
    if st != 404:
        srv.wait_job(job)
    srv.stop()
    warm = [s for s in samples if s[0] >= seconds * 0.2]
    slope = 0.0
    if len(warm) >= 3:
        xs = [s[0] / 60 for s in warm]
        ys = [s[1] for s in warm]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
    check(not unexpected, f"unexpected answers in the soak: {sorted(set(unexpected))[:10]}")
    total = sum(statuses.values())
    return {
        "seconds": seconds,
        "requests": total,
        "statuses": statuses,
        "rss_mib_start": round(samples[0][1], 1) if samples else None,
        "rss_mib_peak": round(max(s[1] for s in samples), 1) if samples else None,
        "rss_mib_end": round(samples[-1][1], 1) if samples else None,
        "rss_slope_mib_per_min_after_warmup": round(slope, 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["crash-ingest", "crash-serve", "concurrency", "soak", "all"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--quick", action="store_true", help="3 crash rounds each, a 60 s soak")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--report", help="also write the JSON summary here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.seconds = min(a.rounds, 3), min(a.seconds, 60)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    check(os.access(BIN, os.X_OK), f"no mnema binary at {BIN} (build it, or set MNEMA_BIN)")
    work = tempfile.mkdtemp(prefix="mnema-reliability-")
    summary = {"seed": seed, "binary": BIN}
    t0 = time.time()
    try:
        todo = ["crash-ingest", "crash-serve", "concurrency", "soak"] if a.what == "all" else [a.what]
        for what in todo:
            t = time.time()
            if what == "crash-ingest":
                summary[what] = crash_ingest(work, a.rounds, rnd)
            elif what == "crash-serve":
                summary[what] = crash_serve(work, a.rounds, rnd)
            elif what == "concurrency":
                summary[what] = concurrency(work, rnd)
            else:
                summary[what] = soak(work, a.seconds, rnd)
            summary[what]["wall_s"] = round(time.time() - t, 1)
            say(f"{what}: ok ({time.time() - t:.0f} s)")
        summary["ok"] = True
    except Failure as e:
        summary["ok"] = False
        summary["failure"] = str(e)
        say(f"FAILED (seed {seed}; work dir {work}): {e}")
        a.keep = True
    summary["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(summary, ensure_ascii=False, indent=1)
    print(text)
    if a.report:
        with open(a.report, "w") as f:
            f.write(text)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
