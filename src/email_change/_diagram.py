"""The state diagram of the procedure, generated from :class:`EmailChangeMachine`, never drawn.

``docs/state-diagram.md`` is :func:`markdown` verbatim; a test regenerates it and fails when the
committed file differs, so the documentation cannot drift from the transition table.

>>> mermaid().splitlines()[0]
'stateDiagram-v2'
>>> "code_sent --> code_verified" in mermaid()
True
"""

from __future__ import annotations

from email_change._machine import EmailChangeMachine

__all__ = ["markdown", "mermaid"]


def mermaid() -> str:
    """The Mermaid ``stateDiagram-v2`` source of the machine, ending with a newline."""
    # python-statemachine 3 formats the class itself: ``f"{cls:mermaid}"`` (no Graphviz needed).
    return f"{EmailChangeMachine:mermaid}".rstrip("\n") + "\n"


def markdown() -> str:
    """The Markdown page that holds the diagram (what ``email-change diagram`` prints)."""
    return (
        "<!-- Generated from email_change._machine.EmailChangeMachine by "
        "email_change._diagram.markdown(); do not edit. -->\n"
        "```mermaid\n" + mermaid() + "```\n"
    )
