"""Building plugins from the config: a backend or a source by its registered type.

A source names the daemon services it wants (`wants = ("files",)`) and gets them as keyword
arguments (see `triggerd.interfaces.Source`); `Services` maps a want to its factory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from triggerd import registry
from triggerd.config.loader import Config
from triggerd.interfaces import Backend, Source

Services = Mapping[str, Callable[[], object]]


def build_backend(config: Config, name: str, options: Any) -> Backend:
    cls = registry.backend_class(str(getattr(options, "type", "")))
    backend: Backend = cls(name, options, config.state_dir)
    return backend


def build_backends(config: Config) -> dict[str, Backend]:
    return {name: build_backend(config, name, options)
            for name, options in config.backends.items()}


def build_source(name: str, options: Any, services: Services) -> Source:
    cls = registry.source_class(str(getattr(options, "type", "")))
    extra = {want: services[want]() for want in getattr(cls, "wants", ())}
    source: Source = cls(name, options, **extra)
    return source


def build_sources(config: Config, services: Services) -> dict[str, Source]:
    return {name: build_source(name, options, services)
            for name, options in config.sources.items()}
