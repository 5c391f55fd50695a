"""MQTT topic names and the relay's topic templates (``edge/v1/{site}/{device}/events``).

Pure: the config checks a template with :func:`check_template` when it loads, and the
relay's MQTT messages (:mod:`edge.protocols.mqtt_relay`) fill one in per device.
"""

from __future__ import annotations

import string

#: The only names a topic template may use.
TEMPLATE_FIELDS = frozenset({"site", "device"})


def check_template(template: str) -> None:
    """Raise ValueError unless ``template`` is a publishable topic template using only
    ``{site}`` and ``{device}`` (no wildcards, no empty levels, not a ``$`` topic)."""
    try:
        names = {name for _, name, spec, _ in string.Formatter().parse(template)
                 if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a topic template: {exc}") from None
    if not names <= TEMPLATE_FIELDS:
        raise ValueError(f"only {{site}} and {{device}} may appear, got "
                         f"{', '.join(sorted(names - TEMPLATE_FIELDS))}")
    check_topic(template.format(site="s", device="d"))


def check_topic(name: str) -> None:
    """Raise ValueError unless ``name`` is a topic a client may publish to."""
    if not name or any(c in name for c in "+#\0") or "" in name.split("/"):
        raise ValueError(f"not a publishable topic (empty level or wildcard): {name!r:.80}")
    if name.startswith("$"):
        raise ValueError(f"a topic starting with '$' is reserved: {name!r:.80}")
    if len(name.encode()) > 65535:
        raise ValueError("a topic longer than 65535 bytes")
