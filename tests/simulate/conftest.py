"""Fixtures of the `triggerd test` tests: `tt` writes test files and runs them (simtest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from replaytest import CONFIG, Replay
from simtest import TestRunner


@pytest.fixture
def tt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> TestRunner:
    return TestRunner(tmp_path, capsys)


@pytest.fixture
def rp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Replay:
    """A directory with the replay tests' config, and `triggerd replay` run in it."""
    r = Replay(tmp_path, capsys)
    r.file("triggerd.yaml", CONFIG)
    return r
