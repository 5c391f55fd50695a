"""Generate synthetic exam-room recordings for the silence gate's checks.

Speech is espeak-ng reading everyday clinic sentences in several Korean voices; rooms
and noises are made with sox (``synth ... brownnoise`` low-passed for HVAC, ``pinknoise``
for room tone) and numpy (mixing at a signal-to-noise ratio, babble from six voices
talking over each other). Every recording is 16 kHz mono s16le WAV with a JSON sidecar
naming its turns (start_ms, end_ms, voice, text). Fixed seeds and ``sox -R``: the same
tool versions give the same files.

Sets (``--set``):

* ``test``: three short recordings for the suite (pauses in room tone, a far talker,
  HVAC noise at 20 dB SNR);
* ``full``: pauses, a far talker 12 dB under the near one, and HVAC, pink and babble
  noise at 30, 20, 10 and 5 dB SNR;
* ``cost``: 60 s each of room tone only (pink noise at -54 dBFS), a two-voice
  consultation (about 55% speech, HVAC noise at 20 dB SNR) and continuous speech.

Usage: ``python tools/make_rooms.py --set full OUT_DIR`` (needs espeak-ng and sox).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RATE = 16000
NEAR_VOICES = ("ko+m1", "ko+f2")
FAR_VOICE = "ko+m3"
BABBLE_VOICES = ("ko", "ko+m1", "ko+m3", "ko+f2", "ko+f4", "ko+m5")
NEAR_DBFS = -24.0  # speech level (RMS over the speech) of the near talker
FAR_DB = -12.0  # the far talker, against the near one
ROOM_TONE_DBFS = -54.0  # an empty, quiet room
SNRS = (30, 20, 10, 5)

#: Spoken in the sets checked for lost words, and their grammar: every word is in the
#: Korean small model's vocabulary, which recognises espeak speech stably only with a
#: grammar (free dictation of espeak varies from run to run by itself).
PHRASES = (
    "머리가 아픕니다", "엄마 도와줘", "너무 추워", "어깨 무릎 아파", "숨쉬기 힘들어",
    "머리가 아파", "너무 힘들어", "어깨 아파",
)
#: Spoken in the cost set (decoded without a grammar, as a room is).
SENTENCES = (
    "어디가 아프세요", "머리가 아픕니다", "언제부터 아프셨어요", "어제부터 열이 나요",
    "기침도 하세요", "네 기침이 심해요", "약은 드셨어요", "아직 안 먹었어요",
    "숨쉬기 힘들어요", "배가 아파요", "잠을 잘 못 자요", "식사는 잘 하세요",
    "물을 많이 드세요", "목이 아파요", "이쪽으로 누워 보세요", "숨을 크게 쉬세요",
    "혈압을 재 볼게요", "괜찮습니다", "다음 주에 다시 오세요", "감사합니다",
    "어깨가 아파요", "무릎이 아파요", "너무 추워요", "엄마 도와줘",
)


@dataclass(frozen=True)
class Turn:
    start_ms: int
    end_ms: int
    voice: str
    text: str


def speak(text: str, voice: str) -> np.ndarray:
    """``text`` read by ``voice`` (float samples at RATE, leading and trailing silence
    trimmed so that turn times are the speech's)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text],
                         capture_output=True, check=True).stdout
    raw = subprocess.run(["sox", "-D", "-R", "-V1", "-t", "wav", "-", "-t", "raw", "-r",
                          str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-"],
                         input=wav, capture_output=True, check=True).stdout
    x = np.frombuffer(raw, "<i2").astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > 300)
    return x[loud[0]:loud[-1] + 1] if loud.size else x


def noise(kind: str, seconds: float, seed: int) -> np.ndarray:
    """sox noise, unit RMS: ``brown`` low-passed at 400 Hz (HVAC), ``pink``."""
    effects = ["synth", f"{seconds:.3f}", f"{kind}noise"]
    if kind == "brown":
        effects += ["lowpass", "400"]
    raw = subprocess.run(["sox", "-D", "-R", "-V1", "-n", "-t", "raw", "-r", str(RATE), "-c",
                          "1", "-b", "16", "-e", "signed-integer", "-", *effects],
                         capture_output=True, check=True).stdout
    x = np.frombuffer(raw, "<i2").astype(np.float64)
    # sox -R repeats the same noise: roll it by the seed so that recordings differ
    x = np.roll(x, seed * 7919)
    return x / max(1e-9, float(np.sqrt(np.mean(x ** 2))))


def babble(seconds: float, seed: int) -> np.ndarray:
    """Six voices talking at once, continuously, unit RMS."""
    rng = random.Random(seed)
    n = int(seconds * RATE)
    out = np.zeros(n)
    for voice in BABBLE_VOICES:
        track, at = np.zeros(n), rng.randrange(RATE)
        while at < n:
            s = speak(rng.choice(SENTENCES), voice)
            s = s / np.sqrt(np.mean(s ** 2))
            take = min(len(s), n - at)
            track[at:at + take] += s[:take]
            at += take + rng.randrange(RATE // 10, RATE // 2)
        out += track
    return out / np.sqrt(np.mean(out ** 2))


def dbfs_gain(dbfs: float) -> float:
    return 32768 * 10 ** (dbfs / 20)


def conversation(rng: random.Random, seconds: float, *, far: bool, gaps: tuple[float, float],
                 long_every: int = 4, texts: tuple[str, ...] = PHRASES
                 ) -> tuple[np.ndarray, list[Turn]]:
    """Turns of two talkers (the second 12 dB down when ``far``), separated by gaps drawn
    from ``gaps`` (s) and, every ``long_every`` turns, a silence of 4 to 8 s."""
    n = int(seconds * RATE)
    out, turns = np.zeros(n), []
    at, k = int(rng.uniform(0.5, 2.0) * RATE), 0
    while True:
        voice = NEAR_VOICES[k % 2] if not far else (NEAR_VOICES[0], FAR_VOICE)[k % 2]
        text = rng.choice(texts)
        s = speak(text, voice)
        if at + len(s) > n - RATE:
            break
        level = NEAR_DBFS + (FAR_DB if voice == FAR_VOICE else 0.0)
        out[at:at + len(s)] = s / np.sqrt(np.mean(s ** 2)) * dbfs_gain(level)
        turns.append(Turn(1000 * at // RATE, 1000 * (at + len(s)) // RATE, voice, text))
        k += 1
        pause = rng.uniform(4.0, 8.0) if long_every and k % long_every == 0 else rng.uniform(*gaps)
        at += len(s) + int(pause * RATE)
    return out, turns


def mix(speech: np.ndarray, turns: list[Turn], noise_kind: str | None, snr_db: float | None,
        seed: int) -> np.ndarray:
    """``speech`` in room tone, plus ``noise_kind`` at ``snr_db`` against the speech's
    level (RMS over the turns)."""
    seconds = len(speech) / RATE
    out = speech + noise("pink", seconds, seed) * dbfs_gain(ROOM_TONE_DBFS)
    if noise_kind is not None and snr_db is not None:
        voiced = np.concatenate([speech[t.start_ms * RATE // 1000:t.end_ms * RATE // 1000]
                                 for t in turns])
        level = float(np.sqrt(np.mean(voiced ** 2)))
        shape = babble(seconds, seed) if noise_kind == "babble" else noise(noise_kind, seconds,
                                                                           seed)
        out = out + shape * level / 10 ** (snr_db / 20)
    return out


def write(out_dir: Path, name: str, samples: np.ndarray, turns: list[Turn],
          **about: object) -> None:
    pcm = np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()
    with wave.open(str(out_dir / f"{name}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    speech_ms = sum(t.end_ms - t.start_ms for t in turns)
    meta = {"name": name, "seconds": len(samples) / RATE, "speech_share":
            round(speech_ms / (1000 * len(samples) / RATE), 3), **about,
            "turns": [asdict(t) for t in turns]}
    (out_dir / f"{name}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))


def recording(out_dir: Path, name: str, seconds: float, seed: int, *, far: bool = False,
              noise_kind: str | None = None, snr_db: float | None = None,
              gaps: tuple[float, float] = (0.6, 3.0), long_every: int = 4,
              texts: tuple[str, ...] = PHRASES) -> None:
    rng = random.Random(seed)
    speech, turns = conversation(rng, seconds, far=far, gaps=gaps, long_every=long_every,
                                 texts=texts)
    write(out_dir, name, mix(speech, turns, noise_kind, snr_db, seed), turns,
          noise=noise_kind, snr_db=snr_db, far=far)


def make(kind: str, out_dir: Path) -> None:
    """Write the set ``kind`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "test":
        recording(out_dir, "pauses", 16, 1)
        recording(out_dir, "far", 16, 2, far=True)
        recording(out_dir, "brown-20", 16, 3, noise_kind="brown", snr_db=20)
    elif kind == "full":
        recording(out_dir, "pauses", 60, 11)
        recording(out_dir, "far", 60, 12, far=True)
        for i, (noise_kind, snr) in enumerate((k, s) for k in ("brown", "pink", "babble")
                                              for s in SNRS):
            recording(out_dir, f"{noise_kind}-{snr}", 40, 20 + i, far=i % 2 == 1,
                      noise_kind=noise_kind, snr_db=snr)
    elif kind == "cost":
        seconds = 60.0
        write(out_dir, "room-tone", noise("pink", seconds, 5) * dbfs_gain(ROOM_TONE_DBFS), [],
              noise="pink")
        recording(out_dir, "consultation", seconds, 6, far=True, noise_kind="brown",
                  snr_db=20, gaps=(0.3, 1.3), long_every=0, texts=SENTENCES)
        recording(out_dir, "continuous", seconds, 7, gaps=(0.15, 0.3), long_every=0,
                  texts=SENTENCES)
    else:
        raise ValueError(f"unknown set {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--set", dest="kind", choices=("test", "full", "cost"), default="test")
    args = parser.parse_args(argv)
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install espeak-ng sox", file=sys.stderr)
        return 2
    make(args.kind, args.out_dir)
    for path in sorted(args.out_dir.glob("*.json")):
        meta = json.loads(path.read_text())
        print(f"{meta['name']}: {meta['seconds']:.1f} s, {len(meta['turns'])} turns, "
              f"{100 * meta['speech_share']:.0f}% speech")
    return 0


if __name__ == "__main__":
    sys.exit(main())
