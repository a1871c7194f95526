"""Peer for the speech benchmark: faster-whisper on the same CTranslate2 Whisper base weights.

usage: fw_transcribe.py MODEL_DIR COMPUTE_TYPE LANGUAGE FILE...
Prints one JSON line per file: {"path", "text", "segments": [[start_ms, end_ms, text]], "seconds"}.
Greedy decoding (beam 1), no conditioning on previous text and Silero VAD on, as mnema does.
"""
import json, sys, time
from faster_whisper import WhisperModel

model_dir, compute, lang, *files = sys.argv[1:]
model = WhisperModel(model_dir, device="cpu", compute_type=compute, cpu_threads=2)
for f in files:
    t0 = time.perf_counter()
    segs, info = model.transcribe(f, language=None if lang == "auto" else lang, beam_size=1,
                                  condition_on_previous_text=False, vad_filter=True)
    segs = [(round(s.start * 1000), round(s.end * 1000), s.text.strip()) for s in segs]
    print(json.dumps({"path": f, "text": " ".join(s[2] for s in segs), "segments": segs,
                      "seconds": time.perf_counter() - t0}), flush=True)
