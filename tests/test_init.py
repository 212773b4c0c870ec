"""`triggerd init [DIR] --pattern P`: each pattern's starter config passes `triggerd check`
as written, and an existing file is never replaced without `--force`."""

from __future__ import annotations

from pathlib import Path

import pytest

from triggerd.cli import main
from triggerd.cli.init import PATTERNS
from triggerd.config.loader import load_config


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_each_pattern_writes_a_config_check_passes(
        tmp_path: Path, pattern: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new" / "triggerd.yaml"
    assert main(["init", str(tmp_path / "new"), "--pattern", pattern]) == 0
    assert f"wrote {path} ({pattern})" in capsys.readouterr().out
    config = load_config(path)
    assert config.rules and config.backends and config.sources
    assert main(["check", "--config", str(path)]) == 0
    for options in config.sources.values():  # run from DIR, as init says, its folder exists
        for root in getattr(options, "paths", []):
            assert (path.parent / root).is_dir(), root


def test_an_existing_file_is_kept_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_text("# my own config\n")
    assert main(["init", str(tmp_path)]) == 2
    assert "exists; choose another DIR, or --force" in capsys.readouterr().err
    assert path.read_text() == "# my own config\n"
    assert main(["init", str(tmp_path), "--pattern", "periodic", "--force"]) == 0
    assert "nightly-if-new-data" in path.read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # written whole, then moved into place


def test_the_default_pattern_is_the_landing_folder_and_print_shows_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--print"]) == 0
    assert capsys.readouterr().out == PATTERNS["landing"]
