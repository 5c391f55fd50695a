"""Audio framing: WAV headers, PCM decoding and downmix, level monitoring."""

from __future__ import annotations

import io
import math
import struct
import wave

import numpy as np
import pytest

from edge.audio.frames import (
    AudioFormat,
    FormatNotice,
    LevelMeter,
    PcmDecoder,
    frame_energies,
    is_wav,
    level_dbfs,
    parse_wav_header,
)
from edge.core.errors import AudioFormatError, ProtocolError

PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def wave_file(frames: bytes, *, rate: int = 16000, channels: int = 1,
              width: int = 2) -> bytes:
    """A complete WAV file written by the standard library."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def chunk(chunk_id: bytes, body: bytes, size: int | None = None) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return chunk_id + struct.pack("<I", len(body) if size is None else size) + body + pad


def fmt_body(*, tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def extensible_body(*, sub_tag: int = 1, channels: int = 2, rate: int = 48000,
                    bits: int = 16) -> bytes:
    base = fmt_body(tag=0xFFFE, channels=channels, rate=rate, bits=bits)
    return base + struct.pack("<HHI", 22, bits, 0x3) + struct.pack("<H", sub_tag) + \
        PCM_GUID_TAIL


def riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


def wav(data: bytes = b"", *, data_size: int | None = None, **fmt: int) -> bytes:
    return riff(chunk(b"fmt ", fmt_body(**fmt)), chunk(b"data", data, data_size))


def s16(values: list[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def sine(seconds: float, rate: int = 16000, amplitude: float = 32767.0,
         freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


# --- parse_wav_header ------------------------------------------------------------------

def test_is_wav() -> None:
    assert is_wav(wav())
    assert not is_wav(b"RIFF\x00\x00\x00\x00AVI ")
    assert not is_wav(b"\x00" * 44)
    assert not is_wav(b"RIFF")


def test_wave_module_mono() -> None:
    audio = s16(list(range(100)))
    data = wave_file(audio, rate=16000)
    header = parse_wav_header(data)
    assert header.format == AudioFormat(sample_rate=16000, channels=1)
    assert header.data_offset == 44
    assert header.data_size == len(audio)
    assert data[header.data_offset:] == audio


def test_wave_module_stereo() -> None:
    audio = s16([1, -1] * 50)
    data = wave_file(audio, rate=44100, channels=2)
    header = parse_wav_header(data)
    assert header.format == AudioFormat(sample_rate=44100, channels=2)
    assert header.format.bytes_per_frame == 4
    assert header.data_size == 200
    assert data[header.data_offset:] == audio


def test_header_only_is_enough() -> None:
    data = wave_file(s16([0] * 10))
    header = parse_wav_header(data[:44])
    assert header.data_offset == 44
    assert header.data_size == 20


def test_struct_header() -> None:
    header = parse_wav_header(wav(s16([1, 2, 3]), rate=8000))
    assert header.format == AudioFormat(8000, 1)
    assert header.data_offset == 44
    assert header.data_size == 6


def test_extensible_with_pcm_subformat() -> None:
    data = riff(chunk(b"fmt ", extensible_body(channels=2, rate=48000)),
                chunk(b"data", s16([0] * 8)))
    header = parse_wav_header(data)
    assert header.format == AudioFormat(48000, 2)
    assert header.data_offset == 12 + 8 + 40 + 8
    assert header.data_size == 16


def test_extensible_with_float_subformat_is_refused() -> None:
    data = riff(chunk(b"fmt ", extensible_body(sub_tag=3, bits=16)), chunk(b"data", b""))
    with pytest.raises(AudioFormatError):
        parse_wav_header(data)


def test_list_chunk_before_data() -> None:
    info = chunk(b"LIST", b"INFOISFT" + struct.pack("<I", 5) + b"edge\x00")
    odd = chunk(b"junk", b"abc")  # odd-sized chunks are padded to an even length
    data = riff(chunk(b"fmt ", fmt_body(rate=22050)), info, odd, chunk(b"data", s16([7, 8])))
    header = parse_wav_header(data)
    assert header.format == AudioFormat(22050, 1)
    assert data[header.data_offset:] == s16([7, 8])
    assert header.data_size == 4


def test_fmt_chunk_with_cbsize() -> None:
    data = riff(chunk(b"fmt ", fmt_body() + b"\x00\x00"), chunk(b"data", s16([5])))
    header = parse_wav_header(data)
    assert header.data_offset == 12 + 8 + 18 + 8
    assert data[header.data_offset:] == s16([5])


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0])
def test_streaming_size_is_unknown(size: int) -> None:
    data = riff(chunk(b"fmt ", fmt_body()), b"data" + struct.pack("<I", size),
                size=0xFFFFFFFF)
    header = parse_wav_header(data)
    assert header.data_size is None
    assert header.data_offset == len(data)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (wave_file(b"\x80" * 10, width=1), "8-bit"),
        (wave_file(b"\x00" * 30, width=3), "24-bit"),
        (wav(tag=3, bits=32), "0x3"),
        (wav(tag=6, bits=8), "0x6"),  # A-law
        (wav(bits=32), "32-bit"),
        (wav(channels=0), "0 channels"),
        (wav(channels=9), "9 channels"),
        (wav(rate=4000), "4000"),
        (wav(rate=384000), "384000"),
        (riff(chunk(b"data", s16([1])), chunk(b"fmt ", fmt_body())), "before"),
        (wav()[:30], "truncated"),
        (wav()[:40], "incomplete"),
        (riff(chunk(b"fmt ", fmt_body())), "incomplete"),
        (riff(chunk(b"fmt ", fmt_body()[:14])), "truncated"),
        (b"RIFF\x00\x00\x00\x00WAVE", "incomplete"),
        (b"\x00" * 64, "RIFF"),
    ],
)
def test_refusals(data: bytes, fragment: str) -> None:
    with pytest.raises(AudioFormatError) as info:
        parse_wav_header(data)
    assert fragment in str(info.value)
    assert info.value.code == "unsupported_audio"
    assert info.value.close_code == 1003
    assert isinstance(info.value, ProtocolError)


def test_audio_format_duration() -> None:
    assert AudioFormat(16000).duration_ms(32000) == 1000.0
    assert AudioFormat(8000, 2).duration_ms(3200) == 100.0


# --- PcmDecoder ---------------------------------------------------------------------------

def test_raw_uses_default_rate() -> None:
    d = PcmDecoder(16000)
    pcm = s16([1, 2, 3, 4])
    out, notices = d.feed(pcm)
    assert out == pcm
    assert notices == []
    assert d.format == AudioFormat(16000, 1)


def test_raw_uses_declared_rate() -> None:
    d = PcmDecoder(16000, declared_rate=8000)
    out, notices = d.feed(s16([1, 2]))
    assert out == s16([1, 2])
    assert notices == []
    assert d.format == AudioFormat(8000, 1)


def test_format_unknown_before_first_frame() -> None:
    assert PcmDecoder(16000).format is None


def test_wav_first_frame_sets_format() -> None:
    audio = s16(list(range(-50, 50)))
    d = PcmDecoder(16000)
    out, notices = d.feed(wave_file(audio, rate=22050))
    assert d.format == AudioFormat(22050, 1)
    assert out == audio
    assert notices == []


def test_wav_rate_matching_declared_rate_gives_no_notice() -> None:
    d = PcmDecoder(16000, declared_rate=8000)
    _, notices = d.feed(wave_file(s16([0] * 4), rate=8000))
    assert notices == []


def test_sample_rate_mismatch_notice() -> None:
    d = PcmDecoder(16000, declared_rate=8000)
    out, notices = d.feed(wave_file(s16([1, 2, 3]), rate=44100))
    assert d.format == AudioFormat(44100, 1)
    assert out == s16([1, 2, 3])
    assert [n.code for n in notices] == ["sample_rate_mismatch"]
    assert "8000" in notices[0].message
    assert "44100" in notices[0].message


def test_stereo_downmix() -> None:
    left = np.array([100, -100, 32767, -32768, 1, -1, 0, 3], dtype=np.int64)
    right = np.array([300, 100, 32767, -32768, 2, -2, 0, -3], dtype=np.int64)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    d = PcmDecoder(16000)
    out, notices = d.feed(wave_file(s16(interleaved), rate=48000, channels=2))
    assert d.format == AudioFormat(48000, 2)
    assert [n.code for n in notices] == ["audio_format"]
    assert "2-channel" in notices[0].message
    mono = np.frombuffer(out, dtype="<i2")
    assert len(mono) == len(left)
    assert np.all(np.abs(mono - (left + right) / 2) <= 0.5)
    assert list(mono[:4]) == [200, 0, 32767, -32768]


def test_stereo_with_rate_mismatch_gives_both_notices() -> None:
    d = PcmDecoder(16000, declared_rate=16000)
    _, notices = d.feed(wave_file(s16([0, 0]), rate=44100, channels=2))
    assert sorted(n.code for n in notices) == ["audio_format", "sample_rate_mismatch"]
    assert all(isinstance(n, FormatNotice) for n in notices)


def test_stereo_odd_chunks_carry_over() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(-20000, 20000, size=(301, 2))
    header = wave_file(b"", rate=16000, channels=2)
    # A streaming header (size unknown) so that every chunk is audio.
    header = header[:40] + struct.pack("<I", 0xFFFFFFFF)
    d = PcmDecoder(16000)
    out, _ = d.feed(header)
    assert out == b""
    body = s16(frames.reshape(-1))
    pieces = []
    for start in range(0, len(body), 7):
        piece, notices = d.feed(body[start:start + 7])
        assert notices == []
        assert len(piece) % 2 == 0
        pieces.append(piece)
    mono = np.frombuffer(b"".join(pieces), dtype="<i2")
    assert len(mono) == 301
    assert np.all(np.abs(mono - frames.mean(axis=1)) <= 0.5)


@pytest.mark.parametrize("step", [1, 3, 5, 1001])
def test_odd_length_chunks_are_carried_over(step: int) -> None:
    pcm = s16(np.arange(-1000, 1000, 3))
    d = PcmDecoder(16000)
    out = []
    for start in range(0, len(pcm), step):
        piece, _ = d.feed(pcm[start:start + step])
        assert len(piece) % 2 == 0
        out.append(piece)
    assert b"".join(out) == pcm


def test_second_wav_header_with_same_format_is_stripped() -> None:
    first, second = s16([1, 2, 3]), s16([4, 5, 6, 7])
    d = PcmDecoder(16000)
    out1, _ = d.feed(wave_file(first, rate=16000))
    out2, notices = d.feed(wave_file(second, rate=16000))
    assert out1 + out2 == first + second
    assert notices == []


def test_raw_stream_then_matching_wav_header_is_stripped() -> None:
    d = PcmDecoder(16000)
    out1, _ = d.feed(s16([1, 2]))
    out2, _ = d.feed(wave_file(s16([3, 4]), rate=16000))
    assert out1 + out2 == s16([1, 2, 3, 4])


@pytest.mark.parametrize("second", [{"rate": 8000}, {"channels": 2}])
def test_second_wav_header_with_other_format_is_refused(second: dict[str, int]) -> None:
    d = PcmDecoder(16000)
    d.feed(wave_file(s16([1, 2]), rate=16000))
    with pytest.raises(AudioFormatError, match="changed"):
        d.feed(wave_file(s16([1, 2]), **second))


def test_unsupported_wav_first_frame_is_refused() -> None:
    d = PcmDecoder(16000)
    with pytest.raises(AudioFormatError):
        d.feed(wave_file(b"\x80" * 8, width=1))


def test_bytes_after_data_chunk_are_dropped() -> None:
    audio = s16([10, 20, 30, 40])
    trailer = chunk(b"LIST", b"INFOIART" + struct.pack("<I", 4) + b"abc\x00")
    d = PcmDecoder(16000)
    out1, _ = d.feed(wave_file(audio)[:44 + 4])
    out2, _ = d.feed(wave_file(audio)[44 + 4:] + trailer)
    out3, _ = d.feed(b"more trailing metadata")
    assert out1 + out2 + out3 == audio


def test_trailing_chunk_in_same_frame_is_dropped() -> None:
    audio = s16([10, 20, 30])
    data = wave_file(audio) + chunk(b"id3 ", b"\x01" * 10)
    out, _ = PcmDecoder(16000).feed(data)
    assert out == audio


def test_streaming_wav_passes_everything() -> None:
    header = riff(chunk(b"fmt ", fmt_body()), b"data" + struct.pack("<I", 0xFFFFFFFF),
                  size=0xFFFFFFFF)
    d = PcmDecoder(16000)
    out1, _ = d.feed(header + s16([1, 2]))
    out2, _ = d.feed(s16([3, 4] * 100))
    assert out1 + out2 == s16([1, 2] + [3, 4] * 100)


def test_a_chunks_frame_energies_are_read_once() -> None:
    samples = np.arange(-1600, 1605, dtype="<i2")  # 20 frames of 160 and 5 samples more
    chunk = samples.tobytes()
    energies = frame_energies(chunk, 160)
    direct = (samples[:3200].astype(np.float64).reshape(-1, 160) ** 2).sum(axis=1)
    assert energies == pytest.approx(direct.tolist(), rel=1e-6)
    assert frame_energies(chunk, 160) is energies  # the meter's, then the pause detector's
    assert frame_energies(bytes(chunk), 160) == energies  # another object: read again
    assert frame_energies(chunk, 80) == pytest.approx(  # another frame size: not mistaken
        (samples[:3200].astype(np.float64).reshape(-1, 80) ** 2).sum(axis=1).tolist(),
        rel=1e-6)


# --- LevelMeter -----------------------------------------------------------------------------

def meter(*, silence_seconds: float = 15.0, silence_dbfs: float = -55.0,
          clipping_ratio: float = 0.01, warning_interval: float = 10.0) -> LevelMeter:
    return LevelMeter(silence_seconds, silence_dbfs, clipping_ratio, warning_interval)


def square(seconds: float, rate: int = 16000) -> bytes:
    n = int(seconds * rate)
    return s16(np.where((np.arange(n) // 20) % 2 == 0, 32767, -32768))


def test_empty_feed() -> None:
    assert meter().feed(b"", 16000) == []


def test_clipping_on_full_scale_square() -> None:
    assert meter().feed(square(0.5), 16000) == ["clipping"]


def test_clipping_is_rate_limited() -> None:
    m = meter(warning_interval=10.0)
    warnings = [m.feed(square(1.0), 16000) for _ in range(25)]
    # Warned after 1 s, 11 s and 21 s of audio.
    assert [i for i, w in enumerate(warnings) if "clipping" in w] == [0, 10, 20]


def test_no_clipping_on_moderate_sine() -> None:
    m = meter()
    for _ in range(5):
        assert m.feed(s16(sine(1.0, amplitude=16000)), 16000) == []


def test_clipping_ratio_threshold() -> None:
    samples = np.full(1000, 1000, dtype="<i2")
    samples[:5] = 32767  # 0.5 % of samples at full scale
    assert meter(clipping_ratio=0.01).feed(s16(samples), 16000) == []
    assert meter(clipping_ratio=0.001).feed(s16(samples), 16000) == ["clipping"]


def test_a_chunks_samples_after_its_last_whole_frame_count_too() -> None:
    samples = np.zeros(170, dtype="<i2")  # one 10 ms frame of silence, 10 samples more
    samples[160:] = 32767
    m = meter(silence_seconds=0.001)
    assert m.feed(s16(samples), 16000) == ["clipping"]  # not silence: the level is heard
    assert m.silent_for == 0.0


def test_silence_reported_once_per_stretch() -> None:
    m = meter(silence_seconds=2.0)
    zeros = s16(np.zeros(8000))  # 0.5 s
    results = [m.feed(zeros, 16000) for _ in range(10)]
    assert [i for i, r in enumerate(results) if "silence" in r] == [3]
    assert m.silent_for == 5.0


def test_silence_rearmed_after_sound() -> None:
    m = meter(silence_seconds=1.0)
    zeros = s16(np.zeros(8000))
    loud = s16(sine(0.5, amplitude=8000))
    assert m.feed(zeros, 16000) == []
    assert m.feed(zeros, 16000) == ["silence"]
    assert m.feed(zeros, 16000) == []
    assert m.feed(loud, 16000) == []
    assert m.silent_for == 0.0
    assert m.feed(zeros, 16000) == []
    assert m.feed(zeros, 16000) == ["silence"]


def test_short_silence_is_not_reported() -> None:
    m = meter(silence_seconds=1.0)
    zeros = s16(np.zeros(4000))  # 0.25 s
    loud = s16(sine(0.25, amplitude=8000))
    for _ in range(10):
        assert m.feed(zeros, 16000) == []
        assert m.feed(zeros, 16000) == []
        assert m.feed(loud, 16000) == []


def test_quiet_noise_below_threshold_counts_as_silence() -> None:
    m = meter(silence_seconds=1.0, silence_dbfs=-40.0)
    hiss = s16(sine(1.0, amplitude=50))  # about -59 dBFS
    assert m.feed(hiss, 16000) == ["silence"]


def test_silence_duration_uses_sample_rate() -> None:
    m = meter(silence_seconds=1.0)
    zeros = s16(np.zeros(8000))
    assert m.feed(zeros, 8000) == ["silence"]


def test_level_dbfs() -> None:
    assert level_dbfs(sine(1.0).astype(np.float64)) == pytest.approx(-3.01, abs=0.05)
    assert level_dbfs(sine(1.0, amplitude=3276.7).astype(np.float64)) == \
        pytest.approx(-23.01, abs=0.05)
    assert level_dbfs(np.zeros(100)) == -math.inf
    assert level_dbfs(np.zeros(0)) == -math.inf
    assert level_dbfs(np.full(10, -32768.0)) == 0.0
