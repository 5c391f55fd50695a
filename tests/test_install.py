"""The one-command installer, run into a temporary root (no apt, no systemctl)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_install_into_a_temporary_root(tmp_path: Path) -> None:
    prefix, etc, units = tmp_path / "opt", tmp_path / "etc", tmp_path / "units"
    env = {**os.environ, "PREFIX": str(prefix), "ETC": str(etc), "UNIT_DIR": str(units),
           "SKIP_APT": "1", "NO_SYSTEMCTL": "1"}
    run = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-2000:]

    edge = prefix / "venv" / "bin" / "edge"
    version = subprocess.run([str(edge), "--version"], capture_output=True, text=True,
                             check=True)
    assert version.stdout.startswith("edge ")
    secret = etc / "jwt-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) >= 32
    assert tomllib.loads((etc / "edge.toml").read_text())["server"]["port"] == 8000
    # The README the unit names, and the pages it links to.
    assert (prefix / "README.md").is_file() and (prefix / "docs" / "operations.md").is_file()
    unit = (units / "edge.service").read_text()
    assert f"ExecStart={edge} serve --config {etc}/edge.toml" in unit
    assert f"LoadCredential=jwt-secret:{secret}" in unit
    # No Tang server or TPM given: a key file, root-only, said to be for evaluation.
    key = etc / "journal-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 64
    assert "WARNING: the journal's key is a plain file" in run.stderr
    dropin = (units / "edge.service.d" / "journal-key.conf").read_text()
    assert dropin == f"[Service]\nLoadCredential=journal-key:{key}\n"
    # The memory limits come from the config's budget (1024 MB): above it and the model.
    high, max_ = (int(line.split("=")[1].removesuffix("M")) for line in unit.splitlines()
                  if line.startswith(("MemoryHigh=", "MemoryMax=")))
    assert 1024 + 300 < high < max_ < 4096, (high, max_)
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: run .ci/setup"
    verify = subprocess.run(["systemd-analyze", "verify", str(units / "edge.service")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # Re-running keeps the operator's config and secret.
    (etc / "edge.toml").write_text('[server]\nport = 9000\n')
    before = secret.read_text()
    key_before = key.read_text()
    again = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], env=env,
                           capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert secret.read_text() == before
    assert key.read_text() == key_before  # a key is never replaced by the installer
    assert "9000" in (etc / "edge.toml").read_text()

    # The installed daemon reads the credential the unit hands it.
    creds = tmp_path / "creds"
    creds.mkdir()
    shutil.copy(secret, creds / "jwt-secret")
    shutil.copy(key, creds / "journal-key")
    check = subprocess.run(
        [str(edge), "check", "--config", str(etc / "edge.toml"), "--no-load"],
        env={**{k: v for k, v in os.environ.items() if k != "EDGE_JOURNAL_KEY_FILE"},
             "CREDENTIALS_DIRECTORY": str(creds),
             "EDGE_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, check=False)
    assert "ok   keys: HS256 secret present" in check.stdout, check.stdout
    assert "ok   data key: systemd credential journal-key" in check.stdout


def test_systemd_waits_longer_than_the_shutdown_grace() -> None:
    """systemd must not SIGKILL the daemon while it finishes live sessions: the unit's
    TimeoutStopSec exceeds server.shutdown_grace, as shipped and as defaulted."""
    from edge.core.config import load_config

    unit = (ROOT / "systemd" / "edge.service").read_text()
    [line] = [x for x in unit.splitlines() if x.startswith("TimeoutStopSec=")]
    stop_timeout = float(line.split("=", 1)[1].removesuffix("s"))
    shipped = tomllib.loads((ROOT / "config" / "edge.toml").read_text())
    graces = [shipped["server"]["shutdown_grace"],
              load_config(None, environ={}).server.shutdown_grace]
    # Room for the last final's decode and journal write after the grace.
    assert all(stop_timeout >= grace + 5 for grace in graces), (stop_timeout, graces)
