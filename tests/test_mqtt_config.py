"""``[relay] transport``, ``[relay.mqtt]`` and ``[ingest.mqtt]``: nested tables, errors
naming the dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.core.config import load_config
from edge.core.errors import ConfigError


def test_nested_tables_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[relay]\nenabled = true\ntransport = "mqtt"\n'
                    '[relay.mqtt]\nurl = "mqtts://broker:8883"\nmax_inflight = 4\n'
                    '[ingest.mqtt]\nenabled = true\nurl = "mqtt://broker:1883"\n')
    c = load_config(path, environ={"EDGE_MQTT_PASSWORD": "pw",
                                   "EDGE_INGEST_MQTT_PASSWORD": "pw2"})
    assert c.relay.transport == "mqtt"
    assert c.relay.mqtt.url == "mqtts://broker:8883" and c.relay.mqtt.max_inflight == 4
    assert c.relay.mqtt.password == "pw" and c.ingest.mqtt.password == "pw2"
    assert c.relay.mqtt.ack_level == "receipt" and c.relay.mqtt.max_message_bytes == 98304
    assert c.ingest.mqtt.enabled and c.ingest.mqtt.subscription.startswith("$share/")
    assert c.ingest.mqtt.ordered  # keep each device's order unless told not to


def test_defaults_keep_the_websocket_relay() -> None:
    c = load_config(None, environ={})
    assert c.relay.transport == "websocket" and not c.ingest.mqtt.enabled


@pytest.mark.parametrize(("overrides", "key"), [
    ({"relay.transport": "amqp"}, "relay.transport"),
    ({"relay.enabled": True, "relay.transport": "mqtt", "relay.mqtt.url": "ws://x"},
     "relay.mqtt.url"),
    ({"relay.mqtt.ack_level": "none"}, "relay.mqtt.ack_level"),
    ({"relay.mqtt.topic": "edge/+/x"}, "relay.mqtt.topic"),
    ({"relay.mqtt.receipt_topic": "edge/{room}"}, "relay.mqtt.receipt_topic"),
    ({"relay.mqtt.max_message_bytes": 100}, "relay.mqtt.max_message_bytes"),
    ({"relay.mqtt.max_inflight": "x"}, "relay.mqtt.max_inflight"),
    ({"relay.mqtt.bogus": 1}, "relay.mqtt.bogus"),
    ({"relay.enabled": True, "relay.transport": "mqtt", "relay.mqtt.url": "mqtt://b:1",
      "relay.mqtt.certfile": "c.pem"}, "relay.mqtt.keyfile"),
    ({"ingest.mqtt.enabled": True}, "ingest.mqtt.url"),
    ({"ingest.mqtt.ordered": "sometimes"}, "ingest.mqtt.ordered"),
    ({"ingest.mqtt.enabled": True, "ingest.mqtt.url": "mqtt://b:1",
      "ingest.mqtt.password": "a", "ingest.mqtt.password_file": "f"},
     "ingest.mqtt.password_file"),
])
def test_errors_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides=overrides)
    assert info.value.key == key


def test_a_value_where_a_table_belongs(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[relay]\nmqtt = "mqtt://x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "relay.mqtt"
