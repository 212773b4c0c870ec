"""The repository stands alone: no file refers to the team's contract outside it (a user has
only this repository: the README and the code's own docs must say everything)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./shared|SPEC\.md|DESIGN\.md|\bSPEC (section|\d)")


def test_no_file_refers_to_documents_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    found = []
    for name in tracked:
        path = REPO / name
        if path.suffix in {".png", ".gz", ".whl"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                  for m in OUTSIDE.finditer(text) if name != "tests/test_self_contained.py"]
    assert found == []
