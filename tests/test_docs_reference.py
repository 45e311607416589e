"""The error and policy tables of the docs are generated from the code; these tests keep them so.

``docs/includes/errors.md`` and ``docs/includes/policy.md`` are included by ``concepts.md`` and
``configuration.md``. When an error class, a catalogue text or a ``Policy`` field changes, refresh
them with ``EMAIL_CHANGE_WRITE_DOCS=1 pytest tests/test_docs_reference.py`` and review the diff.
What the code cannot say (the state an error leaves, what a frontend does, why a default) is kept
below, next to the generator, and a missing entry fails the test.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from email_change import EmailChangeError, Messages, Policy
from email_change._policy import MAX_COUNT, MAX_DURATION

INCLUDES = Path(__file__).resolve().parent.parent / "docs" / "includes"

#: Per error class: (state the procedure is left in, what the frontend should do).
ERROR_NOTES: dict[str, tuple[str, str]] = {
    "InvalidCodeFormat": ("unchanged (`code_sent`); no try counted", "stay on the code screen"),
    "InvalidSerialFormat": (
        "unchanged (`code_verified`); no try counted",
        "stay on the serial screen, show the card help",
    ),
    "InvalidAddress": (
        "unchanged (`identity_verified`); `reason` is `syntax`, `empty` or `too_long`",
        "stay on the address form",
    ),
    "MismatchedConfirmation": ("unchanged (`identity_verified`)", "stay on the address form"),
    "SameAddress": ("unchanged (`identity_verified`)", "stay on the address form"),
    "InvalidForm": (
        "unchanged (`identity_verified`); `field` names the malformed field",
        "a frontend bug: reload the form",
    ),
    "InvalidArgument": (
        "unchanged, nothing read or written; `field` names the argument",
        "a caller's bug (wrong type or shape): fix the call",
    ),
    "ConsentMissing": (
        "unchanged (`identity_verified`); `purpose` names the unanswered choice",
        "highlight the unanswered choice",
    ),
    "WrongCode": (
        "`code_sent`, the try counted; `tries_left=0` means the code died",
        "show `tries_left`; at 0 offer *Renvoyer le code par mail* if `codes_left > 0`",
    ),
    "WrongSerial": (
        "`code_verified`, the try counted",
        "show `tries_left` and the card help",
    ),
    "CodeExpired": ("unchanged (`code_sent`)", "offer *Renvoyer le code par mail*"),
    "CodeSpent": ("unchanged (`code_sent`)", "offer *Renvoyer le code par mail*"),
    "ResendTooSoon": (
        "unchanged; nothing sent (at `start`: no procedure created)",
        "disable the button until `retry_at`",
    ),
    "ResendLimitReached": (
        "unchanged (`code_sent` or `awaiting_confirmation`); nothing sent",
        "show the help line; `retry_at` when known",
    ),
    "InsuredBudgetSpent": (
        "unchanged (at `start`: no procedure created)",
        "show the help line and `retry_at`",
    ),
    "InsuredFrozen": (
        "unchanged (at `start`: no procedure created)",
        "the insured calls the 3646: a support agent lifts the freeze",
    ),
    "RevertWindowClosed": (
        "unchanged (`awaiting_confirmation` or `confirmed`)",
        "a neutral page with the help line (3646)",
    ),
    "ProcedureLocked": (
        "`locked` (final), just now or earlier",
        "leave the procedure; show the help line",
    ),
    "ProcedureExpired": ("`expired` (final), just now or earlier", "back to *Mes informations*"),
    "LinkExpired": (
        "unchanged (`awaiting_confirmation`)",
        "offer a new confirmation mail (after login credentials)",
    ),
    "InvalidLink": ("unchanged", "a neutral page; never say why"),
    "ProcedureNotFound": (
        "nothing (no such procedure for this insured)",
        "back to *Mes informations*",
    ),
    "EventNotAllowed": ("unchanged; `event` and `state` say what was refused", "reload the view"),
    "AwaitingConfirmation": (
        "unchanged (`awaiting_confirmation`); no new procedure",
        "tell the insured to open their mailbox",
    ),
    "AuthenticationTooOld": (
        "nothing: no procedure created",
        "re-authenticate the insured (login again), then call `start` with the new time",
    ),
    "ConcurrentUpdate": (
        "unchanged: nothing was written",
        "reload the view, let the insured retry",
    ),
    "CardNotUsable": (
        "unchanged (`code_verified`); no try counted",
        "show the app-card help and 3646",
    ),
    "NoCurrentAddress": ("nothing: no procedure created", "show the help line (3646)"),
    "ServiceUnavailable": (
        "unchanged; no try counted; `dependency` names the port",
        "ask to retry in a few minutes",
    ),
}

#: Per Policy field: why this default.
POLICY_REASONS: dict[str, str] = {
    "code_length": "the guide; 6 meets NIST SP 800-63B and ASVS 6.5.4 (20 bits)",
    "code_lifetime": "the guide; 10 minutes meets ASVS 6.5.5",
    "wrong_tries_per_code": "a 4-digit code has ~13.3 bits: the try budget is the protection",
    "codes_per_procedure": "with 3 tries per code, at most 9 guesses per procedure",
    "resend_cooldown": "mail bombing of the current address, and cost",
    "codes_per_insured_per_window": "a new procedure must not reset the mail budget",
    "wrong_serial_tries": "the serial is the second factor; a typo is allowed twice",
    "failures_per_insured_per_window": "a new procedure must not reset the guess budget: "
    "at most 10/10,000 per insured per day with 4 digits",
    "insured_window": "the budgets are daily; rolling, so no midnight reset to aim at",
    "verified_step_lifetime": "a verified code must not open a door for the rest of the day",
    "link_lifetime": "the time to reach the new mailbox; the insured cannot log in meanwhile",
    "link_resend_cooldown": "mail bombing of the new address",
    "link_resends_per_window": "mail bombing of the new address (3 per day)",
    "notify_previous_address": "ASVS 6.3.7; the notice carries a link to dispute the change",
    "dispute_window": "a week: an insured who reads the old mailbox weekly can still undo a "
    "confirmed hijack; a mailbox left behind cannot veto for long (docs/security.md)",
    "max_authentication_age": "off: the guide does not ask for it; ASVS 5.0 7.5.1 asks for a "
    "fresh authentication before a sensitive change (e.g. 15 minutes)",
    "allow_smtputf8": "a non-ASCII local part needs SMTPUTF8 on every relay on the way (domains go "
    "out as A-labels anyway); a mail refused for good withdraws the registration",
}

_GENERATED = "<!-- Generated by tests/test_docs_reference.py from {source}; do not edit. -->"

_BOUNDS = {
    "_positive": "1 to 10,000",
    "_positive_delta": "> 0, ≤ 366 days",
    "_non_negative_delta": "0 to 366 days (0: no cooldown)",
    "_check_code_length": "4 to 10",
    "_off_or_positive_delta": "0 to 366 days (0: off)",
}


def _error_classes() -> Iterator[type[EmailChangeError]]:
    stack = list(EmailChangeError.__subclasses__())
    while stack:
        cls = stack.pop(0)
        if not cls.__name__.startswith("_"):  # private helpers never reach a caller as such
            yield cls
        stack.extend(cls.__subclasses__())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _template(messages: Messages, locale: str, code: str) -> str:
    # The raw catalogue text, placeholders left as {name} so the reader sees the fields used; a
    # counted text shows its singular and its plural.
    counted = messages.count_of(locale, "errors", code)
    if counted is None:
        return messages.template(locale, "errors", code)
    one, other = (messages.template(locale, "errors", code, count=n) for n in (1, 2))
    return f"{one}<br>{other}"


def errors_page() -> str:
    """Two tables: the codes with their state and frontend action, then their texts."""
    messages = Messages()
    lines = [
        _GENERATED.format(source="the error classes and the catalogues"),
        "",
        "| `code` | class | HTTP | the procedure is left | the frontend should |",
        "|---|---|---|---|---|",
    ]
    classes = list(_error_classes())
    for cls in classes:
        leaves, action = ERROR_NOTES[cls.__name__]
        fields = [a.name for a in attrs.fields(cls)]
        name = f"`{cls.__name__}`" + (f" ({', '.join(fields)})" if fields else "")
        lines.append(
            f"| `{cls.code}` | {name} | {cls.http_status} | {_cell(leaves)} | {_cell(action)} |"
        )
    lines += [
        "",
        "| `code` | français (`fr`, default) | English (`en`) |",
        "|---|---|---|",
    ]
    for cls in classes:
        fr = _template(messages, "fr", cls.code)
        en = _template(messages, "en", cls.code)
        lines.append(f"| `{cls.code}` | {_cell(fr)} | {_cell(en)} |")
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        for unit, size in (("h", 3600), ("min", 60)):
            if seconds % size == 0:
                return f"{seconds // size} {unit}"
        return f"{seconds} s"
    return str(value)


def _comments() -> dict[str, str]:
    source = inspect.getsource(Policy)
    return {name: comment.strip() for comment, name in re.findall(r"#: (.+)\n\s+(\w+):", source)}


def _bounds(field: attrs.Attribute[Any]) -> str:
    if field.type in (bool, "bool"):
        return "on / off"
    validator = field.validator
    names = [getattr(v, "__name__", "") for v in getattr(validator, "_validators", [validator])]
    return ", ".join(_BOUNDS[n] for n in names)


def policy_page() -> str:
    """One row per ``Policy`` field: default, bounds, meaning, reason."""
    comments = _comments()
    lines = [
        _GENERATED.format(source="attrs.fields(Policy)"),
        "",
        "| field | default | allowed | meaning | why this default |",
        "|---|---|---|---|---|",
    ]
    lines.extend(
        f"| `{field.name}` | {_show(field.default)} | {_bounds(field)} "
        f"| {_cell(comments[field.name])} | {_cell(POLICY_REASONS[field.name])} |"
        for field in attrs.fields(Policy)
    )
    return "\n".join(lines) + "\n"


#: The reference HTTP API's own problem codes (beside the library's errors), with the status
#: each is sent with and what it means; checked against the adapter's source below.
HTTP_LAYER: dict[str, tuple[int, str]] = {
    "request.invalid": (400, "malformed body"),
    "request.host": (400, "a `Host` the app does not answer for"),
    "auth.required": (401, "the login hook returned nothing"),
    "agent.required": (401, "the support hook authenticated no agent"),
    "csrf.cross_origin": (403, "a browser's cross-origin request"),
    "csrf.token": (403, "a page form without its CSRF token"),
    "http.not_found": (404, "no such route"),
    "http.method_not_allowed": (405, ""),
    "request.too_large": (413, ""),
    "request.media_type": (415, "a body that is not `application/json`"),
    "error": (500, "no detail; logged server-side"),
}

_ASGI = Path(__file__).parent.parent / "src" / "email_change" / "adapters" / "asgi"


def _http_codes_in_source() -> set[tuple[int, str]]:
    """Every (status, code) the reference HTTP adapter sends by name."""
    found: set[tuple[int, str]] = set()
    for module in _ASGI.glob("*.py"):
        text = module.read_text(encoding="utf-8")
        calls = re.findall(r"(?:ApiProblem|problem)\(\s*(\d{3}),\s*\"([a-z_.]+)\"", text)
        mapped = re.findall(r"^\s+(\d{3}): \(\"([a-z_.]+)\"", text, flags=re.MULTILINE)
        found.update((int(status), code) for status, code in (*calls, *mapped))
    return found


def http_statuses_page() -> str:
    """The HTTP status of every problem code: the library's errors (their ``http_status``) and
    the HTTP adapter's own codes."""
    by_status: dict[int, list[str]] = {}
    for cls in _error_classes():
        by_status.setdefault(cls.http_status, []).append(f"`{cls.code}`")
    for code, (status, note) in HTTP_LAYER.items():
        by_status.setdefault(status, []).append(f"`{code}`" + (f" ({note})" if note else ""))
    lines = [
        _GENERATED.format(source="the error classes' http_status and the HTTP adapter's codes"),
        "",
        "| status | codes |",
        "|---|---|",
    ]
    lines.extend(
        f"| {status} | {_cell(', '.join(codes))} |" for status, codes in sorted(by_status.items())
    )
    return "\n".join(lines) + "\n"


def test_every_http_code_of_the_adapter_is_in_the_status_table() -> None:
    library = {(cls.http_status, cls.code) for cls in _error_classes()}
    layer = {(status, code) for code, (status, _) in HTTP_LAYER.items()}
    sent = _http_codes_in_source()
    assert sent - library - layer == set(), "an HTTP code the status table does not list"
    assert layer - sent == set(), "the status table lists an HTTP code nothing sends"


@pytest.mark.parametrize(
    ("name", "generate"),
    [
        ("errors.md", errors_page),
        ("policy.md", policy_page),
        ("http-statuses.md", http_statuses_page),
    ],
)
def test_generated_page_is_current(name: str, generate: Any) -> None:
    page = INCLUDES / name
    expected = generate()
    if os.environ.get("EMAIL_CHANGE_WRITE_DOCS") == "1":
        page.write_text(expected, encoding="utf-8")
    assert page.read_text(encoding="utf-8") == expected, (
        f"docs/includes/{name} is stale: EMAIL_CHANGE_WRITE_DOCS=1 pytest {__file__}"
    )


def test_every_error_and_field_is_explained_once() -> None:
    assert set(ERROR_NOTES) == {cls.__name__ for cls in _error_classes()}
    assert set(POLICY_REASONS) == {f.name for f in attrs.fields(Policy)}
    assert set(_comments()) == {f.name for f in attrs.fields(Policy)}


def test_every_error_code_has_its_own_text_in_both_languages() -> None:
    messages = Messages()
    generic = {loc: _template(messages, loc, "error") for loc in ("fr", "en")}
    for cls in _error_classes():
        for locale in ("fr", "en"):
            assert _template(messages, locale, cls.code) != generic[locale], cls.code


def _out_of_bounds(field: attrs.Attribute[Any]) -> Any:
    bounds = _bounds(field)
    too_long = MAX_DURATION + timedelta(microseconds=1)
    if bounds == "4 to 10":
        return [3, 11]
    if bounds == "1 to 10,000":
        return [0, MAX_COUNT + 1]
    if bounds.startswith("> 0"):
        return [timedelta(0), too_long]
    if bounds.startswith("0 to"):
        return [timedelta(seconds=-1), too_long]
    assert bounds == "on / off"
    return []


@pytest.mark.parametrize("field", attrs.fields(Policy), ids=lambda f: f.name)
def test_documented_bounds_are_enforced(field: attrs.Attribute[Any]) -> None:
    for bad in _out_of_bounds(field):
        with pytest.raises(ValueError, match=field.name):
            Policy(**{field.name: bad})


def test_the_documented_count_bound_is_the_code_s() -> None:
    assert _BOUNDS["_positive"] == f"1 to {MAX_COUNT:,}"


def test_the_documented_duration_bound_is_the_code_s() -> None:
    assert f"{MAX_DURATION.days} days" in _BOUNDS["_positive_delta"]
    assert f"{MAX_DURATION.days} days" in _BOUNDS["_non_negative_delta"]
