"""vosk-server's own clients, unmodified, against a real daemon on a port of its own.

The clients (``test.py``, ``test_words.py``, ``test_srt.py``, ``test_alternatives.py``
from alphacep/vosk-server, kept outside this tree in ``../shared/peers/vosk-server``) run
in subprocesses through a shim that only points their hard-coded
``ws://localhost:2700`` at the daemon's port. They send the speech fixture in 0.2 s
frames, each waiting for its one reply. The daemon is real (the Korean model, real
sockets, the journal); what the clients print is checked against the fixture's speech
(where its phrases are, measured from the samples) and against the daemon's journal.
"""

from __future__ import annotations

import array
import json
import logging
import math
import os
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import srt
import trio
from speaker_audio import SPK_MODEL
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from edge.net.server import Server
from helpers import FIXTURES, make_token

ROOT = Path(__file__).resolve().parent.parent
# The peers' own client programs are not carried in this tree (their licences are
# theirs): EDGE_PEERS_DIR names where they are (by default ../shared/peers beside the
# clone, as on our machines and in CI).
PEERS = Path(os.environ.get("EDGE_PEERS_DIR") or ROOT.parent / "shared" / "peers"
             ) / "vosk-server"
SPEECH = FIXTURES / "speech_ko.wav"
SPEECH_8K = FIXTURES / "speech_ko_8k.wav"

# Runs a client script as its own __main__, with websockets.connect pointed at the daemon.
SHIM = """
import runpy, sys, websockets
url, script, *args = sys.argv[1:]
connect = websockets.connect
def redirected(uri, *a, **k):
    assert uri == "ws://localhost:2700", uri
    return connect(url, *a, **k)
websockets.connect = redirected
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def vosk_url(server: Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.peer_ports['vosk_server']}{path}"


def need_peers() -> None:
    """Skip (with how to get them) where the peers' clients are absent: a stranger's
    clone. CI sets EDGE_REQUIRE_PEERS=1, and there their absence fails the test."""
    if (PEERS / "test.py").is_file():
        return
    message = (f"vosk-server's client programs are not in {PEERS}: copy the examples of "
               "https://github.com/alphacep/vosk-server (websocket/) there, or point "
               "EDGE_PEERS_DIR at a folder holding vosk-server/")
    if os.environ.get("EDGE_REQUIRE_PEERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def peer_clients() -> None:
    """For tests that run vosk-server's own clients (see :func:`need_peers`)."""
    need_peers()


async def run_client(script: str, url: str, wav: Path = SPEECH) -> str:
    """Run one of vosk-server's clients against ``url``; its standard output."""
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-c", SHIM, url, str(PEERS / script), str(wav)],
            cwd=PEERS, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    out: str = done.stdout.decode()
    return out


def replies(output: str) -> list[dict[str, Any]]:
    """What test.py-like clients print: one JSON reply per line."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def frames_sent(wav: Path) -> int:
    """How many audio frames the clients send (0.2 s each, the last one shorter)."""
    with wave.open(str(wav)) as w:
        return math.ceil(w.getnframes() / int(w.getframerate() * 0.2))


def speech_spans(wav: Path) -> list[tuple[float, float]]:
    """Where the fixture has sound (10 ms windows above -40 dBFS, gaps under 0.5 s
    bridged), in seconds: the phrases, found without a recogniser."""
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        samples = array.array("h", w.readframes(w.getnframes()))
    window = rate // 100
    loud = [max(abs(s) for s in samples[i:i + window]) > 327
            for i in range(0, len(samples) - window, window)]
    spans: list[list[float]] = []
    for i, on in enumerate(loud):
        if not on:
            continue
        t = i / 100
        if spans and t - spans[-1][1] < 0.5:
            spans[-1][1] = t + 0.01
        else:
            spans.append([t, t + 0.01])
    return [(a, b) for a, b in spans]


def inside(start: float, end: float, spans: list[tuple[float, float]], slack: float = 0.3
           ) -> int:
    """The index of the speech span holding [start, end] (give or take ``slack``)."""
    hits = [i for i, (a, b) in enumerate(spans) if a - slack <= start and end <= b + slack]
    assert len(hits) == 1, (start, end, spans)
    return hits[0]


async def journaled(server: Server, count: int = 1) -> list[Any]:
    """The vosk_server sessions in the journal once ``count`` of them have ended, with
    their finals (the session's end is written just after its close goes out)."""
    journal = server.journal
    assert journal is not None
    with trio.fail_after(10):
        while True:
            rows = [r for r in await journal.call(journal.journal.sessions)
                    if r.dialect == "vosk_server"]
            if len(rows) >= count and all(r.ended_at is not None for r in rows):
                break
            await trio.sleep(0.05)
    return [(row, await journal.call(journal.journal.finals, row.session_id))
            for row in rows]


async def vosk_daemon(start_server: Any, **vosk: Any) -> Server:
    server: Server = await start_server(vosk_server={"enabled": True, "port": 0, **vosk})
    return server


# --- the clients, unmodified -------------------------------------------------------------

@pytest.mark.parametrize("wav", [SPEECH, SPEECH_8K], ids=["16k", "8k"])
async def test_test_py_gets_one_reply_per_frame_and_the_finals(
    peer_clients: None,
    start_server: Any, phrases: dict[str, Any], wav: Path
) -> None:
    server = await vosk_daemon(start_server)
    out = replies(await run_client("test.py", vosk_url(server), wav))
    # Lockstep: a reply for every audio frame, and one for the eof.
    assert len(out) == frames_sent(wav) + 1
    assert all(set(r) in ({"partial"}, {"text"}, {"result", "text"}) for r in out), out
    finals = [r for r in out if r.get("text")]
    assert any(r.get("partial") for r in out)  # partials came in between
    # One final per spoken phrase, in order, each inside that phrase's sound.
    spans = speech_spans(SPEECH)
    assert len(finals) == len(phrases["utterances"]) == len(spans)
    for i, final in enumerate(finals):
        words = final["result"]
        assert final["text"] == " ".join(w["word"] for w in words)
        assert inside(words[0]["start"], words[-1]["end"], spans) == i
        assert all(0 < w["conf"] <= 1 and w["start"] < w["end"] for w in words)
    # Without a grammar the model mishears espeak's Korean, and how it mishears it
    # varies between recognisers sharing the model (docs/architecture.md, "Known
    # behaviour of shared Vosk models"); the texts are checked against the journal,
    # not against the phrases.
    # The daemon journaled exactly what the client printed, under where it came from.
    [(row, journal_finals)] = await journaled(server)
    assert [f["text"] for f in journal_finals] == [f["text"] for f in finals]
    assert (row.sub, row.end_reason, row.finals) == ("vosk_server@127.0.0.1", "end", 3)


async def test_with_a_speaker_model_finals_carry_spk(peer_clients: None,
        start_server: Any) -> None:
    server: Server = await start_server(vosk_server={"enabled": True, "port": 0},
                                        recognizer={"speaker_model": str(SPK_MODEL)})
    out = replies(await run_client("test.py", vosk_url(server)))
    finals = [r for r in out if r.get("text")]
    assert len(finals) == 3 and all(list(r) == ["result", "spk", "text"] for r in finals)
    sizes = {len(r["spk"]) for r in finals}
    assert len(sizes) == 1 and sizes.pop() > 1
    assert all(isinstance(x, float) and math.isfinite(x) for r in finals for x in r["spk"])
    assert len({tuple(r["spk"]) for r in finals}) == 3  # one vector per utterance


async def test_test_srt_py_prints_subtitles_at_the_phrases(peer_clients: None,
        start_server: Any) -> None:
    server = await vosk_daemon(start_server)
    subtitles = list(srt.parse(await run_client("test_srt.py", vosk_url(server))))
    spans = speech_spans(SPEECH)
    assert len(subtitles) == len(spans)  # every phrase has under 7 words: one line each
    for i, subtitle in enumerate(subtitles):
        assert inside(subtitle.start.total_seconds(), subtitle.end.total_seconds(),
                      spans) == i
        assert subtitle.content.strip()
    [(_, journal_finals)] = await journaled(server)
    assert [s.content.strip() for s in subtitles] == [f["text"] for f in journal_finals]


async def test_test_words_py_sends_a_grammar_and_turns_words_off(peer_clients: None,
        start_server: Any) -> None:
    server = await vosk_daemon(start_server)
    out = replies(await run_client("test_words.py", vosk_url(server)))
    assert len(out) == frames_sent(SPEECH) + 1
    # Its grammar is English digits, none of them in the Korean model's vocabulary: with
    # it, nothing is recognised (test.py hears three phrases in the same audio), and no
    # reply carries words.
    assert all(r in ({"partial": ""}, {"text": ""}) for r in out), out
    assert out[-1] == {"text": ""}
    [(row, journal_finals)] = await journaled(server)
    assert (row.end_reason, journal_finals) == ("end", [])


async def test_test_alternatives_py_gets_one_alternative_per_final(
    peer_clients: None,
    start_server: Any, phrases: dict[str, Any]
) -> None:
    server = await vosk_daemon(start_server)
    out = replies(await run_client("test_alternatives.py", vosk_url(server)))
    assert len(out) == frames_sent(SPEECH) + 1
    finals = [r["alternatives"] for r in out if "alternatives" in r]
    assert all(set(r) in ({"partial"}, {"alternatives"}) for r in out), out
    assert "alternatives" in out[-1]  # the eof's reply (the last phrase, still open)
    heard = [a for a in finals if a[0]["text"]]
    assert len(heard) == len(phrases["utterances"])
    spans = speech_spans(SPEECH)
    for i, alternatives in enumerate(heard):
        [best] = alternatives
        assert set(best) == {"confidence", "result", "text"} and 0 < best["confidence"] <= 1
        assert all(set(w) == {"start", "end", "word"} for w in best["result"])
        assert inside(best["result"][0]["start"], best["result"][-1]["end"], spans) == i
    [(_, journal_finals)] = await journaled(server)
    assert [a[0]["text"] for a in heard] == [f["text"] for f in journal_finals]


# --- what the clients rely on, tried with a client of our own -------------------------------

def pcm(wav: Path = SPEECH) -> tuple[bytes, int]:
    with wave.open(str(wav)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


async def recv(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(30):
        data: dict[str, Any] = json.loads(await ws.get_message())
    return data


async def lockstep(ws: WebSocketConnection, audio: bytes, chunk: int) -> list[dict[str, Any]]:
    """Send ``audio`` as vosk-server's clients do: a frame, then wait for its reply."""
    out = []
    for i in range(0, len(audio), chunk):
        await ws.send_message(audio[i:i + chunk])
        out.append(await recv(ws))
    return out


async def closed(ws: WebSocketConnection) -> tuple[int | None, str | None]:
    """Wait for the server's close: its code and reason (nothing else may come first)."""
    with pytest.raises(ConnectionClosed), trio.fail_after(30):
        await ws.get_message()
    assert ws.closed is not None
    return ws.closed.code, ws.closed.reason


async def test_a_grammar_without_words_gives_the_phrases_as_plain_text(
    start_server: Any, phrases: dict[str, Any]
) -> None:
    server = await vosk_daemon(start_server)
    audio, rate = pcm()
    async with open_websocket_url(vosk_url(server, "/any/path")) as ws:
        await ws.send_message(json.dumps({"config": {"phrase_list": phrases["grammar"],
                                                     "sample_rate": rate, "words": False}}))
        out = await lockstep(ws, audio, 6400)
        await ws.send_message('{"eof" : 1}')
        out.append(await recv(ws))
        assert (await closed(ws))[0] == 1000
    texts = [r["text"] for r in out if r.get("text")]
    assert len(texts) == 3 and all(set(r) <= {"partial", "text"} for r in out), out
    for text, phrase in zip(texts, phrases["utterances"], strict=True):
        assert text.endswith(phrase)


async def test_reset_finalises_and_the_stream_goes_on(start_server: Any) -> None:
    server = await vosk_daemon(start_server)
    audio, rate = pcm()
    half = int(rate * 1.2) * 2  # inside the first phrase
    async with open_websocket_url(vosk_url(server)) as ws:
        await ws.send_message(json.dumps({"config": {"sample_rate": rate}}))
        first = await lockstep(ws, audio[:half], 6400)
        await ws.send_message('{"reset" : 1}')
        cut = await recv(ws)
        await ws.send_message(b"")  # a frame without samples is answered too
        empty = await recv(ws)
        rest = await lockstep(ws, audio[half:], 6400)
        await ws.send_message('{"reset" : 1}')
        after = await recv(ws)
        await ws.send_message('{"eof" : 1}')
        last = await recv(ws)
        assert (await closed(ws))[0] == 1000
    assert all(set(r) == {"partial"} for r in first), first
    assert cut["text"] and cut["result"][-1]["end"] <= 1.2 + 0.05  # the phrase so far
    assert empty == {"partial": ""}
    # The device's pause rule (400 ms) closed the last phrase within the fixture's
    # 1.2 s tail, which Vosk's endpointer alone would not have: the second reset and
    # the eof find nothing left.
    assert after == {"text": ""} and last == {"text": ""}
    heard = [r for r in rest if r.get("text")]
    assert len(heard) >= 2
    assert min(r["result"][0]["start"] for r in heard) >= 1.2  # on the session's one clock


async def test_without_a_config_the_configured_rate_is_assumed(start_server: Any) -> None:
    server = await vosk_daemon(start_server, sample_rate=8000)
    audio, _ = pcm(SPEECH_8K)
    async with open_websocket_url(vosk_url(server)) as ws:
        out = await lockstep(ws, audio, 3200)
        await ws.send_message('{"eof" : 1}')
        out.append(await recv(ws))
    assert sum(1 for r in out if r.get("text")) == 3


@pytest.mark.parametrize(("frame", "code", "reason"), [
    ('{"config": {"model": "/usr/share/vosk/other"}}', 1008, "model_not_allowed"),
    ('{"config": {"sample_rate": "fast"}}', 1008, "invalid_config"),
    ("hello", 1003, "unsupported_message"),
    ('{"eof": ' + "1" * 5000 + "}", 1003, "unsupported_message"),
])
async def test_refused_messages_close_with_a_reason_and_spare_other_sessions(
    start_server: Any, frame: str, code: int, reason: str
) -> None:
    server = await vosk_daemon(start_server)
    audio, rate = pcm()
    good: list[dict[str, Any]] = []

    async def well_behaved() -> None:
        async with open_websocket_url(vosk_url(server)) as ws:
            await ws.send_message(json.dumps({"config": {"sample_rate": rate}}))
            good.extend(await lockstep(ws, audio, 6400))
            await ws.send_message('{"eof" : 1}')
            good.append(await recv(ws))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(well_behaved)
        async with open_websocket_url(vosk_url(server)) as ws:
            await ws.send_message(audio[:6400])
            assert set(await recv(ws)) == {"partial"}
            await ws.send_message(frame)
            said = await recv(ws)
            assert await closed(ws) == (code, reason)
        assert set(said) == {"error"}
    assert sum(1 for r in good if r.get("text")) == 3
    ends = sorted(row.end_reason for row, _ in await journaled(server, 2))
    assert ends == sorted(["end", reason])


async def test_oversized_frames_close_1009(start_server: Any) -> None:
    server = await start_server(vosk_server={"enabled": True, "port": 0},
                                server={"max_frame_bytes": 65536})
    async with open_websocket_url(vosk_url(server)) as ws:
        await ws.send_message(b"\x00" * 70000)
        assert (await closed(ws))[0] == 1009


async def test_a_graceful_stop_sends_the_last_final_then_1012(start_server: Any) -> None:
    server = await vosk_daemon(start_server)
    audio, rate = pcm()
    async with open_websocket_url(vosk_url(server)) as ws:
        await ws.send_message(json.dumps({"config": {"sample_rate": rate}}))
        await lockstep(ws, audio[:int(rate * 1.2) * 2], 6400)  # inside the first phrase
        server.shutdown()
        last, said = await recv(ws), await recv(ws)
        assert (await closed(ws))[0] == 1012
    assert last["text"] and set(said) == {"error"}


# --- admission ----------------------------------------------------------------------------

async def refused(url: str) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as info, trio.fail_after(10):
        async with open_websocket_url(url):
            pass
    return info.value


async def test_an_untrusted_network_is_refused_with_403_unless_it_brings_a_token(
    start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge")
    server = await vosk_daemon(start_server, trusted_networks="192.0.2.0/24")
    refusal = await refused(vosk_url(server))
    assert refusal.status_code == 403
    assert refusal.body is not None and b"vosk_server.trusted_networks" in refusal.body

    token = make_token(sub="dr-kim")
    audio, rate = pcm()
    async with open_websocket_url(vosk_url(server, f"/?token={token}")) as ws:
        await ws.send_message(json.dumps({"config": {"sample_rate": rate}}))
        out = await lockstep(ws, audio, 6400)
        await ws.send_message('{"eof" : 1}')
        out.append(await recv(ws))
    assert sum(1 for r in out if r.get("text")) == 3
    [(row, _)] = await journaled(server)
    assert row.sub == "dr-kim"

    for bad, status in [(make_token(scope="transcription:write"), 403),
                        (make_token(scope="transcription:read"), 403),
                        (make_token(ttl=-60), 401), ("not-a-jwt", 401)]:
        assert (await refused(vosk_url(server, f"/x?token={bad}"))).status_code == status
    daemon_log = "\n".join(r.getMessage() for r in caplog.records
                           if r.name.startswith("edge"))
    assert "vosk_server" in daemon_log  # the daemon's log was captured...
    assert token not in daemon_log and "token=" not in daemon_log  # ...without the tokens


async def test_the_port_serves_only_the_vosk_protocol(start_server: Any) -> None:
    server = await vosk_daemon(start_server)
    # A Live API client on the vosk port is spoken to in vosk-server's protocol.
    async with open_websocket_url(vosk_url(server, "/v1/stream")) as ws:
        await ws.send_message(json.dumps({"type": "end"}))
        assert set(await recv(ws)) == {"error"}
        assert (await closed(ws))[0] == 1003
