"""One run of the benchmark harness with tiny numbers, so the harness keeps working.

The figures of such a run mean nothing; the test checks that every case ran and
produced numbers, and that the report was written. It uses wrk when it is
installed and the Python client otherwise (`make test` does not install wrk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.run import CASE_ORDER

ROOT = Path(__file__).resolve().parent.parent


def _has_number(value: Any) -> bool:
    """Tell whether a figure, or anything nested in it, is a number."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, dict):
        return any(_has_number(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_number(item) for item in value)
    return False


def test_bench_smoke_writes_every_case(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    report_path = tmp_path / "benchmarks.md"
    argv = [sys.executable, "-m", "bench.run", "--smoke"]
    argv += ["--results", str(results_path), "--report", str(report_path)]

    completed = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(results_path.read_text(encoding="utf-8"))
    assert list(results["cases"]) == list(CASE_ORDER)
    for name, case in results["cases"].items():
        if name == "tweets" and case["status"] == "not run":
            assert "404" in case["reason"], case["reason"]
            continue
        assert case["status"] == "run", f"{name}: {case.get('reason')}"
        assert _has_number(case["figures"]), name
        assert case["met"] in (True, False, None), name
        for label, run in case["runs"].items():
            assert run["requests"] > 0, f"{name}, {label}"
            assert run["rps"] > 0, f"{name}, {label}"
    report = report_path.read_text(encoding="utf-8")
    for case in results["cases"].values():
        assert f"## {case['title']}" in report
    assert results["machine"]["python"]
