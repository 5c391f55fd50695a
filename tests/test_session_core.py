"""The session core through the dialect seam, with the real model and an in-memory
channel: what a peer protocol can rely on (one reply per frame for lockstep clients,
a forced endpoint, a turn-silence endpointer, a dialect's own replies)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import trio

from edge.asr.vosk import LoadedModel
from edge.core.auth import SCOPE_READ, SCOPE_WRITE, Claims
from edge.core.config import Config
from edge.core.errors import ProtocolError
from edge.core.stats import Stats
from edge.net.channel import ChannelClosed
from edge.net.connection import SessionInfo
from edge.net.session import Session
from edge.protocols.events import (
    Audio,
    ClientEvent,
    Configure,
    CoreEvent,
    End,
    Ended,
    Flushed,
    ForceEndpoint,
    Progress,
    Reply,
    Result,
)
from helpers import FIXTURES, make_config

PCM = (FIXTURES / "speech_ko.wav").read_bytes()[44:]
FRAME = 3200  # 100 ms


class MemoryChannel:
    """Both ends of a channel in memory: the test is the client."""

    def __init__(self) -> None:
        self.to_server, self._from_client = trio.open_memory_channel[Any](64)
        self._to_client, self.from_server = trio.open_memory_channel[Any](1000)
        self.close_code: int | None = None

    async def receive(self) -> Any:
        try:
            return await self._from_client.receive()
        except trio.EndOfChannel:
            raise ChannelClosed(1000) from None

    async def send(self, frame: Any) -> None:
        await self._to_client.send(frame)

    async def close(self, code: int, reason: str) -> None:
        self.close_code = code
        await self._to_client.aclose()

    async def ping(self) -> None:
        return


@dataclass
class Plain:
    """A dialect for tests: binary frames are audio, a few words are commands, and each
    core event is one short text frame."""

    answers_every_frame: bool = False

    def parse(self, frame: str | bytes) -> ClientEvent:
        if isinstance(frame, bytes):
            return Audio(frame)
        if frame == "end":
            return End()
        if frame == "flush":
            return ForceEndpoint()
        if frame == "hello":
            return Reply(("hi",))
        if frame.startswith("turn:"):
            return Configure(max_turn_silence_ms=int(frame[5:]))
        raise ProtocolError("bad_message", "unknown command")

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        if isinstance(event, Result) and event.utterance.is_final:
            return [f"final:{event.utterance.text}"]
        if isinstance(event, Progress):
            return [f"progress:{event.partial}"]
        if isinstance(event, Flushed):
            return ["flushed"]
        if isinstance(event, Ended):
            return [f"ended:{event.reason}"]
        return []

    def close_code(self, ended: Ended) -> int:
        return 4000 + ended.close_code % 1000


async def run_session(model: LoadedModel, phrases: dict[str, Any], dialect: Plain,
                      client: Any, config: Config | None = None
                      ) -> tuple[list[str], int | None]:
    now = time.time()
    claims = Claims(sub="test", scopes=frozenset({SCOPE_READ, SCOPE_WRITE}),
                    user_type="doctor", issued_at=now, expires_at=now + 600)
    info = SessionInfo(session_id="s-1", claims=claims, model_name=model.name,
                       default_rate=16000)
    channel = MemoryChannel()
    session = Session(channel, info, config or make_config(), model.recognizer,
                      trio.CapacityLimiter(2), Stats(), dialect=dialect,
                      dialect_name="plain", phrases=tuple(phrases["grammar"]))
    received: list[str] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await client(channel, received)
            async for frame in channel.from_server:
                received.append(frame)
    return received, channel.close_code


async def frames_until_first_final(model: LoadedModel, phrases: dict[str, Any],
                                   commands: list[str], config: Config | None = None) -> int:
    """Lockstep 100 ms frames after ``commands`` until the first final (which must be
    the recording's first phrase); how many frames were sent."""
    sent = 0

    async def client(channel: MemoryChannel, received: list[str]) -> None:
        nonlocal sent
        for command in commands:
            await channel.to_server.send(command)
        for i in range(0, len(PCM), FRAME):
            await channel.to_server.send(PCM[i:i + FRAME])
            sent += 1
            while not (reply := await channel.from_server.receive()).startswith("progress:"):
                received.append(reply)
            if any(r.startswith("final:") for r in received):
                break
        await channel.to_server.send("end")

    received, _ = await run_session(model, phrases, Plain(answers_every_frame=True), client,
                                    config)
    assert next(r for r in received if r.startswith("final:")) == (
        f"final:{phrases['utterances'][0]}")
    return sent


async def test_a_lockstep_client_gets_one_reply_per_frame(
    model: LoadedModel, phrases: dict[str, Any]
) -> None:
    frames = [PCM[i:i + FRAME] for i in range(0, len(PCM), FRAME)]

    async def lockstep(channel: MemoryChannel, received: list[str]) -> None:
        for frame in frames:
            await channel.to_server.send(frame)
            while not (reply := await channel.from_server.receive()).startswith("progress:"):
                received.append(reply)
            received.append(reply)
        await channel.to_server.send("end")

    received, code = await run_session(model, phrases, Plain(answers_every_frame=True),
                                       lockstep)
    assert sum(r.startswith("progress:") for r in received) == len(frames)
    finals = [r.removeprefix("final:") for r in received if r.startswith("final:")]
    assert finals == phrases["utterances"]
    assert received[-1] == "ended:end" and code == 4000


async def test_a_forced_endpoint_finalises_now_and_the_stream_goes_on(
    model: LoadedModel, phrases: dict[str, Any]
) -> None:
    # The first phrase and a little of its silence: too little for Vosk's endpointer.
    cut = 2 * 16000 * 2

    async def client(channel: MemoryChannel, received: list[str]) -> None:
        for i in range(0, cut, FRAME):
            await channel.to_server.send(PCM[i:i + FRAME])
        await channel.to_server.send("hello")
        await channel.to_server.send("flush")
        while (reply := await channel.from_server.receive()) != "flushed":
            received.append(reply)
        received.append(reply)
        for i in range(cut, len(PCM), FRAME):
            await channel.to_server.send(PCM[i:i + FRAME])
        await channel.to_server.send("end")

    received, _ = await run_session(model, phrases, Plain(), client)
    first, second, third = phrases["utterances"]
    flushed = received.index("flushed")
    assert received[:flushed] == ["hi", f"final:{first}"]
    assert [r for r in received[flushed:] if r.startswith("final:")] == [
        f"final:{second}", f"final:{third}"]


async def test_max_turn_silence_ends_a_turn_before_the_endpointer(
    model: LoadedModel, phrases: dict[str, Any]
) -> None:
    endpointer = await frames_until_first_final(model, phrases, ["turn:0"])
    short_turns = await frames_until_first_final(model, phrases, ["turn:300"])
    # Vosk's endpointer waits for over a second of trailing silence; a pause of 300 ms
    # after the words ends the turn well before it.
    assert short_turns + 5 <= endpointer, (short_turns, endpointer)

