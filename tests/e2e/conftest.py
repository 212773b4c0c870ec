"""Fixtures of the end-to-end tests (helpers live in harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Triggerd


@pytest.fixture
def td(tmp_path: Path) -> Iterator[Triggerd]:
    t = Triggerd(tmp_path)
    try:
        yield t
    finally:
        t.close()
