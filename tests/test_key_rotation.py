"""Rotating the HMAC/sealing key while procedures are in flight."""

from __future__ import annotations

from datetime import timedelta

import pytest

import email_change as ec
from email_change.adapters import memory
from email_change.testing import ledger_of
from tests.support import INSURED, NEW, SERIAL, World, form, make_world

OLD_KEY, NEW_KEY = b"o" * 32, b"n" * 32


def _parts(world: World, *, seed: int) -> tuple[World, memory.SeededRandom]:
    """Everything but the keyring: the same adapters (and generator) before and after."""
    return world, memory.SeededRandom(seed)


def _rebuild(
    parts: tuple[World, memory.SeededRandom], keyring: ec.Keyring
) -> ec.EmailChangeService:
    world, rng = parts
    return world.kit.restarted(keyring=keyring, rng=rng).service


def test_codes_links_and_pending_mails_survive_a_rotation() -> None:
    world = make_world()
    parts = _parts(world, seed=11)
    before = _rebuild(parts, ec.Keyring(keys={"2026-01": OLD_KEY}, current="2026-01"))
    world.mailer.fail_next = 1  # the code mail stays sealed in the outbox under the old key
    pid = before.start(INSURED).procedure_id
    stored = world.store.load(pid)
    assert stored is not None and stored.code is not None
    assert stored.code.digest.key_id == "2026-01"

    # Step 1 of the rotation: add the new key and make it current; keep the old one.
    rotated = _rebuild(
        parts, ec.Keyring(keys={"2026-01": OLD_KEY, "2026-07": NEW_KEY}, current="2026-07")
    )
    world.clock.advance(seconds=10)
    assert rotated.relay.run_once().delivered == 1
    world.service = rotated
    assert rotated.submit_code(INSURED, pid, world.code()).state == "code_verified"
    rotated.submit_serial(INSURED, pid, SERIAL)
    rotated.submit_new_address(INSURED, pid, form())
    stored = world.store.load(pid)
    assert stored is not None and stored.link is not None
    assert stored.link.digest.key_id == "2026-07"

    # Step 2, once every secret made under the old key has expired: drop it.
    retired = _rebuild(parts, ec.Keyring(keys={"2026-07": NEW_KEY}, current="2026-07"))
    assert retired.confirm(world.token(NEW)).state == "confirmed"


def test_a_code_made_under_a_removed_key_is_refused_not_crashed() -> None:
    world = make_world()
    parts = _parts(world, seed=12)
    old = _rebuild(parts, ec.Keyring(keys={"2026-01": OLD_KEY}, current="2026-01"))
    pid = old.start(INSURED).procedure_id
    too_early = _rebuild(parts, ec.Keyring(keys={"2026-07": NEW_KEY}, current="2026-07"))
    before = world.store.snapshot()
    # The right code, under a key the keyring no longer holds: dead, not wrong, and not counted
    # against the insured (it used to be answered code.wrong and spend a try of their day).
    for _ in range(3):
        with pytest.raises(ec.CodeSpent):
            too_early.submit_code(INSURED, pid, world.code())
    assert world.store.snapshot() == before
    assert ledger_of(world.store, INSURED, world.clock.now() - timedelta(days=1)) == [
        e
        for e in ledger_of(world.store, INSURED, world.clock.now() - timedelta(days=1))
        if e.kind is ec.LedgerKind.CODE_SENT
    ]
    # A new code, under the current key, carries on.
    world.clock.advance(seconds=31)
    too_early.resend_code(INSURED, pid)
    assert too_early.submit_code(INSURED, pid, world.code()).state == "code_verified"
