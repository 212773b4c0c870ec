"""The dependency rule (the package docstring of `triggerd`): what each part may import.

model/errors <- language <- config <- engine, dispatcher <- runtime <- cli; the store depends
only on model and errors; plugins (sources, backends) only on the public plugin module. The
language package is a leaf over model and errors; config knows only the language (and the
registry); engine and dispatcher are peers that never import each other, nor the runtime or the
CLI; the runtime never imports the CLI; ops knows only the store and the model; settings only
the address parser of ops. Every `import` counts, also one inside a function (and under
TYPE_CHECKING). `triggerd` alone (`from triggerd import x`) is the package's `__init__`: the
version, or a module named by `x`, which is then checked where it is used.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "triggerd"

_BASE = {"triggerd.model", "triggerd.errors"}
_BELOW_RUNTIME = _BASE | {
    "triggerd.language", "triggerd.config", "triggerd.store", "triggerd.engine",
    "triggerd.dispatcher", "triggerd.interfaces", "triggerd.aio", "triggerd.clock",
    "triggerd.ops", "triggerd.settings", "triggerd"}
ALLOWED = {
    "model": _BASE,
    "errors": _BASE,
    "aio": set(),
    "clock": set(),
    "interfaces": _BASE,
    "registry": _BASE,
    "language": _BASE | {"triggerd.language"},
    "store": _BASE | {"triggerd.store", "triggerd"},
    # config: the language, and the registry (plugin option models by type)
    "config": _BASE | {"triggerd.language", "triggerd.config", "triggerd"},
    # engine and dispatch: peers over config, store and the contracts, never each other
    "engine": _BASE | {"triggerd.language", "triggerd.config", "triggerd.engine",
                       "triggerd.store", "triggerd.interfaces", "triggerd.aio",
                       "triggerd.ops.failpoints"},
    "dispatcher": _BASE | {"triggerd.config", "triggerd.store", "triggerd.interfaces",
                           "triggerd.aio", "triggerd.ops"},
    # ops: metrics, http, logging, sdnotify: over the store and model, nothing above
    "ops": _BASE | {"triggerd.ops", "triggerd.store", "triggerd"},
    "settings": {"triggerd.ops.http"},
    # runtime: everything below it (and its own modules), never the CLI
    "runtime": _BELOW_RUNTIME | {"triggerd.runtime"},
    # simulate (`triggerd test`, replay): beside the runtime, never the CLI; it builds events
    # with the built-in sources' own pure code (their modules, named one by one)
    "simulate": _BELOW_RUNTIME | {"triggerd.simulate", "triggerd.sources.cron",
                                  "triggerd.sources._fssettle", "triggerd.sources._fsscan",
                                  "triggerd.sources._fsoptions", "triggerd.sources._kafka.decode",
                                  "triggerd.sources._kafka.options",
                                  "triggerd.sources._bucketlist",
                                  "triggerd.sources._bucketoptions",
                                  "triggerd.sources._bucketnotify"},
    # cli: the top: everything but the plugins' own modules (reached through the registry)
    "cli": _BELOW_RUNTIME | {"triggerd.runtime", "triggerd.cli", "triggerd.simulate"},
    # the one module plugins import: the contracts, the data, the language, option types,
    # secrets named by options
    "plugin": _BASE | {"triggerd.interfaces", "triggerd.language", "triggerd.config.types",
                       "triggerd.config.secrets", "triggerd.aio",
                       "triggerd.config.yamlsafe", "triggerd.ops.failpoints", "triggerd"},
    # plugins: the public plugin module, and their own package's private modules
    "sources": {"triggerd.plugin", "triggerd.sources"},
    "backends": {"triggerd.plugin", "triggerd.backends"},
}


def triggerd_imports(path: Path) -> set[str]:
    """The triggerd modules `path` imports (`from triggerd import x` counts as `triggerd`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "triggerd")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "triggerd":
            found.add(node.module)
    return found


def allowed(module: str, prefixes: set[str]) -> bool:
    return any(module == p or (p != "triggerd" and module.startswith(p + "."))
               for p in prefixes)


def modules(package: str) -> list[Path]:
    """The files of `package` (a directory) or the module `package`.py."""
    single = PACKAGE / f"{package}.py"
    return [single] if single.exists() else sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_layer_may(package: str) -> None:
    wrong = {}
    for path in modules(package):
        bad = sorted(m for m in triggerd_imports(path) if not allowed(m, ALLOWED[package]))
        if bad:
            wrong[str(path.relative_to(PACKAGE.parent))] = bad
    assert not wrong, f"imports across the layers of {package}: {wrong}"


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from triggerd.config.loader import Config\n")
    assert triggerd_imports(sample) == {"triggerd.config.loader"}
    assert not allowed("triggerd.config.loader", ALLOWED["store"])
    assert allowed("triggerd.store.tables", ALLOWED["store"])
    assert not allowed("triggerd.cli.commands", ALLOWED["runtime"])
    assert not allowed("triggerd.runtime.daemon", ALLOWED["settings"])
    assert not allowed("triggerd.dispatcher", ALLOWED["engine"])


def test_one_definition_of_a_dead_daemon() -> None:
    """The CLI (`status`) and the daemon (taking over jobs) agree on when a daemon is dead."""
    from datetime import UTC, datetime

    from triggerd.cli.commands import _daemon_running
    from triggerd.model import DEAD_AFTER, daemon_alive, dead_before

    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    beat = now - DEAD_AFTER
    for at in (beat - DEAD_AFTER / 10, beat + DEAD_AFTER / 10):
        row = {"stopped_at": None, "heartbeat_at": at}
        assert _daemon_running(row, now) == daemon_alive(None, at, now) == (at > dead_before(now))
    assert not _daemon_running({"stopped_at": now, "heartbeat_at": now}, now)
