"""The worked example of docs/plugins.md (docs/examples/plugin) works as the page says.

The example package is "installed" the way test_plugin.py installs one: its directory on the
path, plus a `.dist-info` whose `entry_points.txt` is written from the example's own
pyproject.toml, so the entry points the page shows are the ones triggerd finds. Then:
the real daemon runs the example config (a line appended to the followed file becomes an
event, the rule fires, the `jsonl` backend writes the trigger's line; a second dispatch of the
same trigger adds none), `triggerd check` points at a bad option with `file:line`, and
`triggerd test` runs the example's test file. The example's own unit tests are collected here
too, and the page must include every file of the example.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import shutil
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from polling import until

from triggerd import registry
from triggerd.cli import main
from triggerd.config.loader import load_config
from triggerd.config.types import InheritsEnvironment
from triggerd.interfaces import Backend, Source
from triggerd.model import JobStatus, TriggerContext
from triggerd.runtime import Daemon
from triggerd.runtime.build import build_backend
from triggerd.store import queries

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = DOCS / "examples" / "plugin"
KEY = "example-ledger-key-4711"

# the example's own unit tests (docs/examples/plugin/tests), collected as tests of this module;
# the example stays importable through sys.modules, off the path (where a `pip install -e` of it
# would leave an .egg-info that registers its entry points for every other test)
_paths = [str(EXAMPLE), str(EXAMPLE / "tests")]
sys.path[:0] = _paths
try:
    _unit = importlib.import_module("test_triggerd_example")
finally:
    for _path in _paths:
        sys.path.remove(_path)
globals().update({f"test_example_{name[5:]}": fn for name, fn in vars(_unit).items()
                  if name.startswith("test_") and callable(fn)})


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example package as pip would leave it: its entry points from its pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    dist = tmp_path / "site" / f"triggerd_example-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
        for group, eps in project["entry-points"].items()))
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the package, where an install puts it
    monkeypatch.syspath_prepend(str(dist.parent))
    for var in ("TRIGGERD_CONFIG", "TRIGGERD_STORE", "TRIGGERD_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    registry.source_types.cache_clear()  # discovered once per process: look again
    registry.backend_types.cache_clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        registry.source_types.cache_clear()
        registry.backend_types.cache_clear()


def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example config copied to a fresh directory, the daemon's working directory."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLE / "triggerd.yaml", work / "triggerd.yaml")
    monkeypatch.chdir(work)
    return work


def ledger(work: Path) -> list[dict[str, Any]]:
    path = work / "state" / "retrains.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_entry_points_name_the_example_classes(installed: None) -> None:
    from triggerd_example.jsonl import JsonlBackend
    from triggerd_example.lines import LinesSource

    assert registry.source_types()["lines"] == "triggerd_example.lines:LinesSource"
    assert registry.backend_types()["jsonl"] == "triggerd_example.jsonl:JsonlBackend"
    assert registry.source_class("lines") is LinesSource
    assert registry.backend_class("jsonl") is JsonlBackend


async def test_the_daemon_runs_the_example_config(installed: None, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from triggerd_example.jsonl import sign

    work = workdir(tmp_path, monkeypatch)
    monkeypatch.setenv("LEDGER_KEY", KEY)
    config = load_config(work / "triggerd.yaml")
    daemon = Daemon(config)
    run = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready and "published" in daemon.supervisor.contexts)
        source = daemon.supervisor.contexts["published"]
        await until(lambda: not source.healthy)  # published.log does not exist yet
        assert "cannot read published.log" in str(source.error)
        (work / "published.log").write_text("fraud v2\nchurn v7\n")
        await until(lambda: source.healthy)
        job = await until(lambda: (found := queries.job(daemon.store, "retrain-churn.1"))
                          is not None and found.status.final and found)
        assert (job.status, job.external_id, job.detail) == (
            JobStatus.SUCCEEDED, "retrains.jsonl:1", "appended")
        assert source.details is not None and source.details["lines"] == 2
        assert isinstance(daemon.dispatcher.backends["ledger"], Backend)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(run, 20) == 0

    (record,) = ledger(work)  # "fraud v2" matched no rule: one trigger, one line
    assert {k: record[k] for k in ("trigger_id", "rule", "params", "events")} == {
        "trigger_id": "retrain-churn.1", "rule": "retrain-churn", "params": {"model": "churn"},
        "events": 1}
    assert record["signature"] == sign(KEY.encode(), record)
    assert KEY not in (work / "state" / "retrains.jsonl").read_text()

    # the same trigger dispatched again (a retry, a restart after a crash): no second line
    backend = build_backend(config, "ledger", config.backends["ledger"])
    again = TriggerContext(trigger_id="retrain-churn.1", rule="retrain-churn", group="",
                           fired_at=datetime.now(UTC), reason="again", manual=False,
                           params={"model": "churn"}, events=[], attempt=2)
    handle = _Handle()
    result = await backend.dispatch(again, handle)
    assert (result.detail, result.external_id, handle.external_ids) == (
        "already recorded", "retrains.jsonl:1", ["retrains.jsonl:1"])
    assert [r["trigger_id"] for r in ledger(work)] == ["retrain-churn.1"]

    # a restart: the lines already read are not events again; a new line is
    daemon = Daemon(load_config(work / "triggerd.yaml"))
    run = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready and "published" in daemon.supervisor.contexts)
        with (work / "published.log").open("a") as fh:
            fh.write("churn v8\n")
        job = await until(lambda: (found := queries.job(daemon.store, "retrain-churn.2"))
                          is not None and found.status.final and found)
        assert (job.status, job.external_id) == (JobStatus.SUCCEEDED, "retrains.jsonl:2")
        assert queries.job(daemon.store, "retrain-churn.3") is None
    finally:
        daemon.stop()
        assert await asyncio.wait_for(run, 20) == 0
    assert [(r["trigger_id"], r["events"]) for r in ledger(work)] == [
        ("retrain-churn.1", 1), ("retrain-churn.2", 1)]


class _Handle:
    def __init__(self) -> None:
        self.job_id, self.attempt = "retrain-churn.1", 2
        self.launched: Future[Any] | None = None
        self.external_ids: list[str] = []

    async def set_external_id(self, external_id: str) -> None:
        self.external_ids.append(external_id)


def test_triggerd_check_accepts_the_example_and_points_at_a_bad_option(
        installed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    work = workdir(tmp_path, monkeypatch)
    good = work / "triggerd.yaml"
    assert main(["check", "--config", str(good)]) == 0
    assert "ok: 1 source(s), 1 backend(s), 1 rule(s)" in capsys.readouterr().out

    text = good.read_text()
    bad = work / "bad.yaml"
    bad.write_text(text.replace("poll: 200ms", "poll: 5ms")
                   .replace("hmac_key_env: LEDGER_KEY", "hmac_key_env: ledger key"))
    lines = bad.read_text().splitlines()
    poll = next(n for n, line in enumerate(lines, 1) if "poll: 5ms" in line)
    key = next(n for n, line in enumerate(lines, 1) if "hmac_key_env:" in line)
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}:{poll}: sources.published.poll: poll must be at least 10ms"
    assert err[1].startswith(f"{bad}:{key}: backends.ledger.hmac_key_env: ")
    assert err[2] == "triggerd: 2 configuration error(s)"


def test_without_the_entry_points_the_types_are_unknown(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    registry.source_types.cache_clear()
    registry.backend_types.cache_clear()
    work = workdir(tmp_path, monkeypatch)
    assert main(["check", "--config", str(work / "triggerd.yaml")]) == 2
    err = capsys.readouterr().err
    assert "sources.published.type: unknown source type 'lines'" in err
    assert "backends.ledger.type: unknown backend type 'jsonl'" in err


def test_triggerd_test_runs_the_example_test_file(installed: None, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(EXAMPLE / "rules.test.yaml")]) == 0
    assert "1 test(s), 0 failed" in capsys.readouterr().out
    # and it can fail: the same file, expecting the trigger a minute late
    for name in ("triggerd.yaml", "rules.test.yaml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    test_file = tmp_path / "rules.test.yaml"
    test_file.write_text(test_file.read_text().replace("{at: 0s, rule:", "{at: 1m, rule:"))
    assert main(["test", str(test_file)]) == 1
    assert "1 test(s), 1 failed" in capsys.readouterr().out


def test_the_key_variable_is_withheld_from_commands(installed: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The page says: name a secret's option `*_env`, and a command backend's children do
    not inherit that variable."""
    work = workdir(tmp_path, monkeypatch)
    config = work / "triggerd.yaml"
    config.write_text(config.read_text().replace(
        "backends:\n", "backends:\n  train: {type: command, argv: [python, train.py]}\n"))
    train = load_config(config).backends["train"]
    assert isinstance(train, InheritsEnvironment)
    assert "LEDGER_KEY" in train.withheld_env


def test_the_example_classes_meet_the_contracts(tmp_path: Path) -> None:
    from triggerd_example.jsonl import JsonlBackend, JsonlOptions
    from triggerd_example.lines import LinesOptions, LinesSource

    source = LinesSource("s", LinesOptions(type="lines", path="x.log"))
    backend = JsonlBackend("b", JsonlOptions(type="jsonl", path="x.jsonl"), tmp_path)
    assert isinstance(source, Source) and isinstance(backend, Backend)
    for module in ("jsonl", "lines"):  # a plugin imports triggerd.plugin, nothing else of it
        tree = ast.parse((EXAMPLE / "triggerd_example" / f"{module}.py").read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert {n for n in names if n and n.split(".")[0] == "triggerd"} == {"triggerd.plugin"}


def test_the_page_includes_every_file_of_the_example() -> None:
    page = (DOCS / "plugins.md").read_text()
    def built(part: str) -> bool:  # what Python, pip or a build leave beside the sources
        return part in ("__pycache__", "build", "dist") or part.endswith(".egg-info") \
            or part.startswith(".")

    files = sorted(p.relative_to(DOCS).as_posix() for p in EXAMPLE.rglob("*")
                   if p.is_file() and not any(map(built, p.relative_to(EXAMPLE).parts)))
    assert files, "the example is missing"
    missing = [f for f in files if f'--8<-- "{f}"' not in page]
    assert missing == []
