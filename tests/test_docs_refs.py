"""The generated reference pages (docs/reference/config.md from the config's JSON Schema,
cli.md from the parser) match the code: a change to an option or a command without
`make refs` fails here, naming the stale page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_reference_pages_are_current() -> None:
    done = subprocess.run([sys.executable, str(REPO / "docs" / "gen_refs.py"), "--check"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_the_config_reference_names_every_source_and_backend_type_and_key() -> None:
    from triggerd import registry
    from triggerd.config.schema import json_schema

    page = (REPO / "docs" / "reference" / "config.md").read_text()
    for type_name in [*registry.source_types(), *registry.backend_types()]:
        assert f"## `type: {type_name}`" in page
    for model in json_schema()["$defs"].values():
        for key in model.get("properties", {}):
            assert f"| `{key}` |" in page


def test_list_defaults_made_by_a_factory_are_in_the_schema_and_the_reference() -> None:
    """A key whose default is a list (a filesystem source's `events`, a command's
    `success_codes`) shows it, in editors and on the reference page, like any other default."""
    from triggerd.config.schema import json_schema

    defs = json_schema()["$defs"]
    assert defs["FilesystemOptions"]["properties"]["events"]["default"] == [
        "created", "modified", "moved"]
    assert defs["CommandOptions"]["properties"]["success_codes"]["default"] == [0]
    page = (REPO / "docs" / "reference" / "config.md").read_text()
    assert '| `success_codes` | list of integer | `[0]` |' in page
