"""A 10-second run of bench/soak.py, so `make test` proves the soak still works.

Ten seconds show nothing about memory growth, so the memory limit is lifted;
`make soak` runs the ten-minute soak with the real limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import OWNFEED_KEYS, ROOT


def test_soak_smoke_passes() -> None:
    env = {key: value for key, value in os.environ.items() if key not in OWNFEED_KEYS}
    env.update(
        {
            "SOAK_SECONDS": "10",
            "SOAK_WARMUP_SECONDS": "2",
            "SOAK_FAULT_RATE": "0.5",
            "SOAK_MAX_RSS_GROWTH_MB": "500",
        }
    )

    finished = subprocess.run(
        [sys.executable, "-m", "bench.soak"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = json.loads(finished.stdout[: finished.stdout.rindex("}") + 1])

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert summary["passed"] is True
    assert summary["requests"] > 100
    assert sum(summary["faults_injected"].values()) > 0
    assert summary["upstream_calls"]["media"] > 1
    assert summary["token_file"] == "ok"
