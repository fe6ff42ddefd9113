"""The vendored htmx files are the published ones (hashes in services/console/static/VENDORED.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[3] / "services" / "console" / "static"


def test_vendored_files_match_their_recorded_hashes():
    table = (STATIC / "VENDORED.md").read_text()
    recorded = dict(re.findall(r"^\| (\S+\.js) \|.*\| ([0-9a-f]{64}) \|$", table, re.M))
    assert set(recorded) == {"htmx.min.js", "htmx-ext-sse.min.js"}
    for name, digest in recorded.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name


def test_templates_have_no_inline_script_or_style():
    """The CSP forbids them; a template that used one would silently break in the browser."""
    for template in (STATIC.parent / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert "<style" not in text and not re.search(r"\sstyle=", text), template.name
        assert not re.search(r"\s(on[a-z]+|hx-on[:\w-]*)\s*=", text) and "javascript:" not in text, template.name
