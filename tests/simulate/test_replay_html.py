"""`triggerd replay --html FILE`, opened in a real headless Chromium (Debian's `chromium`,
driven by playwright over the Chrome DevTools Protocol, the browser's own contract): the page
loads with nothing fetched but itself, and its timeline marks and trade-off chart points are
the report's own data (as `--json` gives it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from replaytest import Replay, bursts, write_log

CHROMIUM = shutil.which("chromium")


@pytest.fixture
def browser() -> Iterator[Callable[[], Any]]:
    """Starts Chromium when called: playwright's sync API runs an event loop in this thread,
    so the replay (which runs its own) must be done before."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: `make browser` installs Debian's package")
        pytest.skip("chromium is missing (`make browser` installs it)")
    from playwright.sync_api import sync_playwright

    with ExitStack() as stack:
        def launch() -> Any:
            p = stack.enter_context(sync_playwright())
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            stack.callback(chromium.close)
            return chromium
        yield launch


def test_the_page_draws_the_timelines_and_the_trade_off_from_the_data(
        rp: Replay, browser: Callable[[], Any], tmp_path: Path) -> None:
    log = write_log(rp, bursts(days=1))
    rp.file("candidate.yaml", (rp.tmp / "triggerd.yaml").read_text().replace(
        "{debounce: 10m}", "{debounce: 10m, cooldown: 6h}"))
    page_file = tmp_path / "replay.html"
    args = ["--arrivals", str(log), "--candidate", str(rp.tmp / "candidate.yaml"),
            "--sweep", "when.debounce=2m,30m,2h", "--html", str(page_file)]
    report = rp.json(*args)
    assert page_file.exists()

    page = browser().new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.as_uri())
    assert requests == [page_file.as_uri()]  # self-contained: nothing else fetched

    runs = {r["name"]: r for r in report["runs"]}
    for rule in report["rules"]:
        section = page.locator(f"section.rule[data-rule='{rule}']")
        assert section.locator("h2").inner_text() == f"rule {rule}"
        for name in ("current", "candidate.yaml"):
            want = [t["at"] for t in runs[name]["triggers"] if t["rule"] == rule]
            marks = section.locator(f"svg.timeline line.trigger[data-run='{name}']")
            assert marks.evaluate_all("els => els.map(e => e.dataset.at)") == want
        # the density strip counts every arrival of the rule
        counts = section.locator("svg.timeline rect.density").evaluate_all(
            "els => els.map(e => Number(e.dataset.count))")
        current = runs["current"]["rules"][rule]
        assert sum(counts) == sum(len(t["events"]) for t in runs["current"]["triggers"]
                                  if t["rule"] == rule) + current["unserved_events"]
        # the chart: one p50 point per swept value, placed by retrains per day
        points = section.locator("svg.tradeoff circle.p50")
        assert points.evaluate_all("els => els.map(e => e.dataset.value)") == [
            "2m", "30m", "2h"]
        per_day = points.evaluate_all(
            "els => els.map(e => Number(e.dataset.retrainsPerDay))")
        want = [runs[f"when.debounce={v}"]["rules"][rule]["retrains_per_day"]
                for v in ("2m", "30m", "2h")]
        assert per_day == pytest.approx(want, abs=1e-3)
        xs = points.evaluate_all("els => els.map(e => e.getBoundingClientRect().x)")
        order = sorted(range(3), key=lambda i: want[i])
        assert [xs[i] for i in order] == sorted(xs)  # more retrains: further right
        assert section.locator("svg.tradeoff rect.p50").count() == 2  # current, candidate
    page.screenshot(path=str(tmp_path / "replay.png"), full_page=True)
    page.close()
