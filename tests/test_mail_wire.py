"""A rendered mail's bytes, written without building its object tree, are the generator's.

``Messages.render`` returns an ``EmailMessage`` whose tree is built on first use; under
``email.policy.SMTP`` and ``SMTPUTF8`` (and in the file outbox) its bytes are written directly
(``email_change._mime``). The reference is the same mail built at once by ``EmailMessage``
under ``email.policy.default`` and written by the standard library's generator, with the same
random draw for the MIME boundary. Generated: every mail kind and locale, addresses (plain,
with quoting characters, long enough to fold, IDN domains, non-ASCII local parts), parameters
(ASCII or not, long lines, line breaks: every body encoding), item ids, dates, sender names
and Message-ID domains.
"""

from __future__ import annotations

import email.generator
import email.policy
import random
import string
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import email_change as ec
from email_change import _mime
from email_change._records import MailEffect, MailKind, OutboxItem
from email_change.adapters.file_outbox import _wire_bytes

MESSAGES = ec.Messages()
SETTINGS = ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")
AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
POLICIES = (email.policy.SMTP, email.policy.SMTPUTF8)

_ATOM = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-."
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
ascii_domains = st.lists(labels, min_size=1, max_size=5).map(".".join)
idn_domains = st.lists(
    st.sampled_from(["exämple", "été", "bücher", "例え", "xn--exmple-cua", "fr"]),
    min_size=1,
    max_size=3,
).map(lambda parts: ".".join([*parts, "fr"]))
local_parts = st.one_of(
    st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9_+-]{1,20}){0,3}", fullmatch=True),
    st.text(_ATOM, min_size=1, max_size=70),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20),
)
addresses = st.builds(
    lambda local, domain: f"{local}@{domain}", local_parts, st.one_of(ascii_domains, idn_domains)
) | st.text(max_size=30)
values = st.one_of(
    st.text(string.ascii_letters + string.digits + " .,:;-_*@", max_size=120),
    st.text(max_size=120),
    st.text("ab é\n\r-=", max_size=300),
)
ids = st.one_of(st.text(string.hexdigits.lower(), min_size=1, max_size=40), st.text(max_size=20))
zones = st.one_of(
    st.just(UTC),
    st.integers(-86_399, 86_399).map(lambda s: timezone(timedelta(seconds=s))),
    st.none(),
)
dates = st.builds(
    lambda at, tz: at.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001 - zones drawn apart
    zones,
)
mail_settings = st.builds(
    lambda name, domain: ec.MailSettings(
        confirm_url="https://ameli.example/confirmer",
        revert_url="https://ameli.example/annuler",
        sender_name=name,
        message_id_domain=domain,
    ),
    st.one_of(
        st.just("L'Assurance Maladie"),
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
            min_size=1,
            max_size=90,
        ).filter(str.isprintable),
    ),
    st.one_of(st.just("email-change.assurance-maladie.fr"), ascii_domains),
)


def _item(  # noqa: PLR0917 - the parts of one outbox item
    kind: MailKind, locale: str, to: str, params: dict[str, str], item_id: str, at: datetime
) -> OutboxItem:
    effect = MailEffect(kind=kind, to=to, locale=locale, procedure_id="p1", params=params)
    return OutboxItem(id=item_id, effect=effect, created_at=at, next_attempt_at=AT)


def _bytes(message: EmailMessage) -> list[bytes]:
    out = []
    for policy in (*POLICIES, *POLICIES):  # the second time with the boundary already drawn
        random.seed(7)  # the generator draws the multipart boundary from ``random``
        try:
            out.append(message.as_bytes(policy=policy))
        except UnicodeEncodeError as exc:  # no SMTPUTF8: it must fail alike on both sides
            out.append(repr(exc).encode())
    return out


def _outbox_bytes(message: EmailMessage) -> bytes:
    random.seed(7)
    try:
        return _wire_bytes(message)
    except UnicodeEncodeError as exc:
        return repr(exc).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(list(MailKind)),
    locale=st.sampled_from([*sorted(MESSAGES.locales), "xx"]),
    to=addresses,
    params=st.dictionaries(
        st.sampled_from(["minutes", "hours", "days", "new_address"]), values, max_size=4
    ),
    secret=st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=60),
    item_id=ids,
    at=dates,
    mail=mail_settings,
)
@example(
    kind=MailKind.SECURITY_CODE,
    locale="fr",
    to="jeanne.martin@exemple.fr",
    params={"minutes": "15"},
    secret="0421",
    item_id="0a1b" * 8,
    at=AT,
    mail=ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r"),
)
def test_the_bytes_are_the_generators(  # noqa: PLR0917 - hypothesis's arguments
    kind: MailKind,
    locale: str,
    to: str,
    params: dict[str, str],
    secret: str,
    item_id: str,
    at: datetime,
    mail: ec.MailSettings,
) -> None:
    item = _item(kind, locale, to, params, item_id, at)
    _same(MESSAGES, item, secret, mail)


def _outcome(make: Callable[[], EmailMessage], write: Callable[[EmailMessage], object]) -> object:
    """What rendering then writing gives: the bytes, or the error (its type and text)."""
    try:
        return write(make())
    except Exception as exc:  # noqa: BLE001 - compared between the two sides
        return (type(exc), str(exc))


def _same(messages: ec.Messages, item: OutboxItem, secret: str, mail: ec.MailSettings) -> None:
    def reference() -> EmailMessage:
        return messages.render_reference(item, secret, mail, email.policy.default)

    def rendered() -> EmailMessage:
        return messages.render(item, secret, mail)

    for write in (_bytes, _outbox_bytes, _as_string_after_wire):
        assert _outcome(rendered, write) == _outcome(reference, write)
    built = messages.render_reference(item, secret, mail) if _built_ok(reference) else None
    if built is not None:  # the reference's own policy (MAIL_POLICY), to the byte
        assert _outcome(rendered, _bytes) == _outcome(lambda: built, _bytes)


def _built_ok(make: Callable[[], EmailMessage]) -> bool:
    try:
        make()
    except Exception:  # noqa: BLE001
        return False
    return True


def _as_string_after_wire(message: EmailMessage) -> list[object]:
    """Written to the wire first (without its tree when it can be), then read and written by
    the generator: the tree carries the boundary already drawn."""
    out: list[object] = [_outbox_bytes(message)]
    random.seed(8)
    try:
        out.append(message.as_string())
    except UnicodeEncodeError as exc:
        out.append(repr(exc))
    out.append(str(message["Content-Type"]))
    return out


def test_a_boundary_found_in_a_body_is_handled_as_the_generator_handles_it(
    tmp_path: Path,
) -> None:
    random.seed(7)
    drawn = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="  # noqa: S311
    (tmp_path / "fr.toml").write_text(
        '[mail.security_code]\ntext = "Code {code}\\n{new_address}\\nfin"\n'
        'html = "<p>{code}</p>"\n',
        "utf-8",
    )
    messages = ec.Messages(tmp_path)  # short ASCII lines: a 7bit body, written as it is
    for line in (f"--{drawn}", f"--{drawn}--", f"--{drawn}.0", f"x--{drawn}"):
        params = {"new_address": line}
        item = _item(MailKind.SECURITY_CODE, "fr", "a@b.fr", params, "ab12", AT)
        _same(messages, item, "0421", SETTINGS)
    # The generator looks for the boundary on lines ended by "\n" only (so, in CRLF bytes, it
    # never finds one): the writer's own search, alike, on both kinds of line ends.
    generator = email.generator.BytesGenerator
    for text in (
        f"a\n--{drawn}\nb".encode(),
        f"a\n--{drawn}--\n--{drawn}.0\n".encode(),
        f"a\r\n--{drawn}\r\nb".encode(),
        f"a--{drawn}\n".encode(),
    ):
        random.seed(7)
        expected = generator._make_boundary(text)  # type: ignore[attr-defined]
        random.seed(7)
        assert _mime._boundary(text) == expected
    random.seed(7)
    assert _mime._boundary(f"a\n--{drawn}\n".encode()) == drawn + ".0"


def test_a_plain_mail_is_written_without_its_tree() -> None:
    item = _item(MailKind.CONFIRM_ADDRESS, "fr", "jeanne@exämple.fr", {"hours": "24"}, "ab12", AT)
    message = MESSAGES.render(
        item,
        "p1.token",
        ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r"),
    )
    found = _mime.wire(message)
    assert found is not None
    assert found[0] == "<ab12@email-change.assurance-maladie.fr>"
    assert "_ec_parts" in vars(message)  # nothing built
    assert message["To"] == "jeanne@xn--exmple-cua.fr"  # read: built now
    assert "_ec_parts" not in vars(message)
    assert _mime.wire(message) is None  # a built message is written by the generator


def test_outside_the_plain_cases_the_generator_writes() -> None:
    item = _item(MailKind.SECURITY_CODE, "fr", "jéanne@exemple.fr", {"minutes": "15"}, "ab12", AT)
    settings_ = ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")
    message = MESSAGES.render(item, "0421", settings_)
    assert _mime.wire(message) is None  # a non-ASCII local part: the header classes decide


def test_an_error_in_a_header_is_raised_by_render_as_before() -> None:
    item = _item(MailKind.SECURITY_CODE, "fr", "a@b.fr", {}, "ab\r\nBcc: x@y.fr", AT)
    settings_ = ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")
    for render in (MESSAGES.render, MESSAGES.render_reference):
        try:
            render(item, "0421", settings_)
        except ValueError as exc:
            assert "linefeed" in str(exc)
        else:
            raise AssertionError("a line break in a header was accepted")


@pytest.mark.parametrize("length", range(68, 84))
def test_addresses_around_the_line_width(length: int) -> None:
    to = "j" * (length - len("@exemple.fr")) + "@exemple.fr"  # "To: " + 74 characters = 78
    for kind in (MailKind.SECURITY_CODE, MailKind.PREVIOUS_ADDRESS_NOTICE):
        item = _item(kind, "fr", to, {"new_address": "j***@e*****.fr"}, "f" * length, AT)
        _same(MESSAGES, item, "p1.secret", SETTINGS)
