"""What ``edge`` commands load: the light ones must not pay for vosk, numpy or PyAudio.

Each case runs ``edge.cli.main`` in a fresh interpreter (a real subprocess: the test
process has long since imported everything) and lists the heavy modules it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import json, sys
from edge.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # argparse's --version exits
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"vosk", "pyaudio", "numpy"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def run_edge(tmp_path: Path, *argv: str) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env["EDGE_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run([sys.executable, "-c", SCRIPT, *argv], env=env, timeout=50,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(printed)


def test_version_loads_no_heavy_module(tmp_path: Path) -> None:
    result, out = run_edge(tmp_path, "--version")
    assert result == {"code": 0, "heavy": []}
    assert out.startswith("edge ")


def test_token_loads_no_heavy_module(tmp_path: Path) -> None:
    result, out = run_edge(tmp_path, "token", "--dev", "--sub", "x")
    assert out.count(".") == 2  # the JWT was printed
    assert result == {"code": 0, "heavy": []}


def test_the_probe_sees_heavy_modules(tmp_path: Path) -> None:
    # The same probe on a command that needs vosk: it would catch a regression.
    result, _ = run_edge(tmp_path, "check", "--no-load")
    assert "vosk" in result["heavy"]
