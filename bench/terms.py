"""The term matcher's cost per final, next to the cost of decoding that final.

Finals are made by the real recogniser (edge's VoskRecognizer on the Korean model, 100 ms
chunks as a session feeds it) from two recordings:

* ``conversation``: tests/fixtures/speakers/conversation.wav, 58 s, three voices, free
  dictation (the device's usual case; finals of 4-20 words, few terms);
* ``terms``: tests/fixtures/terms/terms_ko.wav with its phrase list (finals full of
  terms: the matcher's busiest case).

For each final: the CPU time its decoding took (the recogniser's thread CPU for every
chunk since the previous final, which includes the graph expansion of a fresh
recogniser: the first pass) and the same on a second pass over the same audio with the
same recogniser reset (warm, as the pool hands them out); then the matcher's time on
that final's words (``TermAnnotator``, as the recogniser calls it, best of ``--repeat``
runs of 20 calls) with the starter list (289 terms) and with the starter list plus
``--big`` generated Korean terms. Also what building each list costs (a reload).

Numbers only: no assertions. The machine may be shared: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tracemalloc
import wave
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine_info, print_table, write_json

from edge.asr.vosk import LoadedModel, VoskRecognizer, load_model
from edge.core.terms import FixedTerms, Term, TermAnnotator, TermMatcher, builtin_terms
from edge.protocols.events import Utterance

CONVERSATION = ROOT / "tests" / "fixtures" / "speakers" / "conversation.wav"
TERMS_WAV = ROOT / "tests" / "fixtures" / "terms" / "terms_ko.wav"
GRAMMAR = ROOT / "tests" / "fixtures" / "terms" / "grammar.json"
CHUNK = 3200  # 100 ms of 16 kHz s16


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def decode(recognizer: VoskRecognizer, pcm: bytes) -> list[tuple[Utterance, float]]:
    """Each final with the thread CPU seconds spent since the previous one."""
    out: list[tuple[Utterance, float]] = []
    spent = 0.0
    for i in range(0, len(pcm), CHUNK):
        t = time.thread_time()
        results = recognizer.accept(pcm[i:i + CHUNK])
        spent += time.thread_time() - t
        for u in results:
            if u.is_final:
                out.append((u, spent))
                spent = 0.0
    t = time.thread_time()
    last = recognizer.flush()
    spent += time.thread_time() - t
    if last is not None:
        out.append((last, spent))
    return out


def generated_terms(count: int, seed: int = 7) -> list[Term]:
    """Korean-looking terms of 2-5 syllables (one in five of two words), in the five
    categories: as many lookups as real ones, rarely a match."""
    rng = random.Random(seed)
    categories = ("symptom", "drug", "dose", "anatomy", "procedure")

    def word(n: int) -> str:
        return "".join(chr(0xAC00 + rng.randrange(11172)) for _ in range(n))

    terms = []
    for i in range(count):
        text = word(rng.randint(2, 5))
        if i % 5 == 0:
            text += " " + word(rng.randint(1, 3))
        terms.append(Term(text, "ko", categories[i % 5], f"X{i:05d}"))
    return terms


def match_seconds(annotate: TermAnnotator, final: Utterance, repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` runs of 20 calls."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(20):
            annotate(final)
        best = min(best, (time.perf_counter() - t) / 20)
    return best


def build(terms: list[Term]) -> tuple[TermMatcher, float, float]:
    """The matcher, the seconds building it took (best of three) and the memory it holds
    (MiB, traced in a separate build: tracing slows building down)."""
    seconds = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        matcher = TermMatcher(terms)
        seconds = min(seconds, time.perf_counter() - t)
    tracemalloc.start()
    traced = TermMatcher(terms)
    size = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del traced
    return matcher, seconds, size


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=10_000, help="generated terms added")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    starter = list(builtin_terms())
    lists: dict[str, tuple[TermMatcher, float, float]] = {
        f"starter ({len(starter)})": build(starter),
        f"starter + {args.big}": build(starter + generated_terms(args.big)),
    }
    print_table(["list", "terms", "build ms (a reload)", "memory MiB"], [
        [name, len(m), f"{s * 1000:.1f}", f"{mib:.2f}"] for name, (m, s, mib) in lists.items()
    ], "Term lists")

    model: LoadedModel = load_model(None)
    grammar = json.loads(GRAMMAR.read_text(encoding="utf-8"))["phrases"]
    runs: dict[str, Any] = {}
    rows = []
    for name, pcm, phrases in (("conversation", pcm_of(CONVERSATION), None),
                               ("terms", pcm_of(TERMS_WAV), grammar)):
        recognizer = VoskRecognizer(model, 16000, phrases)
        first = decode(recognizer, pcm)
        recognizer.reset()
        second = decode(recognizer, pcm)
        finals = [u for u, _ in second]
        cold = [s for _, s in first]
        warm = [s for _, s in second]
        match: dict[str, list[float]] = {}
        found: dict[str, int] = {}
        for list_name, (matcher, _, _) in lists.items():
            annotate = TermAnnotator(FixedTerms(matcher), "ko")
            match[list_name] = [match_seconds(annotate, u, args.repeat) for u in finals]
            found[list_name] = sum(len(annotate(u).terms) for u in finals)
        words = [len(u.words) for u in finals]
        runs[name] = {"finals": len(finals), "words": words, "decode_cold_s": cold,
                      "decode_warm_s": warm, "match_s": match, "terms_found": found}
        for list_name, seconds in match.items():
            rows.append([
                name, len(finals), f"{statistics.mean(words):.1f}",
                f"{statistics.median(cold) * 1000:.0f}", f"{statistics.median(warm) * 1000:.0f}",
                list_name, found[list_name],
                f"{statistics.median(seconds) * 1e6:.0f}", f"{pct(seconds, 0.95) * 1e6:.0f}",
                f"{statistics.median(seconds) / statistics.median(warm) * 100:.3f}%",
            ])
    print_table(["audio", "finals", "words/final", "decode ms/final (fresh)",
                 "decode ms/final (warm)", "list", "terms found", "match us p50",
                 "match us p95", "match/decode (p50, warm)"], rows,
                "Per final: decoding (recogniser thread CPU) and matching")
    write_json("terms", {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
                         "lists": {k: {"terms": len(m), "build_s": s, "memory_mib": mib}
                                   for k, (m, s, mib) in lists.items()},
                         "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
