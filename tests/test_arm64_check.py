"""The pure parts of tools/arm64-check: reading `edge transcribe` output, the comparison
with its 100 ms tolerance, and carrying this machine's pip settings into the root. (The
check itself runs by hand: docs/operations.md, "Which Raspberry Pis".)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.arm64_check import (
    ROOT,
    Word,
    compare_transcripts,
    parse_transcript,
    translate_pip_config,
)


def final(seq: int, *words: tuple[str, int, int], is_final: bool = True) -> str:
    return json.dumps({
        "type": "transcription", "seq": seq, "is_final": is_final,
        "text": " ".join(w for w, _, _ in words),
        "words": [{"word": w, "start_ms": s, "end_ms": e, "confidence": 1.0}
                  for w, s, e in words]})


REFERENCE = [Word("머리", 450, 750), Word("다", 750, 960), Word("엄마", 3810, 4200)]


def test_parse_takes_the_words_of_finals_in_order() -> None:
    text = "\n".join([final(1, ("머리", 450, 750), ("다", 750, 960)),
                      final(2, ("엄", 3800, 3900), is_final=False),
                      "",
                      final(3, ("엄마", 3810, 4200))]) + "\n"
    assert parse_transcript(text) == REFERENCE


def test_parse_skips_a_clients_other_messages_when_asked() -> None:
    text = "\n".join(['{"type": "session_init", "session_id": "s"}',
                      final(1, ("머리", 450, 750), ("다", 750, 960)),
                      '{"type": "warning", "code": "x", "message": "y"}',
                      final(2, ("엄마", 3810, 4200)),
                      '{"type": "session_end", "session_id": "s", "reason": "done"}'])
    assert parse_transcript(text, other_messages=True) == REFERENCE
    with pytest.raises(ValueError, match="line 1: not a transcription message"):
        parse_transcript(text)
    with pytest.raises(ValueError, match="line 2: not a transcription message"):
        parse_transcript(final(1, ("a", 0, 1)) + "\n[1]", other_messages=True)


@pytest.mark.parametrize("line, reason", [
    ("{not json", "line 1: not JSON"),
    ('["transcription"]', "line 1: not a transcription message"),
    ('{"type": "error"}', "line 1: not a transcription message"),
    ('{"type": "transcription", "is_final": true}', "line 1: a final without a words list"),
    ('{"type": "transcription", "is_final": true, "words": [{"word": "a", "start_ms": 1.5,'
     ' "end_ms": 2}]}', "line 1: a word without word, start_ms, end_ms"),
    ('{"type": "transcription", "is_final": true, "words": [{"word": "a", "start_ms": true,'
     ' "end_ms": 2}]}', "line 1: a word without word, start_ms, end_ms"),
])
def test_parse_names_the_bad_line(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_transcript(line)


def test_times_within_100_ms_match_inclusive() -> None:
    shifted = [Word("머리", 550, 650), Word("다", 750, 1060), Word("엄마", 3710, 4200)]
    result = compare_transcripts(REFERENCE, shifted)
    assert result.matches and result.words == 3 and result.max_shift_ms == 100


def test_a_word_101_ms_off_is_named() -> None:
    shifted = [Word("머리", 450, 750), Word("다", 750, 960), Word("엄마", 3810, 4301)]
    result = compare_transcripts(REFERENCE, shifted)
    assert not result.matches and result.max_shift_ms == 101
    [problem] = result.problems
    assert problem.startswith("word 3 ('엄마') at 3810-4301 ms, reference 3810-4200 ms")


@pytest.mark.parametrize("other", [
    REFERENCE[:2],                                    # a word missing
    [*REFERENCE, Word("요", 4300, 4400)],             # one more
    [Word("머리", 450, 750), Word("도", 750, 960), Word("엄마", 3810, 4200)],  # another
    [REFERENCE[1], REFERENCE[0], REFERENCE[2]],      # the order
])
def test_different_words_never_match_whatever_the_times(other: list[Word]) -> None:
    result = compare_transcripts(REFERENCE, other)
    assert not result.matches and result.problems[0].startswith("the words differ")


def test_two_empty_transcripts_do_not_pass() -> None:
    assert not compare_transcripts([], []).matches


def test_pip_settings_become_variables_with_local_paths_under_host() -> None:
    listing = "\n".join([
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/gone/simple "
        "https://example.org/simple'",
        "global.find-links='/opt/wheels'",
        "global.timeout='60'",
        "install.timeout='90'",
        ":env:.default-timeout='180'",
        ":env:.find-links='/opt/wheels /srv/more'",
        "freeze.all='yes'",
        "not a setting",
    ])
    present = {"/etc/ssl/certs/ca-certificates.crt", "/opt/pypi/simple", "/opt/wheels",
               "/srv/more"}
    env, mounts = translate_pip_config(listing, present.__contains__)
    assert env == {
        "PIP_CERT": "/host/etc/ssl/certs/ca-certificates.crt",
        "PIP_EXTRA_INDEX_URL": "file:///host/opt/pypi/simple file:///opt/gone/simple "
                               "https://example.org/simple",
        "PIP_FIND_LINKS": "/host/opt/wheels /host/srv/more",   # the environment wins
        "PIP_TIMEOUT": "90",                                   # install. over global.
        "PIP_DEFAULT_TIMEOUT": "180",
    }
    # An index's parent: its pages link to ../../files/...
    assert mounts == ["/etc/ssl/certs/ca-certificates.crt", "/opt/pypi", "/opt/wheels",
                      "/srv/more"]


def test_the_tool_prints_its_options_and_refuses_an_unknown_arch() -> None:
    done = subprocess.run([str(ROOT / "tools" / "arm64-check"), "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and "--rebuild" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "arm64_check.py"),
                           "--arch", "armel"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr
