"""systemd/triggerd.service: what the issue requires, `systemd-analyze verify` and an exposure
of at most 2.0 by `systemd-analyze security --offline=yes` (Debian's `systemd` package; the
Makefile installs it before the suite when it is missing and it can)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "triggerd.service"
INSTALLED = "/opt/triggerd/bin/triggerd"  # where docs/operations.md (systemd) installs the venv


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (make test installs Debian's systemd)")
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    return found


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_says_what_operators_rely_on() -> None:
    d = directives()
    expected = {
        "Type": "notify", "ExecReload": "/bin/kill -HUP $MAINPID",
        "StateDirectory": "triggerd", "ConfigurationDirectory": "triggerd",
        "RestartPreventExitStatus": "2", "DynamicUser": "yes", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "CapabilityBoundingSet": "", "UMask": "0077",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}: {d.get(key)}"
    assert "@system-service" in d["SystemCallFilter"]
    assert d["Environment"][0] == "TRIGGERD_CONFIG=/etc/triggerd/triggerd.yaml"
    assert d["WatchdogSec"] and d["ExecStart"] == [f"{INSTALLED} run"]
    text = UNIT.read_text()
    assert "#ReadOnlyPaths=" in text and "#ReadWritePaths=" in text  # documented for data


def installed_copy(tmp_path: Path) -> Path:
    """The unit with the install path pointing at this checkout's triggerd (verify checks
    that ExecStart's binary exists; nothing else is changed)."""
    exe = Path(sys.executable).with_name("triggerd")
    assert exe.exists(), "triggerd is not installed in this environment"
    unit = tmp_path / "triggerd.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(exe)))
    return unit


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    res = subprocess.run([analyze(), "verify", "--man=no", str(installed_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path) -> None:
    res = subprocess.run([analyze(), "security", "--offline=yes", "--threshold=20",
                          str(installed_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for triggerd\.service: (\d+\.\d+)", res.stdout)
    assert found, res.stdout + res.stderr
    assert float(found.group(1)) <= 2.0, res.stdout
    assert res.returncode == 0, res.stdout + res.stderr
