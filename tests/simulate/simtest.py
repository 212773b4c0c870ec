"""Running `triggerd test` as a user does, on test files written by each test (the `tt`
fixture of conftest.py)."""

from __future__ import annotations

import json
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from triggerd.cli import main
from triggerd.config.loader import Config, load_config

CONFIG = Path(__file__).parent / "data" / "triggerd.yaml"


def config_from_text(text: str) -> Config:
    """A config loaded from YAML text, as `triggerd` loads a file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "triggerd.yaml"
        path.write_text(text)
        return load_config(path)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class TestRunner:
    """Writes a test file (the config under test and a start time prepended) and runs
    `triggerd test` on it through the CLI's `main`, capturing what it prints."""

    __test__ = False

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys

    def write(self, body: str, name: str = "rules.test.yaml", *, header: bool = True) -> Path:
        path = self.tmp_path / name
        head = f"config: {CONFIG}\nstart: 2026-03-02T00:00:00Z\n" if header else ""
        path.write_text(head + textwrap.dedent(body))
        return path

    def run(self, body: str, *args: str) -> Ran:
        return self.run_files(self.write(body), *args)

    def run_files(self, *args: str | Path) -> Ran:
        self.capsys.readouterr()
        code = main(["test", *map(str, args)])
        captured = self.capsys.readouterr()
        return Ran(code, captured.out, captured.err)
