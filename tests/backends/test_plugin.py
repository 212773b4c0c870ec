"""A third-party backend, shipped as its own distribution, is found through the
`triggerd.backends` entry point group: no change to triggerd, one line in the plugin's
packaging metadata.

The "installed" plugin is what pip would leave in site-packages: a module and a `.dist-info`
directory whose `entry_points.txt` names the class. It is written to a temporary directory
put on the path, so the test needs no install step.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_rig import RunJob

from triggerd import registry
from triggerd.config.loader import load_config
from triggerd.errors import ConfigError
from triggerd.model import JobStatus

PLUGIN = '''
"""A tiny third-party backend: appends each trigger id to a file."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from triggerd.config.types import Strict
from triggerd.model import DispatchResult


class Options(Strict):
    type: Literal["ledger"]
    path: str


class LedgerBackend:
    Options = Options

    def __init__(self, name, options, state_dir=None):
        self.name = name
        self.options = options

    async def dispatch(self, ctx, job):
        line = f"{ctx.trigger_id} {ctx.params.get('model', '')}\\n"
        await asyncio.to_thread(self._append, line)
        return DispatchResult(external_id=f"ledger:{ctx.trigger_id}", detail="written")

    def _append(self, line):
        with open(self.options.path, "a") as fh:
            fh.write(line)
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    (site / "triggerd_ledger").mkdir(parents=True)
    (site / "triggerd_ledger" / "__init__.py").write_text(PLUGIN)
    dist = site / "triggerd_ledger-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: triggerd-ledger\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[triggerd.backends]\nledger = triggerd_ledger:LedgerBackend\n")
    monkeypatch.syspath_prepend(str(site))
    registry.backend_types.cache_clear()  # discovered once per process; rediscover
    try:
        yield site
    finally:
        monkeypatch.undo()
        sys.modules.pop("triggerd_ledger", None)
        registry.backend_types.cache_clear()


def config(tmp_path: Path) -> Path:
    path = tmp_path / "triggerd.yaml"
    path.write_text(textwrap.dedent(f"""
        state_dir: state
        sources:
          tick: {{type: cron, every: 1h}}
        backends:
          books: {{type: ledger, path: {tmp_path / 'ledger.txt'}}}
        rules:
          r:
            on: [tick]
            dispatch: {{backend: books, params: {{model: churn}}}}
    """))
    return path


def test_without_the_plugin_the_type_is_unknown(tmp_path: Path) -> None:
    registry.backend_types.cache_clear()
    with pytest.raises(ConfigError, match="unknown backend type 'ledger'"):
        load_config(config(tmp_path))


async def test_an_installed_plugin_validates_and_dispatches(installed_plugin: Path,
                                                            tmp_path: Path,
                                                            run_job: RunJob) -> None:
    assert registry.backend_types()["ledger"] == "triggerd_ledger:LedgerBackend"
    cfg = load_config(config(tmp_path))
    options = cfg.backends["books"]
    cls = registry.backend_class("ledger")
    job = await run_job(cls("books", options, cfg.state_dir), params={"model": "churn"})
    assert (job.status, job.external_id) == (JobStatus.SUCCEEDED, "ledger:r.1")
    assert (tmp_path / "ledger.txt").read_text() == "r.1 churn\n"
    # its options are checked like a built-in backend's
    bad = config(tmp_path)
    bad.write_text(bad.read_text().replace("path:", "paht:"))
    with pytest.raises(ConfigError, match=r"backends\.books"):
        load_config(bad)


def test_triggerd_check_accepts_the_plugin_type_when_it_is_installed(installed_plugin: Path,
                                                                    tmp_path: Path) -> None:
    import os
    import subprocess

    cmd = [sys.executable, "-m", "triggerd", "check", "--config", str(config(tmp_path))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")}
    env["PYTHONPATH"] = str(installed_plugin)
    found = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert found.returncode == 0, found.stderr


@pytest.mark.parametrize(("entry", "module", "says"), [
    ("triggerd_ledger:NoSuchClass", PLUGIN, "triggerd_ledger has no 'NoSuchClass'"),
    ("triggerd_ledger:Options", PLUGIN, "triggerd_ledger:Options has no `Options` pydantic"),
    ("triggerd_ledger:LedgerBackend", "import numpy_that_is_not_here\n",
     "not installed (numpy_that_is_not_here); install the dependencies of the plugin"),
    ("triggerd_ledger:LedgerBackend", "raise RuntimeError('half-installed')\n",
     "its module triggerd_ledger fails on import: RuntimeError: half-installed"),
])
def test_a_broken_plugin_is_a_config_error_naming_it_not_a_traceback(
        installed_plugin: Path, tmp_path: Path, entry: str, module: str, says: str) -> None:
    """An entry point naming a missing class, a class without `Options`, a module missing a
    dependency or failing on import: `check` says which, at the backend's line."""
    (installed_plugin / "triggerd_ledger" / "__init__.py").write_text(module)
    (installed_plugin / "triggerd_ledger-0.1.dist-info" / "entry_points.txt").write_text(
        f"[triggerd.backends]\nledger = {entry}\n")
    registry.backend_types.cache_clear()
    with pytest.raises(ConfigError) as caught:
        load_config(config(tmp_path))
    (problem,) = caught.value.problems
    assert says in problem and ":6: backends.books" in problem, problem
