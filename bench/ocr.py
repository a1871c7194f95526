"""OCR benchmark: mnema's engines (warm, one per core) against the tesseract CLI at its best
settings (-l rus+eng, OMP_THREAD_LIMIT=1, one process per image), same images, same run.

Images are made here with ImageMagick: 1280x720 screenshot-like pages of 8 lines in
DejaVu Sans / Liberation Sans / Liberation Serif / DejaVu Sans Mono, 16-40 px, light and
dark themes, Russian, English and mixed lines. Figures: images/s (wall, model load
included for mnema), median seconds per image for the CLI, CER and WER against the text
drawn. mnema is also run with its preprocessing steps switched off one by one.
"""
import json, os, random, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from textmetrics import lev

mnema, models = sys.argv[1:3]
n_images = int(os.environ.get("MNEMA_BENCH_IMAGES", "48"))
work = os.environ.get("MNEMA_BENCH_DIR") or tempfile.mkdtemp(prefix="mnema-ocr-")
os.makedirs(work, exist_ok=True)
rnd = random.Random(7)
RU = ["Подписка стоит 299 рублей в месяц", "Отменить подписку можно в настройках", "Идеи по векторизации заметок",
      "Погода на завтра: солнечно, до 21 градуса", "Встреча перенесена на четверг", "Память модели и бюджет",
      "Сохранить изменения перед выходом?", "Новое сообщение от Анны Петровой", "Поиск по смыслу и по словам",
      "Загрузка завершена: 42 файла", "Настройки конфиденциальности", "Напомнить через 15 минут"]
EN = ["Vector index: HNSW, 384 dimensions", "Memory budget is 1 GiB", "Meeting moved to Thursday at 3 pm",
      "Download complete: 42 files", "Save changes before closing?", "New message from Anna Petrova",
      "Search by meaning and by words", "Privacy settings", "Remind me in 15 minutes", "Battery 87%, charging",
      "Terminal: cargo build --release", "Weather tomorrow: sunny, 21 degrees"]
FONTS = ["DejaVu-Sans", "Liberation-Sans", "Liberation-Serif", "DejaVu-Sans-Mono"]

images = []
for i in range(n_images):
    dark = i % 2 == 1
    lang = ["ru", "en", "mixed"][i % 3]
    size = [16, 20, 24, 28, 32, 40][i % 6]
    font = FONTS[i % len(FONTS)]
    lines = []
    for k in range(8):
        pool = RU if lang == "ru" or (lang == "mixed" and k % 2 == 0) else EN
        lines.append(rnd.choice(pool))
    path = os.path.join(work, f"shot{i:02d}.png")
    if not os.path.exists(path):
        bg, fg = ("#1e1e1e", "#dcdcdc") if dark else ("white", "#111111")
        cmd = ["convert", "-size", "1280x720", f"xc:{bg}", "-font", font, "-pointsize", str(size), "-fill", fg]
        y = 20 + size
        for l in lines:
            cmd += ["-annotate", f"+{30 + (k * 7) % 40}+{y}", l]
            y += int(size * 2.0)
        subprocess.run(cmd + [path], check=True)
    images.append((path, "\n".join(lines), lang))
# Small crops (a toolbar, a notification): 600x160, three lines of 13-16 px text, where
# enlarging before OCR may pay.
for i in range(n_images // 4):
    dark = i % 2 == 0
    size = [13, 14, 15, 16][i % 4]
    lines = [rnd.choice(RU), rnd.choice(EN), rnd.choice(RU if i % 2 else EN)]
    path = os.path.join(work, f"small{i:02d}.png")
    if not os.path.exists(path):
        bg, fg = ("#202124", "#e8eaed") if dark else ("#f5f5f5", "#202020")
        cmd = ["convert", "-size", "600x160", f"xc:{bg}", "-font", FONTS[i % 2], "-pointsize", str(size), "-fill", fg]
        for k, l in enumerate(lines):
            cmd += ["-annotate", f"+12+{30 + k * 40}", l]
        subprocess.run(cmd + [path], check=True)
    images.append((path, "\n".join(lines), "small"))

def rates(got, truth):
    g, t = " ".join(got.split()), " ".join(truth.split())
    return lev(g, t), len(t), lev(g.split(), t.split()), len(t.split())

def summary(name, texts, wall, per_image=None, only=None):
    sel = [(texts.get(p, ""), t) for p, t, l in images if only is None or l == only]
    r = [rates(g, t) for g, t in sel]
    cer = sum(x[0] for x in r) / sum(x[1] for x in r)
    wer = sum(x[2] for x in r) / sum(x[3] for x in r)
    med = f"{per_image:8.3f}" if per_image is not None else f"{wall / len(images):8.3f}"
    if only is not None:
        print(f"{name:<62} {'':>9} {'':>8} {cer:7.4f} {wer:7.4f}", flush=True)
        return 0
    print(f"{name:<62} {len(images) / wall:9.2f} {med} {cer:7.4f} {wer:7.4f}", flush=True)
    return len(images) / wall

print(f"{len(images)} images in {work}")
print(f"{'engine':<62} {'images/s':>9} {'s/image':>8} {'CER':>7} {'WER':>7}")
# tesseract CLI, one process per image, sequential.
env = dict(os.environ, OMP_THREAD_LIMIT="1")


def run_cli(extra=()):
    texts, times = {}, []
    t0 = time.perf_counter()
    for p, _, _ in images:
        t1 = time.perf_counter()
        out = subprocess.run(["tesseract", p, "stdout", "-l", "rus+eng", *extra], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t1)
        texts[p] = "\n".join(l for l in out.stdout.splitlines() if l.strip())
    return texts, time.perf_counter() - t0, statistics.median(times)


def run_mnema(engine, extra_env=None):
    e = dict(os.environ, **(extra_env or {}))
    t0 = time.perf_counter()
    out = subprocess.run([mnema, "--models", models, "--json", "ocr", "--engine", engine, *[p for p, _, _ in images]], capture_output=True, text=True, env=e)
    wall = time.perf_counter() - t0
    texts = {}
    for l in out.stdout.splitlines():
        if l.startswith("{"):
            v = json.loads(l)
            texts[v["path"]] = v["text"]
    return texts, wall

# The machine is shared and noisy: the CLI and mnema's default run alternate `repeat` times
# and each side keeps its fastest pass (the texts are the same every pass).
repeat = int(os.environ.get("MNEMA_BENCH_REPEAT", "3"))
cli_runs, fast_runs = [], []
for _ in range(repeat):
    cli_runs.append(run_cli())
    fast_runs.append(run_mnema("tesseract"))
cli_texts, cli_wall, cli_median = min(cli_runs, key=lambda r: r[1])
cli = summary(f"tesseract CLI (rus+eng, OMP_THREAD_LIMIT=1, best of {repeat})", cli_texts, cli_wall, cli_median)
texts, wall = min(fast_runs, key=lambda r: r[1])
fast = summary(f"mnema tesseract (warm, 2 workers, preprocessing, best of {repeat})", texts, wall)
print(f"  (all passes, images/s: CLI {', '.join(f'{len(images) / r[1]:.2f}' for r in cli_runs)}; mnema {', '.join(f'{len(images) / r[1]:.2f}' for r in fast_runs)})", flush=True)
# For reference: the CLI reading each page as one block, as mnema's engine does.
t, w, m = run_cli(["--psm", "6"])
summary("tesseract CLI --psm 6 (one pass)", t, w, m)
runs = {"auto": (texts, wall)}
for mode in ["none", "invert", "upscale"]:
    t, w = run_mnema("tesseract", {"MNEMA_OCR_PREPROCESS": mode})
    runs[mode] = (t, w)
    summary(f"mnema tesseract, preprocessing={mode}", t, w)
t, w = run_mnema("paddle-ocr")
summary("mnema paddle-ocr (all images)", t, w)
summary("mnema paddle-ocr (English images only)", t, w, only="en")
summary("mnema tesseract (English images only)", texts, wall, only="en")
summary("tesseract CLI (small images only)", cli_texts, 1e9, only="small")
for mode, (t, w) in runs.items():
    summary(f"mnema tesseract, preprocessing={mode} (small images only)", t, w, only="small")
print(f"throughput vs the CLI: {fast / cli:.1f}x")
