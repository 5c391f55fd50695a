"""The supervisor, on trio's mock clock: restarts with capped, jittered backoff; a failure
is logged once with its traceback; cancellation and a service that returns stop it."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from edge.ops.supervisor import Supervisor


class Flaky:
    """Fails its first ``failures`` runs (after reporting ready), then runs forever."""

    def __init__(self, failures: int, *, before_ready: bool = False) -> None:
        self.failures = failures
        self.before_ready = before_ready
        self.runs = 0
        self.started_at: list[float] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.runs += 1
        self.started_at.append(trio.current_time())
        if self.before_ready and self.runs <= self.failures:
            raise RuntimeError(f"failed before ready, run {self.runs}")
        task_status.started()
        await trio.sleep(1)
        if self.runs <= self.failures:
            raise ValueError(f"boom {self.runs}")
        await trio.sleep_forever()


async def wait_for(predicate: object, timeout: float = 1000) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.01)


@pytest.mark.parametrize("before_ready", [False, True])
async def test_a_failing_service_is_restarted_with_backoff(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, before_ready: bool
) -> None:
    mock_clock.autojump_threshold = 0
    supervisor = Supervisor(backoff_base=0.5, backoff_max=8.0, rng=random.Random(1))
    service = Flaky(6, before_ready=before_ready)
    with caplog.at_level(logging.ERROR, logger="edge.ops.supervisor"):
        async with trio.open_nursery() as nursery:
            await supervisor.start(nursery, "flaky", service.run)
            await wait_for(lambda: supervisor.services["flaky"].state == "restarting")
            status = supervisor.status()["flaky"]
            assert status["restarts"] == 1
            assert "next_attempt" in status
            assert status["last_error"].startswith(("ValueError: boom 1",
                                                    "RuntimeError: failed before ready"))
            await wait_for(lambda: service.runs == 7
                           and supervisor.services["flaky"].state == "running")
            nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(service.started_at, service.started_at[1:], strict=False)]
    work = 0 if before_ready else 1  # a run that got ready works 1 s before failing
    delays = [gap - work for gap in gaps]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (n - 1))
        assert 0.5 <= delay <= ceiling + 1e-9, (n, delays)
    assert max(delays) > 2.0  # the backoff grew
    records = [r for r in caplog.records if r.name == "edge.ops.supervisor"]
    assert len(records) == 6  # one line per failure
    assert all(r.levelno == logging.ERROR and r.exc_info for r in records)
    assert supervisor.services["flaky"].restarts == 6


async def test_a_service_that_returns_is_stopped_not_restarted(
    mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    supervisor = Supervisor()
    runs = []

    async def once(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started()

    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, "once", once)
        await wait_for(lambda: supervisor.services["once"].state == "stopped")
        await trio.sleep(100)
    assert len(runs) == 1
    assert supervisor.status()["once"] == {"state": "stopped", "restarts": 0}


async def test_stop_cancels_a_service_for_good(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    supervisor = Supervisor()
    service = Flaky(0)
    other = Flaky(0)
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, "one", service.run)
        await supervisor.start(nursery, "two", other.run)
        supervisor.stop("one")
        await wait_for(lambda: supervisor.services["one"].state == "stopped")
        await trio.sleep(100)
        assert supervisor.services["two"].state == "running"
        nursery.cancel_scope.cancel()
    assert service.runs == 1


async def test_cancellation_is_never_taken_for_a_failure(
    mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    supervisor = Supervisor()
    service = Flaky(0)
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await supervisor.start(nursery, "svc", service.run)
    assert service.runs == 1
    assert supervisor.services["svc"].restarts == 0


def test_delay_is_capped_and_jittered() -> None:
    supervisor = Supervisor(backoff_base=0.5, backoff_max=60.0, rng=random.Random(7))
    delays = [supervisor.delay(n) for n in range(1, 40) for _ in range(20)]
    assert all(0.5 <= d <= 60.0 for d in delays)
    late = [supervisor.delay(30) for _ in range(200)]
    assert max(late) > 50 and min(late) < 10  # full jitter over [base, cap]


async def test_two_services_of_one_name_are_refused() -> None:
    supervisor = Supervisor()
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, "x", Flaky(0).run)
        with pytest.raises(ValueError, match="already supervised"):
            await supervisor.start(nursery, "x", Flaky(0).run)
        nursery.cancel_scope.cancel()
