"""Turns bench/run_all.py's results.json into the stdout table, the chart and docs/benchmarks.md.

``render_markdown`` is the whole docs page: tests/unit/test_benchmarks_page.py
renders it again from the committed JSON and checks the page is exactly that,
so the page's numbers are the JSON's. No third-party import at module level
(the test runs without matplotlib).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

UVICORN = "uvicorn --loop uvloop --http httptools --workers 1"

_OBSERVABILITY_NOTE = (
    "in `bench/profiles/starlette-obs.txt` (py-spy under the same load) the layer's own work "
    "is 9.9% of the samples (43.5% with the app inside it, 33.6% for the app), and half of "
    "it (5.2%) is the JSON access line: its rendering and one `write` per request. The rest "
    "is the request id, the structlog context and prometheus_client's locked value updates. "
    "The peers write no access line; `access_log=False` removes that share"
)
NOTES: Mapping[str, str] = {
    "observability-vs-bare": _OBSERVABILITY_NOTE,
    "observability-vs-peer": _OBSERVABILITY_NOTE,
    "ratelimit-vs-bare": (
        "in `bench/profiles/starlette-ratelimit.txt` the limiter is 48% of the samples with "
        "the app inside it; its Redis round trip on its held connection "
        "(`RedisBackend._round_trip`) is 11%"
    ),
    "install-vs-bare": (
        "in `bench/profiles/starlette-install.txt` (recorded before the limit check and the "
        "cache lookup shared one call) the two Redis round trips on two held connections were "
        "the cache's `ScriptPipe` 6.5% of the samples and the limiter's 4.9%, and the two "
        "middlewares' request planning (`Planner.plan`, the cache's key digests) about 7% more"
    ),
}
"""Per target key: what a profile names as the cost in the way, printed when it is missed."""


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _rows(data: Mapping[str, Any]) -> list[list[str]]:
    return [
        [
            row["name"],
            _number(row["rps"], ".0f"),
            _number(row["x_bare"], ".2f"),
            _number(row["p50_ms"], ".2f"),
            _number(row["p99_ms"], ".2f"),
            _number(row["cpu_us"], ".0f"),
            _number(row["redis_commands"], ".2f"),
            _number(row["redis_round_trips"], ".2f"),
        ]
        for row in data["variants"]
    ]


_HEADERS = (
    "variant",
    "req/s",
    "x bare",
    "p50 ms",
    "p99 ms",
    "CPU µs/req",
    "Redis cmds/req",
    "Redis trips/req",
)


def text_table(data: Mapping[str, Any]) -> str:
    """The table printed on stdout: variants, then targets."""
    rows = [list(_HEADERS), *_rows(data)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADERS))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    setup = data["setup"]
    lines.insert(
        0,
        f"{setup['rounds']} interleaved rounds x {setup['duration_s']:g} s, "
        f"{setup['server']}; {setup['client']} (medians; x bare: same framework, same round)",
    )
    for target in data["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(f"target {target['text']}: {target['ratio']:.2f}x — {verdict}")
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The docs page (docs/benchmarks.md) for one results.json."""
    setup, machine = data["setup"], data["machine"]
    labels = {row["name"]: row["label"] for row in data["variants"]}
    variant_rows = [
        [f"`{row[0]}`", labels[row[0]], *row[1:]] for row in _rows(data)
    ]  # the label after the name
    target_rows = []
    for target in data["targets"]:
        verdict = "**met**" if target["met"] else "**missed**"
        note = "" if target["met"] else NOTES.get(target["key"], "")
        target_rows.append(
            [
                target["text"],
                f"`{target['variant']}` ÷ `{target['against']}`",
                f"{target['ratio']:.2f}x",
                f"{target['at_least']:g}x",
                verdict + (f": {note}" if note else ""),
            ]
        )
    versions = ", ".join(f"{name} {version}" for name, version in data["versions"].items())
    load = " / ".join(f"{value:g}" for value in machine["load_average_before"])
    return f"""# Benchmarks

What each scalekit layer costs per request, next to bare Starlette and FastAPI
and to the libraries people use for the same job, measured side by side in
one run on one machine. Every variant serves the same endpoint
(`GET {setup["path"]}`, a ~1.1 KB JSON document); only the layers in front of
it change. Rate limits are never reached and cache entries never expire
during a run, so the rate-limit rows are admitted requests with their headers
and the cache rows are hits, each one looked up in Redis.

![Requests per second of every variant](assets/benchmarks/results.png)

## Results

Measured on {data["date"]}: {machine["cpu"]}, {machine["cpus"]} CPUs,
{machine["system"]}, Python {machine["python"]}.
{setup["rounds"]} interleaved rounds of {setup["duration_s"]:g} s per variant;
the server is `{setup["server"]}`, the client `{setup["client"]}`;
{setup["redis"]}. Values are medians over the rounds; every ratio is taken
between two variants of the same round, then its median is shown.

{
        _markdown_table(
            [
                "variant",
                "what",
                "req/s",
                "x bare",
                "p50 ms",
                "p99 ms",
                "server CPU µs/req",
                "Redis cmds/req",
                "Redis round trips/req",
            ],
            variant_rows,
            "llrrrrrrr",
        )
    }

- **x bare**: req/s over bare Starlette (or bare FastAPI for a FastAPI variant).
- **server CPU µs/req**: CPU time of the uvicorn process over the run, per request.
- **Redis cmds/req**: `INFO commandstats` of the variant's own redis-server around
  each run; the commands a Lua script runs count too.
- **Redis round trips/req**: {_TRIPS_TEXT}

## Targets

{_markdown_table(["target", "measured", "figure", "target", "verdict"], target_rows, "lllrl")}
{_round_trips_note(data)}
{_db_section(data)}## How to reproduce

```sh
make bench                                  # 3 rounds x 10 s per variant, about 10 minutes
.venv/bin/python bench/run_all.py --quick   # 3 rounds x 2 s
.venv/bin/python bench/run_all.py --variants starlette:obs,starlette:correlation-id+exporter
```

`make bench` installs the `bench` extra (the peers, matplotlib), starts one
redis-server per variant that needs one, runs every variant and rewrites
`docs/assets/benchmarks/results.json`, `results.png` and this page from them
(a test checks that this page shows the numbers of that JSON). The apps are in
`bench/apps.py`, the harness in `bench/run_all.py`; profiles of the hot paths
are kept in `bench/profiles/`.

The machine was not idle: other processes shared its {machine["cpus"]} CPUs
(load average {load} when the run started), which is why rounds are
interleaved and ratios are taken within a round. Absolute req/s move from run
to run; the ratios move much less.

Versions: {versions}.
"""


def _round_trips_note(data: Mapping[str, Any]) -> str:
    rows = {row["name"]: row for row in data["variants"]}
    stacked = rows.get("starlette:obs+ratelimit+cache", {}).get("redis_round_trips")
    installed = rows.get("starlette:install", {}).get("redis_round_trips")
    if stacked is None or installed is None:
        return ""
    verdict = "met" if installed <= 1 else "not met"
    return (
        f"\nA rate-limited, cached hit costs {installed:g} Redis round trip(s) under "
        "`install()` (`starlette:install`), which sends the cache's lookup in the same write "
        "as the limit check when both live on one standalone Redis: the aim of one call "
        f"where the keys allow it is {verdict}. The same two middlewares stacked by hand "
        f"(`starlette:obs+ratelimit+cache`) cost {stacked:g}: each keeps its own call.\n"
    )


def _db_section(data: Mapping[str, Any]) -> str:
    db = data.get("db")
    if not db:
        return ""
    return f"""## Database routing

`{db["command"]}` in the same run: one row read by primary key from the
replica of a MariaDB primary + GTID replica pair (started by the bench, on
this machine), through DBUtils' `PooledDB` (its defaults, and "lean": no
ping, no reset), through `ReplicaSet.query`, and with a new connection per
query. See [Database: pools and replicas](db.md) for what the routing does
per query.

```text
{db["output"]}
```

"""


_TRIPS_TEXT = (
    "sequential requests through a counting TCP proxy in front of that Redis; "
    "a pipeline or a script call is one round trip."
)

_COLOURS = {"bare": "#9e9e9e", "scalekit": "#1e88e5", "peer": "#fb8c00"}


def write_chart(data: Mapping[str, Any], path: Path) -> None:
    """A horizontal bar chart of req/s per variant (needs matplotlib: the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(data["variants"]))
    figure, axes = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.4), dpi=110)
    bars = axes.barh(
        [row["name"] for row in rows],
        [row["rps"] for row in rows],
        color=[_COLOURS[row["kind"]] for row in rows],
    )
    for bar, row in zip(bars, rows, strict=True):
        ratio = "" if row["x_bare"] is None else f"  {row['x_bare']:.2f}x bare"
        axes.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {row['rps']:.0f}{ratio}",
            va="center",
            fontsize=8,
        )
    axes.set_xlabel("requests per second (median of rounds; higher is better)")
    axes.set_title(
        f"scalekit vs peers, {data['setup']['rounds']} interleaved rounds, {data['date']}",
        fontsize=10,
    )
    axes.margins(x=0.25)
    axes.tick_params(axis="y", labelsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in _COLOURS.values()]
    axes.legend(handles, list(_COLOURS), loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":  # re-render the page and the chart from the committed JSON
    import json
    import sys

    root = Path(__file__).resolve().parents[1]
    results = root / "docs" / "assets" / "benchmarks" / "results.json"
    loaded = json.loads(results.read_text(encoding="utf-8"))
    (root / "docs" / "benchmarks.md").write_text(render_markdown(loaded), encoding="utf-8")
    if "--chart" in sys.argv:
        write_chart(loaded, results.with_name("results.png"))
