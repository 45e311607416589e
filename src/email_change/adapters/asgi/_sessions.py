"""The web UI's own login session (when the app does the login, ``authenticate``)."""

from __future__ import annotations

from starlette.requests import Request

__all__ = ["SESSION_INSURED", "session_insured"]

#: Session key under which the web UI keeps the logged-in insured (see :func:`session_insured`).
SESSION_INSURED = "insured"


def session_insured(request: Request) -> str | None:
    """An :data:`InsuredHook` reading the insured the web UI's login put in the signed session."""
    value = request.session.get(SESSION_INSURED)
    return value if isinstance(value, str) else None
