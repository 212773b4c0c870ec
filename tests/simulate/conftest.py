"""Fixtures of the `triggerd test` tests: `tt` writes test files and runs them (simtest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from replaytest import CONFIG, Replay
from simtest import TestRunner

from triggerd.simulate import runner
from triggerd.simulate.dictstore import DictStore


@pytest.fixture(params=["sql", "dicts"])
def tt(request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str],
       monkeypatch: pytest.MonkeyPatch) -> TestRunner:
    """Each `triggerd test` runs on the SQL store (as the command does), and again on the
    dict store `triggerd replay` runs on: the same timelines pass on both."""
    if request.param == "dicts":
        monkeypatch.setattr(runner, "fresh_store", DictStore)
    return TestRunner(tmp_path, capsys)


@pytest.fixture
def rp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Replay:
    """A directory with the replay tests' config, and `triggerd replay` run in it."""
    r = Replay(tmp_path, capsys)
    r.file("triggerd.yaml", CONFIG)
    return r
