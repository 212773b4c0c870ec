"""The worst evaluation time of `where` expressions that `triggerd check` accepts.

Each case is hostile by design: a backtracking-prone regex on the longest strings an event
can carry, nested `str([...])` that doubles its escapes at every level, long chains of
string work, globs with many stars. Every case is compiled as `check` compiles it; cases
`check` refuses are reported as such. The figure that matters is the worst time of any
accepted case: the work budget (`MAX_WORK`, triggerd/language/expr.py) bounds it.

    .venv/bin/python bench/expr.py            # prints a table and the worst case
    .venv/bin/python bench/expr.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from triggerd.errors import ExpressionError
from triggerd.language.expr import MAX_TEXT_LENGTH, MAX_WORK, REGEX_MAX_MEM, Expression
from triggerd.language.globs import compile_glob
from triggerd.language.regex import compile_re2


def _env(text: str, path: str) -> dict[str, Any]:
    payload = {"path": path, "value": {"text": text, "items": [text[:1000]] * 1000}}
    return {"kind": "created", "subject": path, "source": "bench", "id": "1",
            "fingerprint": "f", "payload": payload, "value": payload["value"],
            "size": len(text), "path": path}


def _fill(unit: str, joiner: str) -> str:
    """As many copies of `unit` as fit in one expression."""
    n = (MAX_TEXT_LENGTH + len(joiner)) // (len(unit) + len(joiner))
    return joiner.join([unit] * n)


def _nested_str(depth: int) -> str:
    text = "'\\\\'"
    for _ in range(depth):
        text = f"str([{text}, {text}])" if len(text) < 1500 else f"str([{text}])"
    return text


CASES: dict[str, str] = {
    "regex-dfa-blowup": "regex(value.text, '(?:a.{0,50}){3}c')",
    "regex-dfa-thrash": "regex(value.text, 'a[ab]{20}c')",
    "regex-dfa-blowup-x-many": _fill("regex(value.text, '(?:a.{0,50}){3}c')", " or "),
    "regex-nested-quantifiers": "regex(value.text, '(a|b|ab|ba)*(a|b)*(ab)*c')",
    "regex-long-pattern-x-many": _fill(
        "regex(value.text, '" + "(?:[ab]{1,9}x)?" * 13 + "c')", " or "),
    "glob-many-stars": "value.text matches '" + "*a" * 60 + "*c'",
    "glob-many-stars-x-many": _fill("value.text matches '*a*a*a*a*a*a*a*a*a*a*a*c'", " or "),
    "nested-str": _nested_str(30),
    "replace-growth-x-many": _fill("value.text.replace('a', 'bb').count('b') < 0", " or "),
    "split-x-many": _fill("len(value.text.split('a')) < 0", " or "),
    "list-in-x-many": _fill("'zz' in value.items", " or "),
    "str-of-payload-x-many": _fill("len(str(value.items)) < 0", " or "),
    "concat-x-many": _fill("len(value.text + value.text) < 0", " or "),
    "upper-chain": "value.text" + ".upper().lower()" * 250 + " == ''",
    "power": "2 ** size > 0",
}


def _at_budget(pattern: str) -> str:
    """`regex` on the longest slice of the text the work budget lets through: the dearest
    search an accepted expression can make with this pattern."""
    size = compile_re2(pattern, max_mem=REGEX_MAX_MEM).size
    n = (MAX_WORK - 100_000 - 1_000) // (2 + size // 2)
    return f"regex(value.text[:{n}], '{pattern}')"


def _glob_at_budget(pattern: str) -> str:
    """`matches` on the longest slice of the text the work budget lets through."""
    size = compile_glob(pattern).size
    n = (MAX_WORK - 100_000 - 2_000) // (2 + size // 2)
    return f"value.text[:{n}] matches '{pattern}'"


for _glob in ("*a" + "?" * 20 + "c", "*a" + "?" * 500 + "c", "*a" * 200 + "*c"):
    CASES[f"glob-at-budget {_glob[:24]}"] = _glob_at_budget(_glob)

for _pattern in ("a[ab]{20}c", "a[ab]{12}c", "(?:a.{0,50}){3}c", "(?:a.{0,99}){10}c",
                 ".{0,999}.{0,999}", "(a|b|ab|ba)*(a|b)*(ab)*c", "[ab]*a[ab]{8}"):
    CASES[f"regex-at-budget {_pattern}"] = _at_budget(_pattern)


def run(repeat: int) -> list[dict[str, Any]]:
    random.seed(7)
    text = "".join(random.choice("ab") for _ in range(100_000))
    env = _env(text, "/".join(["a" * 200] * 20))
    out = []
    for name, source in CASES.items():
        try:
            expr = Expression(source)
        except ExpressionError as exc:
            out.append({"case": name, "accepted": False, "error": exc.message[:80]})
            continue
        worst, outcome = 0.0, ""
        for _ in range(repeat):
            t0 = time.perf_counter()
            try:
                outcome = repr(expr.test(env))
            except ExpressionError as exc:
                outcome = exc.message[:70]
            worst = max(worst, time.perf_counter() - t0)
        out.append({"case": name, "accepted": True, "worst_ms": round(worst * 1000, 1),
                    "outcome": outcome})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args.repeat)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        if row["accepted"]:
            print(f"{row['case']:40} {row['worst_ms']:8.1f} ms  {row['outcome']}")
        else:
            print(f"{row['case']:40}   refused by check: {row['error']}")
    accepted = [r for r in rows if r["accepted"]]
    worst = max(accepted, key=lambda r: r["worst_ms"])
    print(f"worst accepted: {worst['case']} {worst['worst_ms']} ms")


if __name__ == "__main__":
    main()
