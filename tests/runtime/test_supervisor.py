"""How long a failed source waits before it runs again (the supervisor's restarts)."""

from __future__ import annotations

from triggerd.runtime.supervisor import Restarts


def test_quick_failures_back_off_to_a_minute() -> None:
    r = Restarts()
    assert [r.after(0.1) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_run_that_lasted_starts_the_backoff_again() -> None:
    """After a few outages a source that then worked for a while is restarted after 1 s at
    its next failure, not after the minute its old failures had built up."""
    r = Restarts()
    for _ in range(7):
        r.after(0.5)
    assert r.after(Restarts.STABLE) == 1
    assert r.after(0.5) == 2
    assert r.after(Restarts.STABLE - 1) == 4  # not long enough: the backoff goes on
