"""Fault injection for tests: make a store method fail its first N calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from triggerd.errors import StoreError


def fail_first(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, times: int = 1
               ) -> dict[str, int]:
    """Replace `obj.name` so its first `times` calls raise StoreError (a lost connection).

    Returns a dict whose "left" counts the failures still to come."""
    real: Callable[..., Any] = getattr(obj, name)
    state = {"left": times}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if state["left"]:
            state["left"] -= 1
            raise StoreError("connection refused (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, flaky)
    return state
