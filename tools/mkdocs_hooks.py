"""MkDocs hook: the docs site carries its own copy of mermaid, so the state diagram renders with
no network at all.

mermaid comes from the npm registry at build time (``make npm`` installs ``tools/npm``, pinned
by its lock file); Material for MkDocs uses the copy the page loads instead of fetching one from
a CDN. Checked in Chromium with every non-local request blocked: ``tests/test_docs_site.py``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
MERMAID = ROOT / "tools" / "npm" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
#: Where the site serves it (``extra_javascript`` in mkdocs.yml).
TARGET = "assets/vendor/mermaid.min.js"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the vendored mermaid to the site's files."""
    if not MERMAID.is_file():
        raise PluginError(f"{MERMAID} is missing: run `make npm` (npm ci in tools/npm)")
    files.append(File.generated(config, TARGET, abs_src_path=str(MERMAID)))
    return files
