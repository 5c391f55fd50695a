"""/healthz and /metrics over real HTTP, on the same port as live WebSocket sessions."""

from __future__ import annotations

import json
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from edge.ops.health import ClockStatus, health
from helpers import FIXTURES, connect, http_get, make_token, receive_json, stream


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_and_metrics_alongside_a_live_session(start_server: Any) -> None:
    server = await start_server()
    status, headers, body = await http_get(server.port, "/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    idle = json.loads(body)
    assert idle["status"] == "ok" and idle["sessions"] == 0 and idle["model"]
    assert set(idle) >= {"version", "clock", "microphone", "relay", "max_sessions"}

    _, _, before_text = await http_get(server.port, "/metrics")
    before = samples(before_text.decode())
    assert before[("edge_sessions", ())] == 0

    token = make_token()
    async with connect(server, token) as ws:
        await receive_json(ws)
        await stream(ws, (FIXTURES / "speech_ko.wav").read_bytes())
        await ws.send_message(json.dumps({"type": "end"}))
        status, _, body = await http_get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["sessions"] == 1
        with trio.fail_after(30):
            while (await receive_json(ws))["type"] != "session_end":
                pass

    with trio.fail_after(5):
        while server.admission.current:
            await trio.sleep(0.05)
    status, headers, text = await http_get(server.port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    after = samples(text.decode())
    live = ("edge_sessions_total", (("dialect", "live"),))
    assert after[live] == before.get(live, 0) + 1
    assert after[("edge_audio_seconds_total", ())] > 6.5
    assert after[("edge_transcriptions_total", (("kind", "final"),))] >= 3
    assert after[("edge_final_latency_seconds_count", ())] >= 1
    assert after[("edge_partial_latency_seconds_count", ())] >= 1
    assert after[("edge_sessions_closed_total", (("reason", "end"),))] == 1
    assert 0 < after[("edge_real_time_factor", ())] < 5
    assert token.encode() not in text and "머리" not in text.decode()


async def test_refusals_are_counted_by_reason(start_server: Any) -> None:
    server = await start_server()
    from trio_websocket import ConnectionRejected

    try:
        async with connect(server, "garbage"):
            raise AssertionError("a garbage token was accepted")
    except ConnectionRejected as exc:
        assert exc.status_code == 401
    _, _, text = await http_get(server.port, "/metrics")
    assert samples(text.decode())[
        ("edge_sessions_refused_total", (("reason", "invalid_token"),))] == 1


async def test_unknown_paths_and_methods(start_server: Any) -> None:
    server = await start_server()
    status, _, body = await http_get(server.port, "/nope")
    assert status == 404 and json.loads(body)["code"] == "not_found"
    sock = await trio.open_tcp_stream("127.0.0.1", server.port)
    await sock.send_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    with trio.fail_after(5):
        reply = await sock.receive_some(4096)
    assert reply.startswith(b"HTTP/1.1 405")
    await sock.aclose()


def test_an_unset_clock_degrades_health() -> None:
    status, body = health(version="1", model="m", sessions=0, max_sessions=1,
                          clock=ClockStatus(synchronized=False, sane=False))
    assert status == 503 and body["status"] == "degraded"
    assert "clock" in body["reasons"][0]
    status, body = health(version="1", model="m", sessions=0, max_sessions=1,
                          clock=ClockStatus(synchronized=False, sane=True))
    assert status == 200 and body["notes"]


def test_every_problem_makes_the_status_degraded_not_only_the_code() -> None:
    clock = ClockStatus(synchronized=True, sane=True)
    status, body = health(version="1", model="m", sessions=0, max_sessions=1, clock=clock,
                          jwks={"url": "https://idp.example/jwks", "keys": 0})
    assert (status, body["status"]) == (503, "degraded")
    assert "signing keys" in body["reasons"][0]
    status, body = health(version="1", model="m", sessions=0, max_sessions=1, clock=clock,
                          memory={"held": False, "rss_bytes": 1, "budget_bytes": 1,
                                  "recognizer_bytes": 2},
                          stopping=True)
    assert (status, body["status"]) == (503, "stopping")


def test_result_filter_sends_finals_and_new_partials_and_counts_them() -> None:
    from edge.core.stats import ResultFilter, Stats

    stats = Stats()
    results = ResultFilter(stats, partials=True)
    admitted = [results.admit(final, text, 0.1) for final, text in [
        (False, "a"), (False, "a"), (False, "a b"), (True, "a b c"), (False, "a"),
        (True, "d")]]
    assert admitted == [True, False, True, True, True, True]
    assert (stats.partials, stats.finals) == (3, 2)
    assert stats.partial_latency.count == 3 and stats.final_latency.count == 2
    results.partials = False
    assert results.admit(False, "new", None) is False
    assert results.admit(True, "final", None) is True
    assert stats.final_latency.count == 2  # no latency known: not observed
