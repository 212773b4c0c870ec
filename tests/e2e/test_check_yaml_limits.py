"""`triggerd check` on YAML that would explode: refused with `file:line: message`, exit 2, at
once, and never a Python traceback."""

from __future__ import annotations

import time

import pytest
from harness import Triggerd

BOMB = "".join(
    [f"lol0: &lol0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 10)])


@pytest.mark.parametrize("main, included", [
    (BOMB, None),
    ('include: ["rules.d/*.yaml"]\n', BOMB),
    ("retention: 7d\nloop: &a\n  x: 1\n  <<: *a\n", None),
    ("retention: 7d\nx: " + "[" * 100_000 + "]" * 100_000 + "\n", None),
], ids=["bomb", "bomb-in-include", "merge-recursion", "100k-deep"])
def test_check_refuses_exploding_yaml(td: Triggerd, main: str, included: str | None) -> None:
    td.config.write_text(main)
    bad = td.config
    if included is not None:
        bad = td.root / "rules.d" / "bomb.yaml"
        bad.parent.mkdir()
        bad.write_text(included)
    began = time.monotonic()
    res = td.cli("check")
    elapsed = time.monotonic() - began
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith(f"{bad}:") and first.split(":")[1].isdigit(), res.stderr
    assert elapsed < 10  # the process start dominates; the refusal itself is milliseconds
