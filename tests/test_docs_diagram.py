"""The state diagram in the docs is the machine's own: regenerate it and compare.

To refresh the committed page after changing the machine: ``make diagram`` (or
``EMAIL_CHANGE_WRITE_DOCS=1 pytest tests/test_docs_diagram.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from email_change import EmailChangeMachine
from email_change._diagram import markdown, mermaid

PAGE = Path(__file__).resolve().parent.parent / "docs" / "state-diagram.md"


def test_committed_diagram_is_current() -> None:
    expected = markdown()
    if os.environ.get("EMAIL_CHANGE_WRITE_DOCS") == "1":
        PAGE.write_text(expected, encoding="utf-8")
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "docs/state-diagram.md is stale: run `make diagram`"
    )


def test_diagram_names_every_state_and_event() -> None:
    text = mermaid()
    for state in EmailChangeMachine.states:
        assert f"as {state.id}" in text
    # Internal self-transitions (resend_code, resend_confirmation, counted wrong tries) are drawn as
    # state annotations, the others as arrows labelled with the event's name.
    events = {e for s in EmailChangeMachine.states for t in s.transitions for e in t.events}
    assert len(events) == 12
    for event in events:
        assert event.id in text or event.name in text, event.id
