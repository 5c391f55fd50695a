#!/usr/bin/env bash
# Regenerate edge/asr/data/warmup.wav: the speech the daemon decodes after it starts to
# warm its recognisers (edge.asr.warmup). 16 kHz mono s16le, a few Korean phrases in one
# espeak-ng voice with a pause between them, so that every recogniser also meets Vosk's
# endpoint and a new utterance.
#
# The phrases and the voice are deliberately none of those in tests/fixtures (the
# speech_ko*.wav phrases, the speakers conversation): whether warming carries over to
# other speech is measured on speech the warm-up never saw (bench/warmup.py).
#
# Requires espeak-ng and sox (Debian: apt-get install espeak-ng sox). Fixed parameters,
# no dither: byte-identical output with the same tool versions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$HERE/../edge/asr/data/warmup.wav}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

PHRASES=(
    "물 좀 주세요"
    "잠을 못 자고 피곤해"
    "혈압 검사 결과"
    "당뇨 약을 매일 먹고"
    "내일 다시 오세요"
)
sox -n -r 16000 -c 1 -b 16 "$TMP/gap.wav" trim 0 0.8
parts=("$TMP/gap.wav")
i=0
for phrase in "${PHRASES[@]}"; do
    espeak-ng -v ko+f2 -p 50 -s 140 -w "$TMP/raw$i.wav" "$phrase"
    sox -D "$TMP/raw$i.wav" -r 16000 -c 1 -b 16 "$TMP/p$i.wav"
    parts+=("$TMP/p$i.wav" "$TMP/gap.wav")
    i=$((i + 1))
done
sox -D "${parts[@]}" -r 16000 -c 1 -b 16 "$OUT"
echo "wrote $OUT ($(soxi -D "$OUT") s)"
