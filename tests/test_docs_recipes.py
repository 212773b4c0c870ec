"""The recipes of the guide "Periodic or on data change" (docs/guide/periodic-vs-data.md) are
what the page says they are.

- Every config in docs/recipes/ (`NAME.yaml`) passes `triggerd check` as written: the real
  command, in a subprocess, with only the `${VAR}`s the recipes use set (the page explains
  each). The recipes' filesystem paths need not exist and their secrets (`*_env`) need not be
  set: `check` reads neither.
- Every config has a rule test (`NAME.test.yaml`) and every rule test passes `triggerd test`;
  a copy of two of them with a deliberately wrong expectation fails (exit 1), so a passing run
  means something.
- The page includes every recipe by snippet, and every snippet it includes exists.
- The store facts the page gives for replicas: the password from TRIGGERD_STORE_PASSWORD is
  shown as `***`, and TRIGGERD_STORE takes precedence over the config's `store:`.

The commands run at once in a few worker threads (about a second each), so the whole module
takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RECIPES = DOCS / "recipes"
PAGE = DOCS / "guide" / "periodic-vs-data.md"

CONFIGS = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.endswith(".test.yaml"))
TESTS = sorted(RECIPES.glob("*.test.yaml"))

# the `${VAR}`s the recipes use, with values as a deployment would set them
RECIPE_ENV = {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000", "TRAINER_TAG": "2026.03.1"}
STORE_PASSWORD = "p@ss/word:42#%"  # characters a URL could not hold unencoded
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.MULTILINE)
ENV_REF = re.compile(r"\$\{(\w+)(?::-[^}]*)?\}")
ENV_NAME = re.compile(r"(?:\w+_env:|\benv:)\s*([A-Z][A-Z0-9_]*)")


def base_env(**extra: str) -> dict[str, str]:
    """This environment without any TRIGGERD_* or recipe variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRIGGERD_") and k not in RECIPE_ENV}
    env.update(extra)
    return env


def triggerd(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triggerd", *args], cwd=REPO, env=dict(env),
                          capture_output=True, text=True, timeout=120, check=False)


def wrong_copies(tmp: Path) -> list[Path]:
    """Two recipe tests, copied beside their configs, each with one expectation that
    contradicts the recipe: a trigger 1 minute early, and a trigger on a night without data."""
    for name in ("landing-batch.yaml", "nightly-if-new-data.yaml"):
        shutil.copy(RECIPES / name, tmp / name)
    batch = (RECIPES / "landing-batch.test.yaml").read_text()
    fires = "- {at: 13m, rule: fraud-on-data, kind: events"
    assert batch.count(fires) == 1
    (tmp / "batch-early.test.yaml").write_text(batch.replace(fires, fires.replace("13m", "12m")))
    nightly = (RECIPES / "nightly-if-new-data.test.yaml").read_text()
    first = "        - {at: 2h, rule: churn-nightly, kind: schedule"
    assert nightly.count(first) == 1
    empty_night = "        - {at: 1d2h, rule: churn-nightly, kind: schedule}\n"
    (tmp / "nightly-empty-night.test.yaml").write_text(
        nightly.replace(first, empty_night + first))
    return [tmp / "batch-early.test.yaml", tmp / "nightly-empty-night.test.yaml"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every command of this module, run concurrently once."""
    wrong = wrong_copies(tmp_path_factory.mktemp("wrong"))
    env = base_env(**RECIPE_ENV, TRIGGERD_STORE_PASSWORD=STORE_PASSWORD)
    jobs = {f"check {p.name}": (("check", "--config", str(p)), env) for p in CONFIGS}
    jobs["test"] = (("test", "--json", *map(str, TESTS)), base_env(**RECIPE_ENV))
    jobs["test wrong"] = (("test", *map(str, wrong)), base_env(**RECIPE_ENV))
    jobs["check replicas, TRIGGERD_STORE"] = (
        ("check", "--config", str(RECIPES / "replicas.yaml")),
        base_env(TRIGGERD_STORE="postgresql+psycopg://ops@pg-standby.internal/triggerd"))
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(triggerd, *args, env=e) for name, (args, e) in jobs.items()}
        yield {name: future.result() for name, future in futures.items()}


def test_there_are_recipes_each_with_its_rule_test() -> None:
    assert len(CONFIGS) >= 6
    assert {p.name.removesuffix(".test.yaml") for p in TESTS} == {p.stem for p in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_recipe_passes_triggerd_check(
        runs: dict[str, subprocess.CompletedProcess[str]], config: Path) -> None:
    done = runs[f"check {config.name}"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: ")
    assert STORE_PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_each_recipe_test_passes_triggerd_test(
        runs: dict[str, subprocess.CompletedProcess[str]], test_file: Path) -> None:
    done = runs["test"]
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    (found,) = [f for f in report["files"] if Path(f["file"]).name == test_file.name]
    assert found["tests"], f"{test_file.name} holds no test"
    failed = [t["name"] for t in found["tests"] if not t["passed"]]
    assert failed == []


def test_a_wrong_expectation_makes_triggerd_test_fail(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    done = runs["test wrong"]
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "FAIL  four files fire once the batch has been quiet for 10 minutes" in out
    assert re.search(r"at:\s+expected 12m, got 13m", out), out
    assert "FAIL  files before 02:00 are trained on that night" in out
    assert "missing trigger churn-nightly at 1d2h" in out
    assert re.search(r"^\d+ test\(s\), 2 failed$", out, re.MULTILINE), out


def test_the_page_includes_every_recipe_and_every_snippet_exists() -> None:
    page = PAGE.read_text()
    included = SNIPPET.findall(page)
    assert included, "the page includes no snippet"
    for name in included:
        assert (DOCS / name).is_file(), f"the page includes {name}, which does not exist"
    assert sorted(included) == sorted(f"recipes/{p.name}" for p in CONFIGS)


def test_the_page_explains_every_variable_the_recipes_read() -> None:
    page = PAGE.read_text()
    named: set[str] = set()
    for config in CONFIGS:
        text = config.read_text()
        named |= {m.group(1) for m in ENV_REF.finditer(text)}
        named |= set(ENV_NAME.findall(text))
    assert set(RECIPE_ENV) <= named  # the variables set for `check` are the recipes' own
    for name in sorted(named):
        assert f"`{name}`" in page, f"the page does not explain {name}"


def test_the_store_password_is_masked_and_triggerd_store_wins(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    masked = runs["check replicas.yaml"]
    assert "store: postgresql+psycopg://triggerd:***@pg.internal:5432/triggerd" in masked.stdout
    override = runs["check replicas, TRIGGERD_STORE"]
    assert override.returncode == 0, override.stdout + override.stderr
    assert "store: postgresql+psycopg://ops@pg-standby.internal/triggerd" in override.stdout
