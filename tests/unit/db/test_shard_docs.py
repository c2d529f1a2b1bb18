"""The movement table in docs/shards.md is what bench/shard_bench.py measures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_docs_movement_table_matches_the_measurement() -> None:
    spec = importlib.util.spec_from_file_location("shard_bench", ROOT / "bench" / "shard_bench.py")
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    page = (ROOT / "docs" / "shards.md").read_text(encoding="utf-8")
    for (label, modulo, jump, bucket), (before, after) in zip(
        bench.movement_table(), bench.MOVEMENT_SIZES, strict=True
    ):
        ideal = (after - before) / after
        line = f"| {label} | {modulo:.1%} | {jump:.1%} | {bucket:.1%} | {ideal:.1%} |"
        assert line in page
