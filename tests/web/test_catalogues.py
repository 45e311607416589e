"""Every word the pages show comes from the catalogues, in French and in English alike; French
typography; real plural forms.
"""

from __future__ import annotations

import re
import string
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from email_change import Messages
from email_change._messages import plural_form

TEMPLATES = Path(str(resources.files("email_change.adapters.asgi").joinpath("templates")))
LOCALES = Path(str(resources.files("email_change").joinpath("locales")))
NNBSP, NBSP = "\u202f", "\u00a0"


def _catalogue(locale: str) -> dict[str, Any]:
    return tomllib.loads((LOCALES / f"{locale}.toml").read_text("utf-8"))


def _leaves(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every text of a catalogue by path; a plural table counts as one text."""
    if isinstance(node, str) or (isinstance(node, dict) and "other" in node):
        return {path: node}
    found: dict[tuple[str, ...], Any] = {}
    for key, value in node.items():
        found.update(_leaves(value, (*path, key)))
    return found


def _texts(entry: Any) -> list[str]:
    """The texts of an entry: itself, or each form of a counted one."""
    return [v for k, v in entry.items() if k != "count"] if isinstance(entry, dict) else [entry]


def _placeholders(entry: Any) -> set[str]:
    return {n for text in _texts(entry) for _, n, _, _ in string.Formatter().parse(text) if n}


def test_french_and_english_have_the_same_texts_with_the_same_placeholders() -> None:
    fr, en = _leaves(_catalogue("fr")), _leaves(_catalogue("en"))
    assert set(fr) == set(en)
    for path, entry in fr.items():
        other = en[path]
        assert isinstance(entry, dict) == isinstance(other, dict), path
        if isinstance(entry, dict):
            assert entry.get("count", "count") == other.get("count", "count"), path
        assert _placeholders(entry) == _placeholders(other), path


def test_counted_texts_have_every_form_french_and_english_use() -> None:
    for locale in ("fr", "en"):
        for path, entry in _leaves(_catalogue(locale)).items():
            if isinstance(entry, dict):
                forms = {plural_form(locale, n) for n in (0, 1, 2, 5, 21)}
                assert forms <= set(entry), (locale, path, forms - set(entry))


@pytest.mark.parametrize(
    ("locale", "count", "text"),
    [
        ("fr", 0, "Il vous reste 0 essai pour ce code."),
        ("fr", 1, "Il vous reste 1 essai pour ce code."),
        ("fr", 2, "Il vous reste 2 essais pour ce code."),
        ("en", 0, "0 tries left for this code."),
        ("en", 1, "1 try left for this code."),
        ("en", 2, "2 tries left for this code."),
    ],
)
def test_plural_forms_follow_each_languages_rules(locale: str, count: int, text: str) -> None:
    assert Messages().error_text("code.wrong", locale, tries_left=count).endswith(text)


def test_no_text_says_s_in_brackets() -> None:
    for locale in ("fr", "en"):
        source = (LOCALES / f"{locale}.toml").read_text("utf-8")
        assert not re.search(r"\((s|ies|x)\)", source), locale


def test_french_typography() -> None:
    """A narrow no-break space inside « » and before ; ! ?, a no-break space before :.

    In mails only the guillemets: their other wording ("est : {code}") is what hosts and tests
    read codes from, and stays as it was.
    """
    bad = re.compile(r"«[^\u202f]|[^\u202f]»| [;:!?]|\u202f:|\u00a0[;!?»]|«\u00a0")
    checked = 0
    guillemets = re.compile(r"«[^\u202f]|[^\u202f]»")
    for path, entry in _leaves(_catalogue("fr")).items():
        for text in _texts(entry):
            if path[0] == "mail":  # mails: the guillemets; their wording is parsed by hosts
                assert guillemets.search(text) is None, ".".join(path)
                continue
            checked += 1
            found = bad.search(text)
            if found is not None:
                near = text[max(0, found.start() - 12) : found.end() + 12]
                pytest.fail(f"{'.'.join(path)}: {near!r}")
    assert checked > 150


class _Words(HTMLParser):
    """Collects the words a template writes itself, outside ``{{ }}`` and ``{% %}``."""

    SHOWN = ("alt", "title", "aria-label", "placeholder", "value")

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in self.SHOWN and value and re.search(r"[^\W\d_]", value):
                self.words.append(f"{tag}[{name}]={value}")

    def handle_data(self, data: str) -> None:
        if re.search(r"[^\W\d_]", data):
            self.words.append(data.strip())


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_templates_hold_no_words_of_their_own(template: str) -> None:
    source = (TEMPLATES / template).read_text("utf-8")
    bare = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", source, flags=re.DOTALL)
    parser = _Words()
    parser.feed(bare)
    assert parser.words == [], template


def test_every_key_a_template_names_is_in_both_catalogues() -> None:
    messages = Messages()
    keys = set()
    for path in TEMPLATES.glob("*.html"):
        keys |= set(re.findall(r"""\bt\(["']([\w.]+\w)["']""", path.read_text("utf-8")))
    assert len(keys) > 60
    for locale in ("fr", "en"):
        catalogue = _leaves(_catalogue(locale))
        for key in keys:
            assert tuple(key.split(".")) in catalogue, (locale, key)
            assert messages.template(locale, *key.split("."))
