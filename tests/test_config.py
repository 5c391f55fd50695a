"""Config: defaults, TOML, environment, CLI overrides, validation, the sample file."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.core.config import (
    ENVIRONMENT,
    AssemblyAIConfig,
    AudioConfig,
    AuditConfig,
    AuthConfig,
    Config,
    JournalConfig,
    LogConfig,
    MicrophoneConfig,
    RecognizerConfig,
    RelayConfig,
    ScriptixConfig,
    ServerConfig,
    SpeakersConfig,
    TermsConfig,
    VoskServerConfig,
    WyomingConfig,
    load_config,
    sections,
    state_dir,
    voiceprints_path,
)
from edge.core.errors import ConfigError, EdgeError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "config" / "edge.toml"


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **kwargs: Any) -> Config:
    kwargs.setdefault("environ", {})
    return load_config(write(tmp_path, text), **kwargs)


def config_error(tmp_path: Path, text: str, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **kwargs)
    return info.value


def override_error(**overrides: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides=overrides)
    return info.value


# --- defaults ---------------------------------------------------------------------------

def test_defaults() -> None:
    c = load_config(None, environ={})
    assert c == Config()
    assert c.server.host == "0.0.0.0"
    assert c.server.port == 8000
    assert c.server.path == "/ws/transcribe"
    assert c.server.max_sessions == 8
    assert c.server.max_session_seconds == 14400.0
    assert c.server.max_frame_bytes == 1_048_576
    assert c.server.retry_after == 30
    assert c.auth.algorithm == "HS256"
    assert c.auth.secret == ""
    assert c.auth.leeway == 30.0
    assert c.recognizer.sample_rate == 16000
    assert c.recognizer.partial_results is True
    assert c.recognizer.max_phrases == 1000
    assert c.audio.silence_dbfs == -55.0
    assert c.audio.clipping_ratio == 0.01
    assert c.log.level == "info"


def test_config_is_frozen() -> None:
    c: Any = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.server.port = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.server = ServerConfig()


def test_sections_lists_every_field_with_its_default() -> None:
    s = sections()
    assert list(s) == ["server", "auth", "recognizer", "speakers", "audio", "microphone",
                       "journal", "relay", "ingest", "assemblyai", "scriptix",
                       "vosk_server",
                       "wyoming", "terms", "audit", "log"]
    for name, cls in [("server", ServerConfig), ("auth", AuthConfig),
                      ("recognizer", RecognizerConfig), ("speakers", SpeakersConfig),
                      ("audio", AudioConfig),
                      ("microphone", MicrophoneConfig), ("journal", JournalConfig),
                      ("relay", RelayConfig), ("assemblyai", AssemblyAIConfig),
                      ("scriptix", ScriptixConfig), ("vosk_server", VoskServerConfig),
                      ("wyoming", WyomingConfig), ("terms", TermsConfig),
                      ("audit", AuditConfig), ("log", LogConfig)]:
        assert s[name] == dataclasses.asdict(cls())


def test_environment_names_map_to_real_keys() -> None:
    s = sections()
    for name, key in ENVIRONMENT.items():
        assert name.startswith("EDGE_")
        *tables, field = key.split(".")
        table = s
        for name_ in tables:
            table = table[name_]
        assert field in table, key


# --- TOML loading -----------------------------------------------------------------------

def test_toml_values_are_loaded(tmp_path: Path) -> None:
    c = load_text(tmp_path, """
[server]
host = "127.0.0.1"
port = 9000
path = "/live"
max_sessions = 2
idle_timeout = 5.5

[auth]
algorithm = "HS256"
secret = "s3cret"
issuer = "hospital"
leeway = 0.0

[recognizer]
model = "/opt/model"
sample_rate = 8000
threads = 2
partial_results = false

[audio]
silence_seconds = 3.0
clipping_ratio = 1.0

[log]
level = "debug"
""")
    assert c.server == ServerConfig(host="127.0.0.1", port=9000, path="/live",
                                    max_sessions=2, idle_timeout=5.5)
    assert c.auth == AuthConfig(secret="s3cret", issuer="hospital", leeway=0.0)
    assert c.recognizer == RecognizerConfig(model="/opt/model", sample_rate=8000,
                                            threads=2, partial_results=False)
    assert c.audio == AudioConfig(silence_seconds=3.0, clipping_ratio=1.0)
    assert c.log == LogConfig(level="debug")


def test_partial_sections_keep_other_defaults(tmp_path: Path) -> None:
    c = load_text(tmp_path, "[server]\nport = 1234\n")
    assert c.server.port == 1234
    assert c.server.host == ServerConfig().host
    assert c.auth == AuthConfig()
    assert c.recognizer == RecognizerConfig()


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == Config()


@pytest.mark.parametrize("section", list(sections()))
def test_unknown_key_in_every_section(tmp_path: Path, section: str) -> None:
    exc = config_error(tmp_path, f"[{section}]\nno_such_key = 1\n")
    assert exc.key == f"{section}.no_such_key"
    assert f"{section}.no_such_key" in str(exc)
    assert "unknown key" in str(exc)


def test_unknown_key_next_to_valid_ones(tmp_path: Path) -> None:
    exc = config_error(tmp_path, '[server]\nport = 9000\nprot = 9001\n')
    assert exc.key == "server.prot"


def test_unknown_key_in_override() -> None:
    exc = override_error(**{"recognizer.modle": "/x"})
    assert exc.key == "recognizer.modle"
    assert "recognizer.modle" in str(exc)


def test_unknown_section(tmp_path: Path) -> None:
    exc = config_error(tmp_path, "[sever]\nport = 1\n")
    assert exc.key == "sever"
    assert "sever" in str(exc)
    assert "unknown section" in str(exc)


def test_nested_table_is_an_unknown_key(tmp_path: Path) -> None:
    exc = config_error(tmp_path, "[server.tls]\ncert = 'x'\n")
    assert exc.key == "server.tls"


def test_top_level_value_is_not_a_section(tmp_path: Path) -> None:
    exc = config_error(tmp_path, "port = 9000\n")
    assert exc.key == "port"
    assert "section" in str(exc)


def test_config_error_is_an_edge_error() -> None:
    exc = override_error(**{"server.port": -1})
    assert isinstance(exc, EdgeError)
    assert str(exc).startswith("config: server.port: ")


# --- types ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[server]\nport = "eight thousand"\n', "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nport = 8000.5\n", "server.port"),
        ("[server]\nport = 8000.0\n", "server.port"),
        ("[server]\nmax_sessions = false\n", "server.max_sessions"),
        ("[recognizer]\nsample_rate = 16000.0\n", "recognizer.sample_rate"),
        ('[server]\nidle_timeout = "soon"\n', "server.idle_timeout"),
        ("[server]\nidle_timeout = true\n", "server.idle_timeout"),
        ("[auth]\nleeway = nan\n", "auth.leeway"),
        ("[auth]\nleeway = inf\n", "auth.leeway"),
        ("[recognizer]\npartial_results = 1\n", "recognizer.partial_results"),
        ('[recognizer]\npartial_results = "yes"\n', "recognizer.partial_results"),
        ("[server]\nhost = 127\n", "server.host"),
        ("[auth]\nsecret = true\n", "auth.secret"),
        ("[log]\nlevel = [\"info\"]\n", "log.level"),
        ("[server]\nport = [8000]\n", "server.port"),
    ],
)
def test_wrong_types(tmp_path: Path, toml: str, key: str) -> None:
    exc = config_error(tmp_path, toml)
    assert exc.key == key
    assert key in str(exc)


def test_int_is_accepted_for_float(tmp_path: Path) -> None:
    c = load_text(tmp_path, "[auth]\nleeway = 5\n[server]\nidle_timeout = 90\n")
    assert c.auth.leeway == 5.0
    assert type(c.auth.leeway) is float
    assert type(c.server.idle_timeout) is float


@pytest.mark.parametrize(("text", "expected"),
                         [("true", True), ("false", False), ("True", True),
                          ("FALSE", False), ("1", True), ("0", False)])
def test_bool_from_strings(text: str, expected: bool) -> None:
    c = load_config(None, environ={}, overrides={"recognizer.partial_results": text})
    assert c.recognizer.partial_results is expected


def test_bool_from_bad_string() -> None:
    exc = override_error(**{"recognizer.partial_results": "maybe"})
    assert exc.key == "recognizer.partial_results"


def test_numbers_from_strings() -> None:
    c = load_config(None, environ={}, overrides={"server.port": "9001",
                                                 "auth.leeway": "2.5"})
    assert c.server.port == 9001
    assert c.auth.leeway == 2.5


def test_huge_int_for_float_is_a_config_error() -> None:
    exc = override_error(**{"auth.leeway": 10**400})
    assert exc.key == "auth.leeway"


@pytest.mark.parametrize(("body", "key"), [
    ('[server]\nport = "8000"\n', "server.port"),
    ('[recognizer]\npartial_results = "false"\n', "recognizer.partial_results"),
    ('[auth]\nleeway = "2.5"\n', "auth.leeway"),
])
def test_quoted_numbers_in_the_file_are_errors(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == key
    assert "string" in str(info.value)


# --- validation -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"server.port": 65536}, "server.port"),
        ({"server.port": -1}, "server.port"),
        ({"server.path": "ws/transcribe"}, "server.path"),
        ({"server.path": ""}, "server.path"),
        ({"server.tls_cert": "/etc/edge/cert.pem"}, "server.tls_key"),
        ({"server.tls_key": "/etc/edge/key.pem"}, "server.tls_cert"),
        ({"server.max_sessions": 0}, "server.max_sessions"),
        ({"server.handshake_timeout": 0}, "server.handshake_timeout"),
        ({"server.idle_timeout": -1.0}, "server.idle_timeout"),
        ({"server.retry_after": 0}, "server.retry_after"),
        ({"server.max_frame_bytes": 1024}, "server.max_frame_bytes"),
        ({"auth.algorithm": "ES256"}, "auth.algorithm"),
        ({"auth.algorithm": "hs256"}, "auth.algorithm"),
        ({"auth.algorithm": "none"}, "auth.algorithm"),
        ({"auth.algorithm": "RS256", "auth.secret": "x" * 32}, "auth.secret"),
        ({"auth.algorithm": "RS256", "auth.secret_file": "/run/secret"}, "auth.secret"),
        ({"auth.public_key_file": "/etc/edge/issuer.pem"}, "auth.public_key_file"),
        ({"auth.secret": "x" * 32, "auth.secret_file": "/run/secret"}, "auth.secret_file"),
        ({"auth.leeway": -0.5}, "auth.leeway"),
        ({"auth.max_token_lifetime": 0}, "auth.max_token_lifetime"),
        ({"auth.expiry_warning": -1}, "auth.expiry_warning"),
        ({"recognizer.sample_rate": 4000}, "recognizer.sample_rate"),
        ({"recognizer.sample_rate": 200000}, "recognizer.sample_rate"),
        ({"recognizer.threads": -1}, "recognizer.threads"),
        ({"recognizer.lag_warning": 0}, "recognizer.lag_warning"),
        ({"recognizer.max_phrases": 0}, "recognizer.max_phrases"),
        ({"audio.silence_seconds": 0}, "audio.silence_seconds"),
        ({"audio.silence_dbfs": 0}, "audio.silence_dbfs"),
        ({"audio.silence_dbfs": 6.0}, "audio.silence_dbfs"),
        ({"audio.clipping_ratio": 0}, "audio.clipping_ratio"),
        ({"audio.clipping_ratio": 1.5}, "audio.clipping_ratio"),
        ({"audio.warning_interval": 0}, "audio.warning_interval"),
        ({"log.level": "verbose"}, "log.level"),
        ({"log.level": ""}, "log.level"),
    ],
)
def test_validation_errors(overrides: dict[str, Any], key: str) -> None:
    exc = override_error(**overrides)
    assert exc.key == key
    assert key in str(exc)


def test_validation_errors_from_file(tmp_path: Path) -> None:
    exc = config_error(tmp_path, "[server]\nport = 70000\n")
    assert exc.key == "server.port"
    assert "70000" in str(exc)


@pytest.mark.parametrize(
    "overrides",
    [
        {"server.port": 0},
        {"server.port": 65535},
        {"server.tls_cert": "/c.pem", "server.tls_key": "/k.pem"},
        {"server.max_frame_bytes": 4096},
        {"auth.algorithm": "RS256", "auth.public_key_file": "/etc/edge/issuer.pem"},
        {"auth.leeway": 0},
        {"auth.expiry_warning": 0},
        {"recognizer.sample_rate": 8000},
        {"recognizer.sample_rate": 192000},
        {"recognizer.threads": 0},
        {"audio.silence_dbfs": -0.1},
        {"audio.clipping_ratio": 1},
        {"log.level": "DEBUG"},
        {"log.level": "error"},
    ],
)
def test_valid_edges(overrides: dict[str, Any]) -> None:
    c = load_config(None, environ={}, overrides=overrides)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        assert getattr(getattr(c, section), name) == value


# --- precedence: file < environment < CLI ------------------------------------------------

def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\nsecret = "from-file"\n[recognizer]\nmodel = "/file"\n')
    c = load_config(path, environ={"EDGE_JWT_SECRET": "from-env", "EDGE_MODEL": "/env"})
    assert c.auth.secret == "from-env"
    assert c.recognizer.model == "/env"


def test_environment_sets_other_keys(tmp_path: Path) -> None:
    c = load_config(None, environ={"EDGE_JWT_SECRET_FILE": "/run/creds/jwt",
                                   "EDGE_STATE_DIR": "/var/lib/edge"})
    assert c.auth.secret_file == "/run/creds/jwt"
    assert c.server.state_dir == "/var/lib/edge"


def test_empty_environment_values_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, '[recognizer]\nmodel = "/file"\n')
    c = load_config(path, environ={"EDGE_MODEL": "", "EDGE_JWT_SECRET": ""})
    assert c.recognizer.model == "/file"
    assert c.auth.secret == ""


def test_unrelated_environment_is_ignored() -> None:
    c = load_config(None, environ={"EDGE_SERVER_PORT": "1", "EDGE_PORT": "2",
                                   "PORT": "3"})
    assert c.server.port == 8000


def test_cli_overrides_beat_environment_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\nsecret = "from-file"\n[recognizer]\nmodel = "/file"\n'
                           "[server]\nport = 9000\n")
    c = load_config(path, environ={"EDGE_JWT_SECRET": "from-env", "EDGE_MODEL": "/env"},
                    overrides={"auth.secret": "from-cli", "recognizer.model": "/cli",
                               "server.port": 9100})
    assert c.auth.secret == "from-cli"
    assert c.recognizer.model == "/cli"
    assert c.server.port == 9100


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9000\n[recognizer]\nmodel = "/file"\n')
    c = load_config(path, environ={"EDGE_MODEL": "/env"},
                    overrides={"server.port": None, "recognizer.model": None,
                               "log.level": None})
    assert c.server.port == 9000
    assert c.recognizer.model == "/env"
    assert c.log.level == "info"


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MODEL", "/from/os/environ")
    monkeypatch.delenv("EDGE_JWT_SECRET", raising=False)
    monkeypatch.delenv("EDGE_JWT_SECRET_FILE", raising=False)
    monkeypatch.delenv("EDGE_JWT_PUBLIC_KEY_FILE", raising=False)
    monkeypatch.delenv("EDGE_STATE_DIR", raising=False)
    assert load_config(None).recognizer.model == "/from/os/environ"


def test_environment_values_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"EDGE_JWT_PUBLIC_KEY_FILE": "/k.pem"})
    assert info.value.key == "auth.public_key_file"


# --- file problems ----------------------------------------------------------------------

def test_invalid_toml_names_config_option(tmp_path: Path) -> None:
    exc = config_error(tmp_path, "[server\nport = = 1\n")
    assert exc.key == "--config"
    assert "--config" in str(exc)
    assert "TOML" in str(exc)
    assert "edge.toml" in str(exc)


def test_missing_file_names_config_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert info.value.key == "--config"
    assert "--config" in str(info.value)
    assert "nope.toml" in str(info.value)
    assert "not found" in str(info.value)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert info.value.key == "--config"


def test_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9002\n")
    assert load_config(str(path), environ={}).server.port == 9002


# --- the sample config ------------------------------------------------------------------

def test_sample_config_is_the_defaults() -> None:
    assert load_config(SAMPLE, environ={}) == Config()


def test_sample_config_lists_every_key() -> None:
    with SAMPLE.open("rb") as f:
        data = tomllib.load(f)
    expected = sections()
    assert list(data) == list(expected)
    for section, keys in expected.items():
        assert list(data[section]) == list(keys), section
        for key, default in keys.items():
            if isinstance(default, tuple):  # a TOML array
                default = list(default)
            # The sample must spell floats as floats (30.0, not 30) so it reads as the type.
            assert type(data[section][key]) is type(default), f"{section}.{key}"
            assert data[section][key] == default, f"{section}.{key}"


# --- state directory --------------------------------------------------------------------

def test_state_dir_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-systemd")
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    c = load_config(None, environ={}, overrides={"server.state_dir": "/srv/edge"})
    assert state_dir(c) == Path("/srv/edge")


def test_state_dir_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge")
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    assert state_dir(Config()) == Path("/var/lib/edge")


def test_state_dir_from_systemd_takes_first_of_several(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge:/var/lib/edge-extra")
    assert state_dir(Config()) == Path("/var/lib/edge")


def test_state_dir_from_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg/state")
    assert state_dir(Config()) == Path("/xdg/state/edge")


def test_state_dir_default_under_home(monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir(Config()) == tmp_path / ".local" / "state" / "edge"


def test_state_dir_empty_environment_values_fall_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "")
    monkeypatch.setenv("XDG_STATE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir(Config()) == tmp_path / ".local" / "state" / "edge"


# --- speakers ---------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "key"), [
    ({"speakers.diarization_threshold": 0.0}, "speakers.diarization_threshold"),
    ({"speakers.diarization_threshold": 1.0}, "speakers.diarization_threshold"),
    ({"speakers.identification_threshold": -0.5}, "speakers.identification_threshold"),
    ({"speakers.identification_threshold": "high"}, "speakers.identification_threshold"),
    ({"speakers.max_speakers": 0}, "speakers.max_speakers"),
    ({"speakers.max_speakers": 101}, "speakers.max_speakers"),
])
def test_bad_speaker_settings_name_their_key(overrides: dict[str, Any], key: str) -> None:
    exc = override_error(**overrides)
    assert exc.key == key
    assert key in str(exc)


def test_voiceprints_live_in_the_state_dir_unless_configured(tmp_path: Path) -> None:
    c = load_config(None, environ={}, overrides={"server.state_dir": str(tmp_path)})
    assert voiceprints_path(c) == tmp_path / "voiceprints.json"
    c = load_text(tmp_path, '[speakers]\nstore = "/srv/v.json"\nmax_speakers = 3\n')
    assert voiceprints_path(c) == Path("/srv/v.json")
    assert c.speakers.max_speakers == 3
    assert c.speakers.diarization_threshold == 0.55


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("vosk_server.trusted_networks", "10.0.0.0/8, nonsense", "not an IP network: 'nonsense'"),
    ("wyoming.trusted_networks", "300.1.2.3", "not an IP network"),
    ("wyoming.port", "70000", "between 0 and 65535"),
    ("vosk_server.sample_rate", "100", "between 8000 and 192000"),
])
def test_peer_protocol_config_errors_name_the_key(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={}, overrides={key: value})
    assert exc.value.key == key and expected in str(exc.value)


def test_a_peer_port_cannot_be_the_main_port() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={}, overrides={"wyoming.enabled": "true",
                                                 "wyoming.port": "8000"})
    assert exc.value.key == "wyoming.port" and "server.port" in str(exc.value)
