"""The `triggerd test` example of the docs (docs/testing.md) is the file tests/simulate/data/readme
holds, and it passes; with its first expectation wrong, the output is the one the page shows."""

from __future__ import annotations

import shutil
from pathlib import Path

from simtest import TestRunner

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "readme"
EXAMPLE = DATA / "tests" / "rules" / "sales.test.yaml"


def _block(after: str, fence: str) -> str:
    text = (REPO / "docs" / "testing.md").read_text()
    begin = text.index(fence, text.index(after)) + len(fence)
    return text[begin:text.index("```\n", begin)]


def test_the_docs_example_is_this_file_and_passes(tt: TestRunner) -> None:
    assert _block("A complete file (`config/triggerd.example.test.yaml`", "```yaml\n") == \
        EXAMPLE.read_text()
    ran = tt.run_files(EXAMPLE)
    assert ran.code == 0, ran.out + ran.err


def test_the_docs_show_the_output_of_a_failure(tt: TestRunner) -> None:
    copy = tt.tmp_path / "readme"
    shutil.copytree(DATA, copy)
    failing = copy / "tests" / "rules" / "sales.test.yaml"
    failing.write_text(EXAMPLE.read_text().replace("{at: 1h10s, rule: sales",
                                                   "{at: 1m40s, rule: sales"))
    ran = tt.run_files(failing)
    assert ran.code == 1
    shown = _block("then a summary line.", "```\n").splitlines()
    got = ran.out.replace(str(failing), "tests/rules/sales.test.yaml").splitlines()
    assert got == shown
