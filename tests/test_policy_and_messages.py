"""Policy bounds, message catalogues, the demo transcript."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

import email_change as ec
from email_change import _demo


@pytest.mark.parametrize(
    "kwargs",
    [
        {"code_length": 11},
        {"code_lifetime": timedelta(0)},
        {"wrong_tries_per_code": 0},
        {"resend_cooldown": timedelta(seconds=-1)},
    ],
)
def test_policy_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        ec.Policy(**kwargs)  # type: ignore[arg-type]


def test_every_error_code_has_french_and_english_text() -> None:
    messages = ec.Messages()
    codes = {
        cls.code
        for cls in vars(ec).values()
        if isinstance(cls, type) and issubclass(cls, ec.EmailChangeError)
    } - {"error"}
    for locale in ("fr", "en"):
        for code in codes:
            text = messages.error_text(code, locale)
            assert text != messages.error_text("no-such-code", locale), (locale, code)


def test_error_message_fills_fields_and_unknown_codes_fall_back() -> None:
    messages = ec.Messages()
    assert "2" in messages.error_message(ec.WrongSerial(tries_left=2), "en")
    assert messages.error_text("nope", "en") == "Something went wrong. Please try again."


def test_translator_override_folder(tmp_path: Path) -> None:
    (tmp_path / "fr.toml").write_text('[errors]\n"address.same" = "Déjà la vôtre."\n', "utf-8")
    (tmp_path / "de.toml").write_text('[errors]\n"address.same" = "Schon Ihre."\n', "utf-8")
    messages = ec.Messages(extra_dir=tmp_path)
    assert messages.error_text("address.same", "fr") == "Déjà la vôtre."
    assert messages.error_text("address.same", "de") == "Schon Ihre."
    assert messages.error_text("address.mismatch", "de").startswith("Les deux adresses")


def test_card_help_for_every_model() -> None:
    messages = ec.Messages()
    for model in ec.CardModel:
        assert messages.card_help(model, "fr")
        assert messages.card_help(model, "en")
    assert "8025000002" in messages.card_help(ec.CardModel.WITH_PHOTO)


def test_errors_are_typed_and_describe_without_secrets() -> None:
    error = ec.WrongCode(tries_left=1, codes_left=2)
    assert error.code == "code.wrong"
    assert str(error) == "code.wrong (tries_left=1, codes_left=2)"
    assert str(ec.CodeSpent()) == "code.spent"
    assert {a.name for a in attrs.fields(ec.EventNotAllowed)} == {"event", "state"}


def test_mail_settings_validate_urls_and_addresses() -> None:
    with pytest.raises(ValueError, match="absolute"):
        ec.MailSettings(confirm_url="/relative", revert_url="https://a.fr/r")
    with pytest.raises(ValueError, match="without query"):
        ec.MailSettings(confirm_url="https://a.fr/c?x=1", revert_url="https://a.fr/r")
    with pytest.raises(ec.InvalidAddress):
        ec.MailSettings(confirm_url="https://a.fr/c", revert_url="https://a.fr/r", sender="nope")


def test_demo_runs_the_whole_journey() -> None:
    out = io.StringIO()
    assert _demo.main(out) == 0
    transcript = out.getvalue()
    for expected in (
        "refused [code.wrong]",
        "refused [code.expired]",
        "refused [resend.cooldown]",
        "refused [serial.wrong]",
        "refused [address.mismatch]",
        "may the insured log in? False",
        "state: confirmed",
        "may the insured log in? True",
    ):
        assert expected in transcript
