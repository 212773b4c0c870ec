"""Hypothesis strategies that make inputs the fuzz targets can get far with: token soups of
the expression language and of the config's YAML, mutations of valid files, and Kafka
records of JSON and raw bytes."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

_EXPR_TOKENS = [
    "kind", "subject", "source", "payload", "value", "size", "path", "id", "fingerprint",
    "payload.size", "value.score", "value.tags", "value.text", "value.tags[2].deep",
    "true", "false", "null", "None", "__class__", "_x", "os", "import",
    "len(", "int(", "float(", "str(", "abs(", "min(", "max(", "round(", "matches(", "regex(",
    ".startswith(", ".endswith(", ".lower()", ".upper()", ".strip()", ".split(", ".replace(",
    ".count(", ".find(", ".isdigit()", ".format(", ".__init__",
    "+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or", "not",
    "in", "not in", "is", "is not", "matches", "@", "|", "&", "~", "<<", ">>", ":=", "lambda",
    "if", "else", "for", "(", ")", "[", "]", "{", "}", ",", ":", ".", "'", '"', "\\",
    "0", "1", "-1", "2048", "0.25", "1e308", "9" * 30, "0x10", "1_000", "'*.parquet'",
    "'**/*'", "'(a+)+b'", "'a(?=b)'", "'[z-a]'", "'['", "'\\\\1'", "'\\x00'", "'ü'", "'\\n'",
    "'a' * 99999", "[1, 2, 3]", "(1,)", "{'a': 1}", "f'x'", "b'x'", "...", "\n", "\t", " ",
]


@st.composite
def expressions(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    parts = draw(st.lists(st.sampled_from(_EXPR_TOKENS) | st.text(max_size=4), max_size=40))
    return " ".join(parts).encode("utf-8", "surrogatepass")


_YAML_LINES = [
    "sources:", "rules:", "backends:", "include: [inc.yaml]", "include: ['*.yaml']",
    "include:", "  - inc.yaml", "  - {path: inc.yaml, only: rules}", "store: sqlite://",
    "retention: 30d", "retention: -1d", "state_dir: .", "  cron1: {type: cron, every: 1h}",
    "  fs: {type: filesystem, paths: [/nonexistent], patterns: ['**/*.parquet']}",
    "  k: {type: kafka, brokers: ['h:1'], topic: t}", "  c: {type: command, argv: [true]}",
    "  h: {type: http, url: 'http://127.0.0.1:1/x', secret_env: X}",
    "  r:", "    on: [cron1]", "    dispatch: {backend: c}", "    when: {min_events: 2}",
    "    match: {where: \"size > 0\"}", "    match: {where: \"regex(path, '(a)\\\\1')\"}",
    "    group_by: '{payload.dir}'", "    when: {schedule: '0 2 * * *'}",
    "a: &a [x, x, x, x, x, x, x, x, x]", "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]", "d: [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "e: &e [*e]", "f: &f {<<: *f}", "<<: *a", "g: !!python/object:os.system [true]",
    "h: !!binary aGVsbG8=", "? [a, b]", ": c", "---", "...", "%YAML 1.1", "%TAG ! tag:x,1:",
    "i: ${X}", "j: ${NOPE}", "k: \"\\x00\\ud800\"", "l: [[[[[[[[[[[[[[", "m: {{{{{{{{",
    "  - - - - -", "\t", "  ", "n: |", "  text", "o: 2026-12-06", "p: 0o777", "q: .inf",
    "on: yes", "no: off", "~: ~",
]


@st.composite
def configs(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice <= 2:  # a valid config, mutated
        seed = draw(st.sampled_from(_SEEDS))
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.integers(0, 2))
            if op == 0 and at < len(data):
                del data[at:at + draw(st.integers(1, 20))]
            elif op == 1:
                data[at:at] = draw(st.sampled_from(_YAML_LINES)).encode() + b"\n"
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=4))
        return bytes(data)
    lines = draw(st.lists(st.sampled_from(_YAML_LINES), max_size=30))
    main = "\n".join(lines).encode()
    if draw(st.booleans()):
        inc = draw(st.lists(st.sampled_from(_YAML_LINES), max_size=15))
        main += b"\n---inc---\n" + "\n".join(inc).encode()
    return main


_SEEDS = [
    (ROOT / "config" / "triggerd.example.yaml").read_bytes(),
    b"sources:\n  n: {type: cron, every: 1h}\nbackends:\n  c: {type: command, argv: [true]}\n"
    b"rules:\n  r:\n    on: [n]\n    match: {where: \"kind == 'tick'\"}\n"
    b"    dispatch: {backend: c}\n",
]

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["model", "a", "b", "report_id", "0", ""]) | st.text(
        max_size=5), children, max_size=5),
    max_leaves=30)


@st.composite
def kafka_records(draw: st.DrawFn) -> bytes:
    head = draw(st.binary(min_size=3, max_size=3))
    key = draw(st.binary(max_size=20).filter(lambda b: b"\0" not in b))
    if draw(st.booleans()):
        value = json.dumps(draw(_JSON)).encode()
        if draw(st.booleans()):  # and broken
            value = value[:draw(st.integers(0, len(value)))]
    elif draw(st.booleans()):
        value = b"[" * draw(st.integers(1, 100_000))
    else:
        value = draw(st.binary(max_size=200))
    return head + key + b"\0" + value
