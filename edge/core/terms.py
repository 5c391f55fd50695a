"""Term lists (symptoms, drugs, doses, anatomy, ...) and the matcher that finds them in
a final's words.

The parsing and matching are pure; :class:`TermFile` reads its file (blocking, like
:class:`~edge.core.auth.RevocationFile`: call it from a worker thread in async code).

A list is JSON (a list of objects) or CSV (a header row, then one term a row) with the
keys ``term``, ``language`` and ``category``, and optionally ``code`` (ICD-10, KCD, ATC,
SNOMED CT, ...) and ``except`` (word forms that look like the term with a particle but
are other words: ``간이`` for ``간``; in CSV separated by ``|``).

How a term matches the words of a final (each word is one token of the recogniser):

* a match starts at the start of a word and ends at the end of one: a term is never
  found inside another word (``간`` is not in ``시간``);
* Korean (and other languages written without spaces between morphemes, ``ja``, ``zh``):
  the words are compared with their spaces removed, so a term matches however the
  recogniser spaced it (``하루 세 번``, ``하루 세번``; ``가슴 통증``, ``가슴통증``), and the
  last word may carry one of a closed list of particles and copula endings
  (:data:`KOREAN_PARTICLES`: ``두통이``, ``두통은``, ``두통을``, ``두통에는``,
  ``두통이에요``); any other ending is another word;
* other languages: words are compared case-insensitively, separated by single spaces;
  English terms also match their plural (``headaches``, ``allergies``, ``teeth``);
* where terms overlap, the longest wins (``가슴 통증`` over ``가슴``), then the first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Protocol

from edge.protocols.events import TermMatch, Utterance, Word

logger = logging.getLogger(__name__)

MAX_TERMS = 100_000
MAX_TERM_CHARS = 100
MAX_FILE_BYTES = 16 * 1024 * 1024
KEYS = ("term", "language", "category", "code", "except")
REQUIRED = ("term", "language", "category")

#: Korean postpositions (조사) that attach to a noun, alone or stacked (``에서는``),
#: and the copula as said in a clinic (``이에요``, ``입니다``). A closed list: a word
#: that is a term plus anything else is another word.
_KO_POSTPOSITIONS = (
    "이", "가", "께서", "을", "를", "의", "에", "에서", "에게", "께", "한테", "더러",
    "으로", "로", "으로서", "로서", "으로써", "로써", "와", "과", "하고", "이랑", "랑",
    "이나", "나", "이든", "든", "보다", "처럼", "같이", "만큼", "마다", "까지", "부터",
    "조차", "마저", "밖에", "뿐", "은", "는", "도", "만", "요",
)
_KO_STACKABLE = ("에", "에서", "에게", "께", "한테", "으로", "로", "와", "과", "하고", "이랑",
                 "랑", "보다", "처럼", "까지", "부터", "만")
_KO_COPULA = (
    "이다", "이에요", "예요", "이요", "입니다", "입니까", "이야", "야", "이고", "이며",
    "인데", "인데요", "이라", "라", "이라고", "라고", "이라서", "라서", "이었어요",
    "였어요", "이었고", "였고", "이죠", "죠", "일까요", "인가요", "이세요", "세요",
)
KOREAN_PARTICLES: frozenset[str] = frozenset(
    (*_KO_POSTPOSITIONS, *_KO_COPULA,
     *(a + b for a in _KO_STACKABLE for b in ("는", "도", "만", "요", "의") if a != b)))
_MAX_PARTICLE = max(map(len, KOREAN_PARTICLES))

#: Languages compared with spaces removed (their words are spaced loosely, if at all).
_COMPACT = frozenset({"ko", "ja", "zh"})
_IRREGULAR_EN = {"tooth": ("teeth",), "foot": ("feet",), "vertebra": ("vertebrae",),
                 "bronchus": ("bronchi",), "child": ("children",), "man": ("men",),
                 "woman": ("women",), "diagnosis": ("diagnoses",), "ovum": ("ova",),
                 "phalanx": ("phalanges",), "cervix": ("cervices", "cervixes"),
                 "appendix": ("appendices", "appendixes")}
_CATEGORY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class TermListError(ValueError):
    """A term list that cannot be used; the message names the entry and the key."""


@dataclass(frozen=True)
class Term:
    term: str
    language: str  # the primary language subtag, lower case: "ko", "en"
    category: str  # lower case, [a-z0-9_-]: it becomes a CSS and WebVTT class
    code: str | None = None
    exceptions: tuple[str, ...] = ()


# --- reading lists ---------------------------------------------------------------------

def parse_terms(text: str, source: str = "term list") -> tuple[Term, ...]:
    """Parse a list as JSON (text starting with ``[`` or ``{``) or CSV;
    :class:`TermListError` naming ``source``, the entry and the key otherwise."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith(("[", "{")):
        return parse_json(stripped, source)
    return parse_csv(stripped, source)


def parse_json(text: str, source: str = "term list") -> tuple[Term, ...]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TermListError(f"{source}: not valid JSON (line {exc.lineno}, column "
                            f"{exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise TermListError(f"{source}: expected a JSON list of objects "
                            '({"term", "language", "category", "code"})')
    _check_count(len(data), source)
    terms = []
    for n, item in enumerate(data, 1):
        where = f"{source}: entry {n}"
        if not isinstance(item, dict):
            raise TermListError(f"{where}: expected an object with \"term\", \"language\" "
                                f"and \"category\", got {type(item).__name__}")
        terms.append(_term(item, where))
    return tuple(terms)


def parse_csv(text: str, source: str = "term list") -> tuple[Term, ...]:
    rows = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(rows)]
    except StopIteration:
        raise TermListError(f"{source}: empty; expected a header row "
                            "(term,language,category,code)") from None
    except csv.Error as exc:
        raise TermListError(f"{source}: line 1: {exc}") from None
    unknown = [h for h in header if h not in KEYS]
    if unknown:
        raise TermListError(f"{source}: line 1: unknown column {unknown[0][:40]!r} "
                            f"(columns: {', '.join(KEYS)})")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise TermListError(f"{source}: line 1: no {missing[0]!r} column (the header "
                            "names the columns: term,language,category,code)")
    terms = []
    try:
        for row in rows:
            line = rows.line_num
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) > len(header):
                raise TermListError(f"{source}: line {line}: {len(row)} cells for "
                                    f"{len(header)} columns")
            item: dict[str, Any] = dict(zip(header, row, strict=False))
            if "except" in item:
                item["except"] = [e for e in item["except"].split("|") if e.strip()]
            if not (item.get("code") or "").strip():
                item.pop("code", None)
            terms.append(_term(item, f"{source}: line {line}"))
            _check_count(len(terms), source)
    except csv.Error as exc:
        raise TermListError(f"{source}: line {rows.line_num}: {exc}") from None
    return tuple(terms)


def _check_count(count: int, source: str) -> None:
    if count > MAX_TERMS:
        raise TermListError(f"{source}: more than {MAX_TERMS} terms")


def _term(item: Mapping[str, Any], where: str) -> Term:
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise TermListError(f"{where}: unknown key {unknown[0][:40]!r} "
                            f"(keys: {', '.join(KEYS)})")
    for key in REQUIRED:
        if key not in item:
            raise TermListError(f"{where}: {key!r} is missing")
    values: dict[str, str] = {}
    for key in (*REQUIRED, "code"):
        value = item.get(key)
        if key == "code" and value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise TermListError(f"{where}: {key!r} must be a non-empty string")
        values[key] = value
    term = normalize(values["term"])
    if len(term) > MAX_TERM_CHARS:
        raise TermListError(f"{where}: 'term' is longer than {MAX_TERM_CHARS} characters")
    if any(unicodedata.category(ch)[0] == "C" for ch in term):
        raise TermListError(f"{where}: 'term' has control characters")
    language = _language(values["language"])
    if language is None:
        raise TermListError(f"{where}: 'language' must be a language tag such as \"ko\" or "
                            f"\"en-US\", got {values['language'][:40]!r}")
    category = values["category"].strip().lower()
    if not set(category) <= _CATEGORY_CHARS or len(category) > 40:
        raise TermListError(f"{where}: 'category' must be a short name of letters a-z, "
                            f"digits, '-' or '_' (symptom, drug, dose, anatomy, procedure), "
                            f"got {values['category'][:40]!r}")
    code = values["code"].strip() if "code" in values else None
    if code is not None and (len(code) > 100 or any(ord(ch) < 32 for ch in code)):
        raise TermListError(f"{where}: 'code' must be one line of at most 100 characters")
    exceptions = item.get("except", [])
    if not isinstance(exceptions, list) or not all(
            isinstance(e, str) and e.strip() for e in exceptions):
        raise TermListError(f"{where}: 'except' must be a list of word forms")
    return Term(term=term, language=language, category=category, code=code,
                exceptions=tuple(normalize(e) for e in exceptions))


def _language(tag: str) -> str | None:
    parts = tag.strip().replace("_", "-").split("-")
    primary = parts[0].lower()
    if not (primary.isascii() and primary.isalpha() and 2 <= len(primary) <= 3):
        return None
    if not all(p.isascii() and p.isalnum() and 1 <= len(p) <= 8 for p in parts[1:]):
        return None
    return primary


def builtin_terms() -> tuple[Term, ...]:
    """The starter list shipped with edge (``edge/core/data/terms-ko.json``)."""
    text = resources.files("edge.core").joinpath("data/terms-ko.json").read_text("utf-8")
    return parse_json(text, "edge/core/data/terms-ko.json")


# --- matching --------------------------------------------------------------------------

def normalize(text: str) -> str:
    """NFC (a list saved with decomposed Hangul still matches), case-folded, single
    spaces."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def _forms(term: Term) -> Iterable[str]:
    """The forms of ``term`` that are looked up as they are, with the separator of its
    language (Korean particles are taken off the words at match time instead: indexing
    every term with every particle would take a hundred times the memory)."""
    words = term.term.split()
    if term.language in _COMPACT:
        yield "".join(words)
        return
    yield " ".join(words)
    if term.language == "en":
        *head, last = words
        for plural in _plurals(last):
            yield " ".join([*head, plural])


def _plurals(word: str) -> tuple[str, ...]:
    if word in _IRREGULAR_EN:
        return _IRREGULAR_EN[word]
    if not word.isalpha():
        return ()
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return (word + "es",)
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return (word[:-1] + "ies",)
    return (word + "s",)


@dataclass
class _Index:
    compact: bool
    particles: frozenset[str] = frozenset()
    forms: dict[str, Term] = field(default_factory=dict)
    prefixes: set[str] = field(default_factory=set)  # of the forms: where to stop looking
    max_chars: int = 0
    max_words: int = 1

    def lookup(self, said: str) -> Term | None:
        """The term ``said`` is a form of (with a particle, in Korean), if any."""
        term = self.forms.get(said)
        if term is None and self.particles:
            for k in range(1, min(_MAX_PARTICLE, len(said) - 1) + 1):
                if said[-k:] in self.particles:
                    term = self.forms.get(said[:-k])
                    if term is not None:
                        break
        if term is not None and said in term.exceptions:
            return None
        return term


class TermMatcher:
    """Finds the terms of a list in a final's words. Immutable once built (a dictionary
    of each term's forms per language), so recogniser threads share it."""

    def __init__(self, terms: Sequence[Term] = ()) -> None:
        self.terms = tuple(terms)
        self._indexes: dict[str, _Index] = {}
        for term in self.terms:
            index = self._indexes.get(term.language)
            if index is None:
                index = self._indexes[term.language] = _Index(
                    compact=term.language in _COMPACT,
                    particles=KOREAN_PARTICLES if term.language == "ko" else frozenset())
            for form in _forms(term):
                index.forms.setdefault(form, term)  # the first entry for a form wins
                index.prefixes.update(form[:k] for k in range(1, len(form)))
                index.max_chars = max(index.max_chars, len(form)
                                      + (_MAX_PARTICLE if index.particles else 0))
            spaced = len(term.term.split())
            # Compact languages: a term may be spoken in as many words as it has
            # syllables; others: exactly its words.
            index.max_words = max(index.max_words, len(term.term.replace(" ", ""))
                                  if index.compact else spaced)

    def __len__(self) -> int:
        return len(self.terms)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._indexes))

    def match(self, words: Sequence[Word], language: str | None = None
              ) -> tuple[TermMatch, ...]:
        """The terms said in ``words``, in order, not overlapping. ``language`` (a tag:
        ``ko``, ``en-US``) limits the list to that language's terms; ``None``: all."""
        if not words or not self._indexes:
            return ()
        if language is not None:
            primary = _language(language)
            index = self._indexes.get(primary) if primary else None
            indexes = [index] if index is not None else []
        else:
            indexes = list(self._indexes.values())
        if not indexes:
            return ()
        tokens = [normalize(w.word) for w in words]
        found: list[tuple[int, int, Term]] = []
        for index in indexes:
            found.extend(_scan(tokens, index))
        if len(indexes) > 1:
            found = _without_overlaps(found)
        return tuple(
            TermMatch(text=" ".join(w.word for w in words[i:j + 1]), term=term.term,
                      start_ms=words[i].start_ms, end_ms=words[j].end_ms,
                      category=term.category, code=term.code)
            for i, j, term in found)

    def annotate(self, utterance: Utterance, language: str | None = None) -> Utterance:
        """``utterance`` with its terms (a final with words; anything else unchanged)."""
        if not utterance.is_final or not utterance.words:
            return utterance
        terms = self.match(utterance.words, language)
        return replace(utterance, terms=terms) if terms else utterance


def _scan(tokens: Sequence[str], index: _Index) -> list[tuple[int, int, Term]]:
    sep = "" if index.compact else " "
    out: list[tuple[int, int, Term]] = []
    n = len(tokens)
    i = 0
    while i < n:
        best: tuple[int, Term] | None = None
        said = ""
        for j in range(i, min(n, i + index.max_words)):
            said = tokens[j] if j == i else said + sep + tokens[j]
            if len(said) > index.max_chars:
                break
            term = index.lookup(said)
            if term is not None:
                best = (j, term)
            elif said not in index.prefixes:
                break  # no form goes on from here
        if best is None:
            i += 1
            continue
        out.append((i, best[0], best[1]))
        i = best[0] + 1
    return out


def _without_overlaps(found: list[tuple[int, int, Term]]) -> list[tuple[int, int, Term]]:
    kept: list[tuple[int, int, Term]] = []
    for i, j, term in sorted(found, key=lambda f: (f[0], -(f[1] - f[0]))):
        if not kept or i > kept[-1][1]:
            kept.append((i, j, term))
    return kept


# --- where a device's list comes from --------------------------------------------------

class TermSource(Protocol):
    """Where a recogniser gets the list in force; :attr:`current` never blocks."""

    @property
    def current(self) -> TermMatcher: ...


@dataclass(frozen=True)
class FixedTerms:
    """A list that does not change (the starter list shipped with edge)."""

    current: TermMatcher


class TermFile:
    """A term list file (``terms.file``) reread when it changes (stat: mtime_ns, size,
    inode).

    The constructor reads the file and raises :class:`TermListError` when it is
    missing, unreadable or malformed (at start, the daemon stops: exit 2).
    :meth:`reload_if_changed` keeps the list in force when the new content cannot be
    used, and logs why once per problem. Both block on file I/O. :attr:`current` never
    blocks; replacing the matcher is one reference assignment, safe while recogniser
    threads read it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._stamp: tuple[int, int, int] | None = None
        self._last_problem: str | None = None
        stamp, text = self._read()
        self._current = TermMatcher(parse_terms(text, self._path))
        self._stamp = stamp

    @property
    def path(self) -> str:
        return self._path

    @property
    def current(self) -> TermMatcher:
        return self._current

    def reload_if_changed(self) -> bool:
        """Reread the file if its stat changed; True when a new list is in force."""
        try:
            try:
                stamp = _stamp(os.stat(self._path))
            except OSError as exc:
                raise TermListError(f"{self._path}: {exc.strerror}") from None
            if stamp == self._stamp:
                return False
            stamp, text = self._read()
            matcher = TermMatcher(parse_terms(text, self._path))
        except TermListError as exc:
            self._problem(str(exc))
            return False
        self._stamp = stamp
        self._last_problem = None
        self._current = matcher
        return True

    def _read(self) -> tuple[tuple[int, int, int], str]:
        try:
            with open(self._path, "rb") as f:
                stamp = _stamp(os.fstat(f.fileno()))
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise TermListError(f"{self._path}: no such file") from None
        except OSError as exc:
            raise TermListError(f"{self._path}: cannot read it: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise TermListError(f"{self._path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            return stamp, data.decode("utf-8")
        except UnicodeDecodeError:
            raise TermListError(f"{self._path}: not UTF-8 text") from None

    def _problem(self, problem: str) -> None:
        if problem != self._last_problem:
            logger.warning("term list not reloaded, keeping the %d terms in force: %s",
                           len(self._current), problem)
            self._last_problem = problem


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class TermAnnotator:
    """Adds the terms of ``source``'s list in force to finals of ``language`` (a tag;
    ``None``: every language of the list). Called in the recogniser's worker thread."""

    source: TermSource
    language: str | None = None

    def __call__(self, utterance: Utterance) -> Utterance:
        return self.source.current.annotate(utterance, self.language)
