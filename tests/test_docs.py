"""The docs say what the code does: every config key with its default, every environment
variable with its key, and no link that leads nowhere."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from edge.core.config import ENVIRONMENT, sections

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = REPO / "docs" / "operations.md"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def flat(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``sections()`` as dotted keys: ``relay.mqtt.url`` for ``[relay.mqtt] url``."""
    for name, value in tree.items():
        if isinstance(value, Mapping) and value:  # an empty one is a table-valued key
            yield from flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip() for cell in cells])
    return rows


def code(cell: str) -> str:
    """The text of a cell that is one code span: `` `auth.secret` `` -> ``auth.secret``."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"expected one `code` span, got {cell!r}"
    return match.group(1)


def toml_value(text: str) -> Any:
    return tomllib.loads(f"v = {text}")["v"]


def test_config_table_has_every_key_with_its_default() -> None:
    rows = table(OPERATIONS.read_text(encoding="utf-8"), "| key | default |")
    documented = {code(row[0]): code(row[1]) for row in rows}
    assert len(documented) == len(rows), "a key has two rows"
    defaults = dict(flat(sections()))
    assert sorted(set(defaults) - set(documented)) == [], "keys missing from the table"
    assert sorted(set(documented) - set(defaults)) == [], "rows naming no key"
    for key, default in defaults.items():
        value = toml_value(documented[key])
        if isinstance(default, tuple):  # list-valued keys are tuples in the frozen config
            default = list(default)
        assert (type(value), value) == (type(default), default), key
    assert all(row[2] for row in rows), "a row without its meaning"


def test_environment_table_matches_the_code() -> None:
    rows = table(OPERATIONS.read_text(encoding="utf-8"), "| variable | key |")
    documented = {code(row[0]): code(row[1]) for row in rows}
    assert documented == dict(ENVIRONMENT)


def test_every_edge_variable_the_code_reads_is_documented() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    read = set()
    for path in [*(REPO / "edge").rglob("*.py"), REPO / "tools" / "daemon.py",
                 REPO / "systemd" / "install.sh", REPO / ".ci" / "run",
                 *(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        if path == Path(__file__).resolve():
            continue
        read |= set(re.findall(r"\bEDGE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    # Names a test writes to show that they are *not* read.
    read -= {"EDGE_SERVER_PORT", "EDGE_PORT"}
    documented = set(re.findall(r"^\| `(EDGE_[A-Z0-9_]+)` \|", text, re.MULTILINE))
    assert sorted(read - documented) == []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#+ (.*)", line)
        if match:
            name = slug(match.group(1))
            n = 0
            while (name if n == 0 else f"{name}-{n}") in found:
                n += 1
            found.add(name if n == 0 else f"{name}-{n}")
    return found


def links(page: Path) -> Iterator[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    yield from re.findall(r"\]\(([^)\s]+)\)", text)


def test_relative_links_lead_to_a_file_and_a_heading() -> None:
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:
            path, _, fragment = target.partition("#")
            file = (page.parent / unquote(path)).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_the_readme_stays_a_few_screens() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_the_commands_table_names_every_command() -> None:
    from edge.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert isinstance(commands, dict)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = [row[0] for row in table(readme, "| command |")]
    for name, sub in commands.items():
        actions = [a for a in sub._actions if a.dest.endswith("_command")]
        words = [f"edge {name} {action}" for a in actions for action in a.choices or ()]
        words = words or [f"edge {name}"]
        for word in words:
            assert any(f"`{word}" in row for row in rows), word


def test_metrics_table_names_every_metric() -> None:
    source = (REPO / "edge" / "ops" / "health.py").read_text(encoding="utf-8")
    exported = set(re.findall(r'(?:metric|histogram)\(\s*"(edge_\w+)"', source))
    rows = table(OPERATIONS.read_text(encoding="utf-8"), "| metric | type |")
    documented = {code(row[0]).split("{")[0] for row in rows}
    assert exported and documented == exported
