"""``email_change.testing.world``: the one-call world and its mailbox, by insured and by kind."""

from __future__ import annotations

import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

import email_change as ec
from email_change import testing
from email_change._machine import CODE, LINK, REVERT
from email_change._messages import is_addressed_to
from email_change.adapters import memory
from email_change.adapters.sql import SQLiteDatabase, SQLProcedureStore
from email_change.adapters.system import SecretsRandom
from email_change.testing import INSUREDS, START, World, world
from email_change.testing._mailbox import plain_text_of


def _live_code_matches(w: World, pid: str, code: str) -> bool:
    proc = w.store.load(pid)
    assert proc is not None and proc.code is not None
    return w.keyring.verify(CODE, pid, code, proc.code.digest)


def test_the_default_world_holds_one_card_of_each_model_and_its_insureds() -> None:
    w = world()
    models = {card.model for i in w.insureds for card in w.registry.cards_of(i.id)}
    assert models == set(ec.CardModel)
    for insured in INSUREDS:
        assert str(w.directory.current_address(insured.id)) == insured.address
        assert tuple(w.registry.cards_of(insured.id)) == insured.cards
    assert w.clock.now() == START
    assert isinstance(w.store, memory.InMemoryProcedureStore)
    assert [i.serial for i in w.insureds] == ["12345678901", None, "87654321"]
    assert w.insured("insured-3").id == "insured-3"
    with pytest.raises(LookupError):
        w.insured("nobody")


def test_the_mailbox_gives_each_insured_their_own_last_code() -> None:
    w = world()
    jeanne, lea = w.insured("insured-1"), w.insured("insured-3")
    first = w.service.start(jeanne.id).procedure_id
    other = w.service.start(lea.id).procedure_id
    assert _live_code_matches(w, first, w.mailbox.code(jeanne.id))
    assert _live_code_matches(w, other, w.mailbox.code(lea.id))
    w.advance(w.policy.resend_cooldown)
    w.service.resend_code(jeanne.id, first)
    assert len(w.mailbox.mails(jeanne.id, ec.MailKind.SECURITY_CODE)) == 2
    assert len(w.mailbox.mails(lea.id)) == 1
    assert _live_code_matches(w, first, w.mailbox.code(jeanne.id))  # the newest one
    with pytest.raises(LookupError, match="no security_code mail"):
        w.mailbox.code("insured-2")


def test_the_links_are_found_by_kind_and_work() -> None:
    w = world()
    jeanne = w.insured()
    pid = w.register()
    proc = w.store.load(pid)
    assert proc is not None and proc.link is not None and proc.revert_digest is not None
    token = w.mailbox.confirmation_token(jeanne.id)
    assert w.mailbox.confirmation_link(jeanne.id).startswith(w.mail_settings.confirm_url + "?")
    assert w.keyring.verify(LINK, pid, token.split(".", 1)[1], proc.link.digest)
    revert = w.mailbox.revert_token(jeanne.id)
    assert w.mailbox.revert_link(jeanne.id).startswith(w.mail_settings.revert_url + "?")
    assert w.keyring.verify(REVERT, pid, revert.split(".", 1)[1], proc.revert_digest)
    # The confirmation went to the new address, the notice to the current one.
    confirm_mail = w.mailbox.last(jeanne.id, ec.MailKind.CONFIRM_ADDRESS)
    assert is_addressed_to(confirm_mail, jeanne.new_address)
    assert print_state(w.service.confirm(token)) == "confirmed"
    with pytest.raises(LookupError):
        w.mailbox.link_in(w.mailbox.last(jeanne.id, ec.MailKind.SECURITY_CODE))
    with pytest.raises(LookupError):
        w.mailbox.code_in(confirm_mail)


def print_state(view: ec.ProcedureView) -> str:
    return str(view.state)


def test_the_mailbox_reads_any_language_and_any_wording(tmp_path: Path) -> None:
    """Not by subject, not by a French sentence: a host's own wording and English both work."""
    (tmp_path / "fr.toml").write_text(
        '[mail.security_code]\nsubject = "Votre code"\n'
        'text = "Bonjour,\\nCode à saisir :: {code}\\nAide : 3646\\n{help}"\n',
        "utf-8",
    )
    w = world(messages=ec.Messages(extra_dir=tmp_path))
    pid = w.service.start("insured-1").procedure_id
    code = w.mailbox.code("insured-1")
    assert _live_code_matches(w, pid, code)
    english = world()
    pid = english.service.start("insured-3", locale="en").procedure_id
    assert _live_code_matches(english, pid, english.mailbox.code("insured-3"))


def test_a_world_on_a_sqlite_file(tmp_path: Path) -> None:
    with world(sqlite=tmp_path / "kit.sqlite3") as w:
        assert isinstance(w.store, SQLProcedureStore)
        pid = w.register("insured-3")
        assert print_state(w.service.confirm(w.mailbox.confirmation_token("insured-3"))) == (
            "confirmed"
        )
        assert str(w.directory.current_address("insured-3")) == "lea@nouveau.fr"
        assert w.store.load(pid) is not None
    assert (tmp_path / "kit.sqlite3").exists()


def test_a_world_on_a_given_store_and_with_the_system_random() -> None:
    store = memory.InMemoryProcedureStore()
    w = world(store=store, seed=None)
    assert w.store is store
    assert isinstance(w.service._rng, SecretsRandom)
    w.register()
    with pytest.raises(TypeError, match="not both"):
        world(store=store, sqlite="x.sqlite3")


def test_the_form_helper_fills_in_every_field() -> None:
    w = world()
    form = w.form("insured-3", general_information=None)
    assert form.new_address == form.confirmation == "lea@nouveau.fr"
    assert form.general_information is None and form.studies_and_research is True
    with pytest.raises(LookupError, match="no usable card"):
        w.register("insured-2")


def test_restarted_keeps_the_deployment_and_changes_what_it_is_told() -> None:
    w = world()
    pid = w.service.start("insured-1").procedure_id
    strict = w.restarted(policy=ec.Policy(wrong_tries_per_code=1))
    assert strict.store is w.store and strict.clock is w.clock and strict.mailer is w.mailer
    assert strict.policy.wrong_tries_per_code == 1
    code = strict.mailbox.code("insured-1")
    wrong = f"{(int(code) + 1) % 10_000:04d}"
    with pytest.raises(ec.WrongCode) as caught:
        strict.service.submit_code("insured-1", pid, wrong)
    assert caught.value.tries_left == 0
    store = memory.InMemoryProcedureStore()
    moved = w.restarted(store=store, seed=None)
    assert moved.store is store and moved.service.current("insured-1") is None


def test_a_world_takes_the_clock_directory_and_mailer_it_is_given() -> None:
    clock = memory.FakeClock(START)
    directory = memory.InMemoryAccountDirectory({"insured-1": "autre@exemple.fr"})
    mailer = memory.InMemoryMailer()
    w = world(clock=clock, directory=directory, mailer=mailer)
    assert (w.clock, w.directory, w.mailer) == (clock, directory, mailer)
    w.service.start("insured-1")
    assert len(mailer.to("autre@exemple.fr")) == 1


def test_the_world_and_the_strategies_need_no_pytest() -> None:
    """Only the contract suites need pytest: the demo and a fuzzer use the world without it."""
    script = (
        "import sys\n"
        "class NoPytest:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytest', '_pytest'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoPytest())\n"
        "from email_change.testing import world, strategies, journeys\n"
        "print(world().register())\n"
        "try:\n"
        "    from email_change.testing import ProcedureStoreContract\n"
        "except ImportError:\n"
        "    print('contracts need pytest')\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter on our own script
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines()[1] == "contracts need pytest"


def test_the_mailbox_refuses_what_is_not_a_mail_of_the_procedure() -> None:
    """A forged or foreign mail is nobody's, and a mail without its secret says so."""
    w = world()
    w.service.start("insured-1")
    real = w.mailbox.last("insured-1", ec.MailKind.SECURITY_CODE)
    forged = EmailMessage()
    forged[ec.MAIL_KIND_HEADER] = ec.MailKind.SECURITY_CODE.value
    forged["Message-ID"] = "<not-an-item@exemple.fr>"
    forged.set_content("Bonjour, pas de code ici.")
    w.mailer.send(forged)
    assert w.mailbox.mails("insured-1") == [real]
    with pytest.raises(LookupError, match="no code"):
        w.mailbox.code_in(forged)
    forged.replace_header(ec.MAIL_KIND_HEADER, ec.MailKind.CONFIRM_ADDRESS.value)
    with pytest.raises(LookupError, match="no link"):
        w.mailbox.link_in(forged)
    forged.replace_header(ec.MAIL_KIND_HEADER, ec.MailKind.REGISTRATION_CANCELLED.value)
    assert w.mailbox.secret_in(forged) is None
    html_only = EmailMessage()
    html_only.set_content("<p>code</p>", subtype="html")
    with pytest.raises(LookupError, match="no text part"):
        plain_text_of(html_only)


def test_a_world_that_cannot_be_built_closes_its_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[object] = []
    real_close = SQLiteDatabase.close

    def close(db: SQLiteDatabase) -> None:
        closed.append(db)
        real_close(db)

    monkeypatch.setattr(SQLiteDatabase, "close", close)
    with pytest.raises(TypeError, match="policy"):
        world(sqlite=tmp_path / "x.sqlite3", policy="strict")  # type: ignore[arg-type]
    assert len(closed) == 1
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = testing.Nothing


def test_the_lazy_names_are_exactly_the_contract_module_s() -> None:
    """The package lists the contract names it loads on first use (so that importing it needs
    no pytest); the list must follow the module's own."""
    from email_change.testing import _CONTRACTS, _contracts

    assert frozenset(_contracts.__all__) == _CONTRACTS
    assert set(testing.__all__) >= _CONTRACTS
