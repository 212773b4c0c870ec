"""Every config example the docs show is one `triggerd check` accepts.

The pages (docs/**/*.md) and the README show configs whole (a file with `rules:`) and in parts
(a `sources:` entry on the bucket page, a `backends:` entry on the backends page). Each YAML
block that holds `sources`, `backends` or `rules` is completed into a file the way a reader
would use it (a part gets a cron source, a command backend and a rule around it) and checked
with the real `triggerd check`, so a renamed option or a changed default cannot leave a page
showing a config the product refuses. Recipes (docs/recipes/) have their own test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = [*sorted((REPO / "docs").rglob("*.md")), REPO / "README.md"]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
SECTIONS = ("sources", "backends", "rules")


class _Loader(yaml.SafeLoader):
    """YAML as triggerd reads it: `on:` is a key, not the boolean YAML 1.1 makes of it."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            body = m.group(1)
            if "--8<--" in body:
                continue  # a snippet: the included file is tested where it lives
            try:
                doc = yaml.load(body, Loader=_Loader)  # noqa: S506 - a safe loader
            except yaml.YAMLError:
                continue
            if isinstance(doc, dict) and any(k in doc for k in SECTIONS) and "tests" not in doc:
                line = text.count("\n", 0, m.start()) + 2
                found.append((f"{page.relative_to(REPO)}:{line}", doc))
    return found


def _completed(doc: dict[str, Any]) -> dict[str, Any]:
    """A part made whole: a backend and a source if it has none, a rule for each part, and
    what a part's rules or notification sources name from elsewhere on its page."""
    doc = dict(doc)
    sources = dict(doc.get("sources") or {})
    backends = dict(doc.get("backends") or {})
    rules = dict(doc.get("rules") or {})
    for rule in rules.values():
        for name in rule.get("on", []):
            sources.setdefault(name, {"type": "cron", "every": "1h"})
        backends.setdefault(rule["dispatch"]["backend"], {"type": "command", "argv": ["true"]})
    for source in list(sources.values()):
        if source.get("bucket"):
            sources.setdefault(source["bucket"], {"type": "bucket", "url": "s3://b/landing/",
                                                  "poll": "1m"})
    if not backends:
        backends["example-train"] = {"type": "command", "argv": ["true"]}
    if not sources:
        sources["example-tick"] = {"type": "cron", "every": "1h"}
    if not rules:
        for name in sources:
            rules[f"on-{name}"] = {"on": [name], "dispatch": {"backend": next(iter(backends))}}
        for name in backends:
            rules[f"to-{name}"] = {"on": [next(iter(sources))], "dispatch": {"backend": name}}
    doc.update(sources=sources, backends=backends, rules=rules)
    doc.pop("include", None)  # the included files are not shown
    return doc


EXAMPLES = _examples()


def test_the_docs_show_config_examples_in_whole_and_in_parts() -> None:
    whole = [where for where, doc in EXAMPLES if "rules" in doc and "sources" in doc]
    assert len(whole) >= 4, whole
    assert len(EXAMPLES) >= 12, [where for where, _ in EXAMPLES]


def test_every_config_example_of_the_docs_passes_check(tmp_path: Path) -> None:
    def check(i: int, where: str, doc: dict[str, Any]) -> str | None:
        path = tmp_path / f"example{i}.yaml"
        text = yaml.safe_dump(_completed(doc), sort_keys=False)
        path.write_text(text)
        env = {**os.environ, **{var: "x" for var in re.findall(r"\$\{(\w+)\}", text)},
               "TRIGGERD_STATE_DIR": str(tmp_path)}
        env.pop("TRIGGERD_STORE", None)
        done = subprocess.run([sys.executable, "-m", "triggerd", "check", "--config", str(path)],
                              capture_output=True, text=True, env=env, timeout=120,
                              check=False)
        return None if done.returncode == 0 else f"{where}: {done.stdout}{done.stderr}"

    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(lambda a: check(*a),
                                        [(i, w, d) for i, (w, d) in enumerate(EXAMPLES)]) if f]
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("bad", ["settle: 5s", "poll: 1m"])
def test_a_wrong_option_in_an_example_would_be_caught(tmp_path: Path, bad: str) -> None:
    """The check above can fail: an example with an unknown key is refused."""
    doc = _completed({"sources": {"s": {"type": "cron", "every": "1h",
                                        bad.split(":")[0]: bad.split(": ")[1]}}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run([sys.executable, "-m", "triggerd", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TRIGGERD_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2
