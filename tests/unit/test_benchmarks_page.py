"""docs/benchmarks.md shows the numbers of the JSON bench/run_all.py wrote, and nothing else.

The page is rendered by bench/report.py from docs/assets/benchmarks/results.json;
rendering it again here must give the page byte for byte, so a figure on the
page can only come from a run's JSON. The JSON must be a complete run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "assets" / "benchmarks" / "results.json"
CHART = ROOT / "docs" / "assets" / "benchmarks" / "results.png"


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import report
        import run_all
    finally:
        sys.path.remove(str(ROOT / "bench"))

    class Bench:
        pass

    found = Bench()
    found.report = report  # type: ignore[attr-defined]
    found.run_all = run_all  # type: ignore[attr-defined]
    return found


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(RESULTS.read_text(encoding="utf-8"))
    return loaded


def test_the_page_is_its_json_rendered(bench: Any, data: dict[str, Any]) -> None:
    assert PAGE.read_text(encoding="utf-8") == bench.report.render_markdown(data), (
        "docs/benchmarks.md differs from what bench/report.py renders from results.json: "
        "run `make bench` (or bench/run_all.py) instead of editing the page"
    )


def test_the_json_is_a_complete_run_with_date_and_machine(bench: Any, data: dict[str, Any]) -> None:
    assert [row["name"] for row in data["variants"]] == [
        variant.name for variant in bench.run_all.VARIANTS
    ]
    assert data["setup"]["rounds"] >= 3
    assert data["date"]
    assert data["machine"]["cpu"]
    assert data["machine"]["cpus"]
    for row in data["variants"]:
        assert len(row["rounds_rps"]) == data["setup"]["rounds"]
        assert row["rps"] > 0
        assert row["cpu_us"] > 0
        uses_redis = bench.run_all.BY_NAME[row["name"]].redis
        assert (row["redis_commands"] is not None) == uses_redis
        assert (row["redis_round_trips"] is not None) == uses_redis


def test_every_target_is_judged_by_its_figure(bench: Any, data: dict[str, Any]) -> None:
    assert [target["key"] for target in data["targets"]] == [
        target.key for target in bench.run_all.TARGETS
    ]
    for target in data["targets"]:
        assert target["met"] == (target["ratio"] >= target["at_least"])
        verdict = "**met**" if target["met"] else "**missed**"
        row = f"| {target['text']} | `{target['variant']}` ÷ `{target['against']}` | "
        assert f"{row}{target['ratio']:.2f}x | {target['at_least']:g}x | {verdict}" in (
            PAGE.read_text(encoding="utf-8")
        )


def test_the_chart_is_there() -> None:
    assert CHART.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
