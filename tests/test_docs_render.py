"""The documentation renders, and no file carries a merge's conflict markers.

A merge once left a stray `=======` in docs/controller.rst, which broke its reason-code
table: every .rst the project ships is parsed by docutils here, warnings as failures,
and every tracked text file is searched for the markers git writes.
"""

import glob
import io
import os
import re
import subprocess

import docutils.core
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = sorted(os.path.relpath(path, ROOT) for path in
                   [os.path.join(ROOT, "README.rst")]
                   + glob.glob(os.path.join(ROOT, "docs", "*.rst"))
                   + glob.glob(os.path.join(ROOT, "tests", "**", "*.rst"), recursive=True))
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_renders_without_warnings(document):
    warnings = io.StringIO()
    with open(os.path.join(ROOT, document), encoding="utf-8") as text:
        docutils.core.publish_doctree(text.read(), source_path=document, settings_overrides={
            "report_level": 2, "halt_level": 5, "warning_stream": warnings})
    assert warnings.getvalue() == "", warnings.getvalue()


def test_no_file_carries_merge_conflict_markers():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    found = []
    for name in filter(None, tracked):
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path) or name.startswith("tests/data/"):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        if b"\0" in data:
            continue
        text = data.decode("utf-8", "replace")
        for match in MARKER.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if not _rst_rule(text, match.start(), name):
                found.append(f"{name}:{line}")
    assert found == []


def _rst_rule(text, start, name):
    """`=======` alone is also an RST title rule: allowed when the line above or below is
    text of the same length (a title), in .rst files only."""
    if not name.endswith(".rst"):
        return False
    lines = text[:start].split("\n")
    above = lines[-2] if len(lines) > 1 else ""
    below = text[start:].split("\n")[1] if "\n" in text[start:] else ""
    return any(len(line.rstrip()) == 7 and not line.startswith("=") for line in (above, below))
