"""Plugin registry: type name -> "module:Class", imported lazily.

A new source or backend is one module plus one line here (or, for a third-party package, one
entry point in the `triggerd.sources` / `triggerd.backends` group). Each plugin class has an
`Options` attribute: a pydantic model with a `type: Literal[...]` field, validated by the
config loader and handed to the plugin's constructor alone (never the whole config).
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from triggerd.errors import ConfigError

SOURCES: dict[str, str] = {
    "bucket": "triggerd.sources.bucket:BucketSource",
    "cron": "triggerd.sources.cron:CronSource",
    "filesystem": "triggerd.sources.filesystem:FilesystemSource",
    "kafka": "triggerd.sources.kafka:KafkaSource",
}

BACKENDS: dict[str, str] = {
    "command": "triggerd.backends.command:CommandBackend",
    "http": "triggerd.backends.http:HttpBackend",
    "kubernetes": "triggerd.backends.kubernetes:KubernetesBackend",
    "airflow": "triggerd.backends.airflow:AirflowBackend",
}


def _with_entry_points(builtin: dict[str, str], group: str) -> dict[str, str]:
    found = dict(builtin)
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep.value)
    return found


@cache
def source_types() -> dict[str, str]:
    return _with_entry_points(SOURCES, "triggerd.sources")


@cache
def backend_types() -> dict[str, str]:
    return _with_entry_points(BACKENDS, "triggerd.backends")


def _load(target: str, kind: str, type_name: str) -> Any:
    """The class `target` ("module:Class") names, checked to be usable: a broken plugin is a
    config error naming its entry point, never a traceback."""
    builtin = target in (SOURCES if kind == "source" else BACKENDS).values()
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fix = ("install triggerd with the matching extra" if builtin else
               f"install the dependencies of the plugin that provides it ({target})")
        raise ConfigError([
            f"{kind} type {type_name!r} needs a package that is not installed ({exc.name}); "
            f"{fix}"]) from exc
    except Exception as exc:
        raise ConfigError([f"{kind} type {type_name!r}: its module {module_name} fails on "
                           f"import: {type(exc).__name__}: {exc}"]) from exc
    cls = getattr(module, attr, None)
    options = getattr(cls, "Options", None)
    if cls is None or not (isinstance(options, type) and issubclass(options, BaseModel)):
        what = (f"{module_name} has no {attr!r}" if cls is None else
                f"{target} has no `Options` pydantic model")
        raise ConfigError([f"{kind} type {type_name!r} is not a usable plugin: {what} "
                           f"(entry point {target})"])
    return cls


def source_class(type_name: str) -> Any:
    return _load(source_types()[type_name], "source", type_name)


def backend_class(type_name: str) -> Any:
    return _load(backend_types()[type_name], "backend", type_name)
