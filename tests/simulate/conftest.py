"""Fixtures of the `triggerd test` tests: `tt` writes test files and runs them (simtest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from simtest import TestRunner


@pytest.fixture
def tt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> TestRunner:
    return TestRunner(tmp_path, capsys)
