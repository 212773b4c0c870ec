"""A bounded fuzz run of the expression compiler and evaluator, the config loader and the Kafka
decoder (tests/fuzz/targets.py), and a replay of every input kept in tests/fuzz/corpus/.

Each run is derandomized (the same inputs every time: a red run reproduces) and small: the
three together take well under a minute. `bench/fuzz.py` runs the same targets for longer, with
coverage guidance, and counts the inputs tried.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import targets
from hypothesis import HealthCheck, given, settings
from strategies import configs, expressions, kafka_records

EXAMPLES = int(os.environ.get("TRIGGERD_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(expressions())
def test_fuzz_expressions(data: bytes) -> None:
    targets.check_bounds(targets.bounded(targets.expr, data), repr(data[:200]))


@FUZZ
@given(configs())
def test_fuzz_config_loader(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    workdir = tmp_path_factory.mktemp("fuzz")
    targets.check_bounds(targets.bounded(targets.config, data, workdir), repr(data[:200]))


@FUZZ
@given(kafka_records())
def test_fuzz_kafka_decoder(data: bytes) -> None:
    targets.check_bounds(targets.bounded(targets.kafka, data), repr(data[:200]))


def _corpus() -> list[Path]:
    return sorted(p for p in targets.CORPUS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus(path: Path, tmp_path: Path) -> None:
    data = path.read_bytes()
    target = path.parent.name
    if target == "config":
        outcome = targets.bounded(targets.config, data, tmp_path)
    else:
        outcome = targets.bounded(getattr(targets, target), data)
    targets.check_bounds(outcome, path.name)
