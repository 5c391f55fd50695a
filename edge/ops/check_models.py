"""``edge check``'s model and memory checks: each configured model (loaded and measured,
or sized from its files), and whether the default model and ``recognizer.memory_budget_mb``
fit the board and the installed unit, and the other models the budget.

Blocking (loads models): run it from the command line, not the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.asr.memory import mem_total, read_rss
from edge.asr.modeldir import check_model_dir, default_model_path, model_path
from edge.asr.models import estimate_bytes
from edge.asr.vosk import LoadedModel, load_model
from edge.core.config import Config
from edge.core.errors import EdgeError
from edge.core.model_table import installed_models
from edge.ops import memory
from edge.ops.findings import FAIL, OK, WARN, Finding


def check_model(config: Config, *, load: bool = True) -> Finding:
    try:
        r = config.recognizer
        path = model_path(r.model) if r.model else default_model_path()
        check_model_dir(path)
        if load:
            model, share = measured_model(path)
            return Finding(OK, "model", f"{model.name} loads ({path}; "
                           f"{share // memory.MB} MB resident)")
    except EdgeError as exc:
        return Finding(FAIL, "model", f"{exc}; install one with `edge models install` or "
                       "fix recognizer.model")
    return Finding(OK, "model", f"{path} looks like a Vosk model (not loaded)")


def check_models(config: Config, *, load: bool = True) -> list[Finding]:
    """The one model (:func:`check_model`), or each of ``[recognizer.models]``: the
    default one loaded as the daemon loads it at start, the others (loaded on first use)
    loaded too and measured, or with ``load=False`` checked on disk with the memory they
    are taken to need."""
    r = config.recognizer
    if not r.models:
        return [check_model(config, load=load)]
    table = installed_models(config)
    findings = []
    for language, source in table.models.items():
        topic = f"model {language}"
        try:
            size = model_size(language, source, language == table.default, load=load)
        except EdgeError as exc:
            findings.append(Finding(FAIL, topic, f"{exc}; fix recognizer.models.{language}"))
            continue
        when = "the default" if size.default else "loads on first use"
        if size.measured:
            said = f"{size.name} loads ({size.path}; {size.mb} MB resident; {when})"
        else:
            said = f"{size.path} looks like a Vosk model ({when}, about {size.mb} MB)"
        fits = "" if size.default or size.mb <= r.memory_budget_mb else (
            f"; more than recognizer.memory_budget_mb ({r.memory_budget_mb} MB): its "
            "sessions will be refused")
        findings.append(Finding(OK if not fits else WARN, topic, said + fits))
    return findings


@dataclass(frozen=True)
class ModelSize:
    """A configured model and the memory it takes: measured (loaded in this process)
    or, unloaded, taken to be :data:`~edge.asr.models.RSS_PER_DISK_BYTE` times its
    files, as the daemon takes it before a load."""

    language: str
    path: Path
    name: str
    mb: int
    measured: bool
    default: bool


def model_size(language: str, source: str, default: bool, *, load: bool) -> ModelSize:
    """Blocking (loads the model once per ``edge check`` when ``load``). Raises
    EdgeError for what is not a usable model."""
    path = model_path(source)
    check_model_dir(path)
    if load:
        model, share = measured_model(path)
        return ModelSize(language, path, model.name, share // memory.MB, True, default)
    return ModelSize(language, path, path.name, estimate_bytes(source) // memory.MB, False,
                     default)


def model_sizes(config: Config, *, load: bool) -> list[ModelSize]:
    """Every configured model that is usable, the default first (a broken one is left
    out: its own line says why)."""
    table = installed_models(config)
    order = [table.default, *(t for t in table.models if t != table.default)]
    sizes = []
    for language in order:
        try:
            sizes.append(model_size(language, table.models[language],
                                    language == table.default, load=load))
        except EdgeError:
            continue
    return sizes


#: The installed unit, whose MemoryHigh/MemoryMax ``edge check`` compares (systemd/install.sh).
UNIT_FILE = Path("/etc/systemd/system/edge.service")

_measured: dict[Path, tuple[LoadedModel, int]] = {}


def measured_model(path: Path) -> tuple[LoadedModel, int]:
    """The model loaded once per ``edge check`` (blocking), and its resident share in
    bytes (this process's RSS after the load, less before)."""
    if path not in _measured:
        before = read_rss()
        model = load_model(path)
        _measured[path] = model, max(0, read_rss() - before)
    return _measured[path]


def memory_limits(config: Config, *, load: bool = True) -> tuple[memory.Limits, str]:
    """The unit's limits for ``config``, from the default model's measured share when it
    loads (else the small Korean model's), and where that figure came from. The other
    models load within ``recognizer.memory_budget_mb``: they do not move the limits."""
    table = installed_models(config)
    share = 0
    if load:
        try:
            share = model_size(table.default, table.models[table.default], True,
                               load=True).mb
        except EdgeError:
            share = 0
    source = f"measured {share} MB" if share else f"assumed {memory.MODEL_MB} MB"
    return (memory.limits(config.recognizer.memory_budget_mb,
                          model_mb=share or memory.MODEL_MB), source)


def board_summary(model_mb: int = memory.MODEL_MB) -> str:
    """What 2, 4 and 8 GB boards hold: the largest budget, and recognisers at
    ``recognizer_memory_mb`` = 90 below its high-water mark (room and sessions, or
    warm)."""
    parts = []
    for gb in memory.BOARDS_GB:
        budget = memory.largest_budget(memory.board_mem_total_mb(gb), model_mb=model_mb)
        parts.append(f"{gb} GB: budget <= {budget} MB "
                     f"({memory.recognizers_held(budget)} recognisers)")
    return "; ".join(parts)


def check_memory(config: Config, *, load: bool = True, unit_file: Path = UNIT_FILE,
                 total: int | None = None) -> Finding:
    """Whether the daemon's limits (model + ``recognizer.memory_budget_mb``) fit this
    board's RAM (``total`` bytes: MemTotal), and the installed unit's ``MemoryMax=``
    holds them."""
    limit, source = memory_limits(config, load=load)
    total_mb = (mem_total() if total is None else total) // memory.MB
    budget = config.recognizer.memory_budget_mb
    model_mb = limit.expected_mb - budget - memory.RUNTIME_MB
    what = (f"model {source} + recognizer.memory_budget_mb {budget} MB: "
            f"MemoryHigh={limit.high_mb}M MemoryMax={limit.max_mb}M")
    boards = board_summary(model_mb)
    if total_mb and not memory.fits(limit, total_mb):
        largest = memory.largest_budget(total_mb, model_mb=model_mb)
        return Finding(FAIL, "memory", f"{what} do not fit this board's {total_mb} MB "
                       f"(MemTotal, {memory.SYSTEM_MB} MB kept for the system): set "
                       f"recognizer.memory_budget_mb to {largest} or less ({boards})")
    installed = _unit_memory_max(unit_file)
    if installed is not None and installed < limit.max_mb:
        return Finding(WARN, "memory", f"{what}, but {unit_file} has MemoryMax="
                       f"{installed}M: run systemd/install.sh again to update it")
    fit = f" fit this board's {total_mb} MB" if total_mb else ""
    level, others = (OK, "") if not config.recognizer.models else _other_models(
        config, model_sizes(config, load=load), total_mb, model_mb)
    return Finding(level, "memory", f"{what}{fit} ({boards}){others}")


def _other_models(config: Config, sizes: list[ModelSize], total_mb: int,
                  model_mb: int) -> tuple[str, str]:
    """Whether the models other than the default fit ``recognizer.memory_budget_mb``
    together, each with a live session (the default's session too), and if not, the
    budget that would hold them and whether this board (``total_mb``) has it."""
    r = config.recognizer
    others = [s for s in sizes if not s.default]
    if not others:
        return OK, ""
    listed = ", ".join(f"{s.language} {'measured' if s.measured else 'about'} {s.mb} MB"
                       for s in others)
    need = sum(s.mb for s in others) + r.recognizer_memory_mb * (len(others) + 1)
    said = (f"; the other models load within the budget ({listed}): together, with a "
            f"session each ({r.recognizer_memory_mb} MB), {need} MB")
    budget = r.memory_budget_mb
    if need <= budget:
        return OK, f"{said}, which fits it"
    room = max(s.mb for s in others) + 2 * r.recognizer_memory_mb
    if room > budget:
        return WARN, (f"{said}; even the largest alone does not fit ({room} MB with a "
                      "session): its sessions will be refused")
    largest = memory.largest_budget(total_mb, model_mb=model_mb) if total_mb else 0
    board = ("" if not total_mb else "; this board holds that" if need <= largest else
             f"; this board holds at most {largest} MB")
    return WARN, (f"{said}, more than the budget ({budget} MB): an idle model is unloaded "
                  f"to load another, and a language is refused (503) while the others "
                  f"have live sessions; set recognizer.memory_budget_mb to {need} to keep "
                  f"them all loaded{board}")


def _unit_memory_max(unit_file: Path) -> int | None:
    try:
        text = unit_file.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemoryMax=") and line.endswith("M"):
            try:
                return int(line.removeprefix("MemoryMax=").removesuffix("M"))
            except ValueError:
                return None
    return None
