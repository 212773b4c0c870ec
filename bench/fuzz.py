"""Fuzz the expression language, the config loader and the Kafka decoder for longer than the
suite does, and count the inputs tried per target.

The targets are the suite's (tests/fuzz/targets.py): every input must end in a result or the
component's own error, within 2 s and 64 MiB. With atheris installed (`pip install atheris`,
or `make fuzz`), each target runs in a child process under libFuzzer's coverage guidance,
seeded with the kept corpus (tests/fuzz/corpus/<target>/, copied: the run never writes into
the repository); a finding is written to bench/fuzz-findings/ and reported. Without atheris,
hypothesis generates the inputs (the suite's strategies, new seeds each round).

    .venv/bin/python bench/fuzz.py --seconds 120           # every target, 120 s each
    .venv/bin/python bench/fuzz.py --target config --seconds 600
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "tests" / "fuzz"
FINDINGS = ROOT / "bench" / "fuzz-findings"
TARGETS = ("expr", "config", "kafka")


def _child(target: str) -> None:
    """Run one target under atheris (never returns: libFuzzer exits)."""
    import atheris

    sys.path.insert(0, str(FUZZ_DIR))
    with atheris.instrument_imports(include=["triggerd"]):
        import targets
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-config-"))

    def one(data: bytes) -> None:
        if target == "config":
            targets.check_bounds(targets.bounded(targets.config, data, workdir), "input")
        else:
            targets.check_bounds(targets.bounded(getattr(targets, target), data), "input")

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


def _atheris(target: str, seconds: int) -> tuple[int, str]:
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    for path in (FUZZ_DIR / "corpus" / target).glob("*"):
        shutil.copy(path, corpus)
    FINDINGS.mkdir(exist_ok=True)
    cmd = [sys.executable, __file__, "--child", target, f"-max_total_time={seconds}",
           "-timeout=5", "-rss_limit_mb=1024", "-max_len=4096",
           f"-artifact_prefix={FINDINGS}/{target}-", str(corpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          timeout=seconds + 120)
    shutil.rmtree(corpus, ignore_errors=True)
    runs = re.findall(r"Done (\d+) runs in", proc.stderr)
    if proc.returncode != 0 or not runs:
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        return int(runs[-1]) if runs else 0, f"FINDING (exit {proc.returncode}):\n{tail}"
    return int(runs[-1]), "ok"


def _hypothesis(target: str, seconds: int) -> tuple[int, str]:
    from hypothesis import HealthCheck, given, settings

    sys.path.insert(0, str(FUZZ_DIR))
    import strategies
    import targets

    strategy = {"expr": strategies.expressions(), "config": strategies.configs(),
                "kafka": strategies.kafka_records()}[target]
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
    count = 0

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(data: bytes) -> None:
        nonlocal count
        count += 1
        args = (data, workdir) if target == "config" else (data,)
        targets.check_bounds(targets.bounded(getattr(targets, target), *args), repr(data[:200]))

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            one()
        except Exception as exc:
            return count, f"FINDING: {type(exc).__name__}: {exc}"
    return count, "ok"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        target = sys.argv.pop(2)
        sys.argv.pop(1)
        _child(target)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--target", choices=TARGETS, action="append")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    args = parser.parse_args()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(f"engine: {engine}, {args.seconds} s per target")
    failed = False
    for target in args.target or TARGETS:
        run = _atheris if engine == "atheris" else _hypothesis
        t0 = time.monotonic()
        count, verdict = run(target, args.seconds)
        took = time.monotonic() - t0
        print(f"{target:8} {count:>10,} inputs in {took:6.1f} s  ({count / took:,.0f}/s)  "
              f"{verdict}")
        failed |= verdict != "ok"
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
