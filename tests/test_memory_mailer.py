"""``InMemoryMailer.to()`` finds a recipient's mails the way the procedure compares addresses."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from email_change.adapters import memory


def mail(to: str, subject: str = "hello") -> EmailMessage:
    message = EmailMessage()
    message["To"] = to
    message["Subject"] = subject
    message.set_content("body")
    return message


@pytest.mark.parametrize(
    ("sent_to", "asked"),
    [
        ("Jeanne.Martin@Exemple.FR", "jeanne.martin@exemple.fr"),
        ("jeanne.martin@exemple.fr", "JEANNE.MARTIN@EXEMPLE.FR"),
        ("jeanne@exämple.fr", "jeanne@xn--exmple-cua.fr"),  # Unicode and IDNA forms of one domain
        ("jeanne@xn--exmple-cua.fr", "Jeanne@EXÄMPLE.fr"),
        ("Jeanne Martin <jeanne@exemple.fr>", " jeanne@exemple.fr "),  # a display name, spaces
    ],
)
def test_to_matches_case_insensitively_and_across_idn_forms(sent_to: str, asked: str) -> None:
    mailer = memory.InMemoryMailer()
    mailer.send(mail(sent_to))
    mailer.send(mail("paul@exemple.fr"))
    assert [m["Subject"] for m in mailer.to(asked)] == ["hello"]


def test_to_keeps_the_order_and_tells_addresses_apart() -> None:
    mailer = memory.InMemoryMailer()
    for n, to in enumerate(["a@exemple.fr", "b@exemple.fr", "A@exemple.fr", "a@exemple.com"]):
        mailer.send(mail(to, subject=str(n)))
    assert [m["Subject"] for m in mailer.to("a@EXEMPLE.fr")] == ["0", "2"]
    assert mailer.to("nobody@exemple.fr") == []
    assert mailer.to("not an address") == []
