"""The profiling/benchmark scripts run on tiny settings (figures themselves live in docs/)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_profile_networks_prints_a_table():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_networks.py"), "--sizes", "64", "--repeats", "1", "--batch", "2", "--only", "U-Net", "CPU recipe"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "network" not in line]
    assert len(rows) == 2 and all("failed" not in r for r in rows)
    params = [float(r.split("|")[2]) for r in rows]
    assert all(p > 0.5 for p in params)
