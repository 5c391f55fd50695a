"""The layers import downwards: core/ takes nothing from the Live API or the layers above
it, and ``edge check`` does not build the daemon (it imports no composition root)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parent.parent / "edge"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


ABOVE_CORE = ("edge.protocols", "edge.net", "edge.app", "edge.ops", "edge.cli",
              "edge.asr", "edge.audio", "edge.journal", "edge.relay", "edge.speakers",
              "edge.crypto")


@pytest.mark.parametrize("path", sorted((EDGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_nothing_above_it(path: Path) -> None:
    above = {name for name in imported(path) if name.startswith(ABOVE_CORE)}
    assert above <= CORE_EXCEPTIONS.get(path.name, set())


# Imports from above core/ that are still to be moved down (each is a known debt).
CORE_EXCEPTIONS = {
    # The session core's vocabulary (Utterance, Word, TermMatch) lives in protocols/.
    "terms.py": {"edge.protocols.events", "edge.protocols.events.TermMatch",
                 "edge.protocols.events.Utterance", "edge.protocols.events.Word"},
}


def test_check_does_not_import_the_composition_root() -> None:
    assert not {"edge.app", "edge.app.auth_settings"} & imported(EDGE / "ops" / "check.py")


# --- sizes: a module a reader can hold, functions that fit on a screen -----------------------

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


#: Functions allowed past MAX_FUNCTION_LINES because they are a literal table (a
#: dispatch dict, a schema) that reads best whole: "path::function" -> why. Nothing
#: else belongs here.
LITERAL_TABLES: dict[str, str] = {}


def modules() -> list[Path]:
    return sorted(EDGE.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(EDGE.parent).as_posix()


def long_functions(path: Path) -> list[tuple[str, int]]:
    """``(name, lines)`` of each function or method in ``path`` (nested ones too) longer
    than MAX_FUNCTION_LINES, decorators and docstring included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > MAX_FUNCTION_LINES:
                found.append((node.name, length))
    return found


def test_no_module_is_over_500_lines() -> None:
    over = {relative(p): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not over, over


def test_no_function_is_over_80_lines() -> None:
    over = {f"{relative(p)}::{name}": n for p in modules() for name, n in long_functions(p)}
    assert set(over) <= set(LITERAL_TABLES), over


def test_the_size_rules_find_what_they_look_for(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def short():\n    pass\n\n\nasync def long():\n{body}\n")
    assert long_functions(path) == [("long", MAX_FUNCTION_LINES + 1)]


def test_literal_tables_name_long_functions() -> None:
    long = {f"{relative(p)}::{name}" for p in modules() for name, _ in long_functions(p)}
    assert set(LITERAL_TABLES) <= long
