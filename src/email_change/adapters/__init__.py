"""Adapters for the ports of :mod:`email_change`, one module per technology.

``memory``: in-memory fakes for tests and demos (usable by hosts in their own tests).
``system``: the real clock and the CSPRNG. Modules with optional dependencies are imported by
their users only, so a missing extra matters only to whoever needs it.
"""
