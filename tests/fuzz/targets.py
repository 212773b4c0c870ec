"""Fuzz targets: each takes raw input and must end in a result or the component's own error.

- `expr`: expression text -> `Expression` (or `ExpressionError`); a compiled expression is then
  evaluated on a file event and a Kafka event with nested values -> a value or
  `ExpressionError`.
- `config`: YAML bytes -> `load_config` -> `Config` or `ConfigError` (the file is the main
  config; it may include a second fuzzed file, `inc.yaml`, beside it).
- `kafka`: a record's key and value bytes, and a format and templates chosen by the input ->
  `Decoder.decode` -> an `Event` or a `Reject`.

Anything else (another exception, a hang, a blow-up) is a finding. `bounded` runs one input and
says how long it took and how much memory it took at its peak, for the bounds the tests and
`bench/fuzz.py` hold the targets to. Inputs worth keeping go in `corpus/<target>/`: the suite
replays every file there.
"""

from __future__ import annotations

import contextlib
import re
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from triggerd.config.loader import load_config
from triggerd.errors import ConfigError, ExpressionError
from triggerd.language.expr import Expression, event_env
from triggerd.model import Event
from triggerd.sources._kafka.decode import Decoder, Record
from triggerd.sources._kafka.options import KafkaOptions
from triggerd.store.rejects import Reject

CORPUS = Path(__file__).parent / "corpus"
TIME_BOUND = 2.0  # seconds one input may take
MEMORY_BOUND = 64 << 20  # bytes one input may hold at its peak (tracemalloc's count)

_FILE = Event(source="landing", kind="created", subject="/data/landing/churn/a.parquet",
              fingerprint="f", payload={"path": "/data/landing/churn/a.parquet",
                                        "relpath": "churn/a.parquet", "dir": "churn",
                                        "name": "a.parquet", "size": 2048, "mtime": 1.5})
_KAFKA = Event(source="metrics", kind="message", subject="churn", fingerprint="t/0/1",
               payload={"value": {"metric": "psi", "score": 0.31, "model": "churn",
                                  "tags": ["a", "b", {"deep": [1, 2.5, None, True]}],
                                  "text": "x" * 5000},
                        "key": "churn", "topic": "t", "partition": 0, "offset": 1,
                        "timestamp": None, "headers": {}})
ENVS = [event_env(_FILE), event_env(_KAFKA)]
_PROBLEM = re.compile(r"[^\n]+:\d+: ", re.DOTALL)


def expr(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    try:
        compiled = Expression(text)
    except ExpressionError:
        return "refused"
    for env in ENVS:
        with contextlib.suppress(ExpressionError):
            compiled.evaluate(env)
    return "compiled"


def config(data: bytes, workdir: Path) -> str:
    """`data` is split at the first line `---inc---`: the main file, then `inc.yaml`."""
    main, _, inc = data.partition(b"\n---inc---\n")
    (workdir / "inc.yaml").write_bytes(inc)
    path = workdir / "triggerd.yaml"
    path.write_bytes(main)
    try:
        load_config(path, env={"HOME": "/nonexistent", "X": "1"},
                    state_dir=str(workdir / "state"))
    except ConfigError as exc:
        assert exc.problems, "a ConfigError names its problems"
        for problem in exc.problems:
            assert _PROBLEM.match(problem), f"not file:line: message: {problem!r}"
        return "refused"
    return "loaded"


_FORMATS = ("json", "text", "bytes")
_TEMPLATES = (None, "{value.model}", "{key}", "{value}", "{payload.headers.h}", "{value.a.0.b}",
              "{topic}-{partition}-{offset}", "{value.report_id}")


def kafka(data: bytes) -> str:
    """Byte 0 picks the format, bytes 1-2 the templates; the rest is `key\\0value`."""
    head, rest = data[:3].ljust(3, b"\0"), data[3:]
    key, sep, value = rest.partition(b"\0")
    options = KafkaOptions(type="kafka", brokers=["127.0.0.1:9092"], topic="t",
                           format=_FORMATS[head[0] % 3],
                           subject=_TEMPLATES[head[1] % len(_TEMPLATES)],
                           fingerprint=_TEMPLATES[head[2] % len(_TEMPLATES)],
                           max_bytes=1 << 16)
    record = Record(topic="t", partition=head[1] % 4, offset=int.from_bytes(head, "big"),
                    timestamp=float(head[2]) * 1e12 if head[2] > 200 else 1.7e9,
                    key=key if sep or key else None, value=value if sep else None,
                    headers=[("h", value[:8] if sep else None)])
    out = Decoder("metrics", options).decode(record, datetime(2026, 12, 6, tzinfo=UTC))
    if isinstance(out, Reject):
        return "rejected"
    assert isinstance(out, Event)
    out.subject.encode("utf-8")  # storable: encodes, no NUL
    assert "\x00" not in out.subject and "\x00" not in out.fingerprint
    return "decoded"


@dataclass
class Outcome:
    result: str
    seconds: float
    peak_bytes: int


def bounded(target: Callable[..., str], *args: Any) -> Outcome:
    """Run one input through `target`, measuring its time and its peak memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = target(*args)
    finally:
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return Outcome(result, seconds, peak)


def check_bounds(outcome: Outcome, what: str) -> None:
    assert outcome.seconds < TIME_BOUND, f"{what}: {outcome.seconds:.2f}s"
    assert outcome.peak_bytes < MEMORY_BOUND, f"{what}: peak {outcome.peak_bytes >> 20} MiB"
