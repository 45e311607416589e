"""Runs every Python example of the documentation (``docs/**/*.md``) under pytest, with Sybil.

Each page is one namespace: its ``python`` blocks run top to bottom, so a page reads as one
session. Blocks in other languages (shell, Mermaid, TOML) are not run.
"""

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser()],
    patterns=["*.md"],
).pytest()
