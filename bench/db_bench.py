"""Queries/s: raw DBUtils PooledDB vs ``ReplicaSet.query`` vs pymysql connect-per-query.

Starts its own MariaDB primary + GTID replica on loopback (the test harness's
classes, in a temp dir), reads one row by primary key from the replica in
each variant, interleaving the variants in rounds, and prints queries/s and
ratios. Targets: ReplicaSet routing within 5% of the raw pool, and at least
5x connect-per-query.

    .venv/bin/python bench/db_bench.py            # 10 rounds x 1 s per variant
    .venv/bin/python bench/db_bench.py --quick    # 2 rounds x 0.5 s
    .venv/bin/python bench/db_bench.py --threads 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
from dbutils.pooled_db import PooledDB

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.mariadb_servers import MariaDBReplication

from scalekit.db import Pool, ReplicaSet

SQL = "SELECT id, note FROM bench_rows WHERE id = %s"
ROWS = 1000


def prepare(setup: MariaDBReplication) -> None:
    with setup.primary.app_connect() as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_rows (id INT PRIMARY KEY, note VARCHAR(64) NOT NULL)")
        cursor.executemany(
            "INSERT INTO bench_rows (id, note) VALUES (%s, %s)",
            [(i, f"row {i}") for i in range(ROWS)],
        )
    setup.wait_caught_up()


def variants(setup: MariaDBReplication, threads: int) -> dict[str, Callable[[int], Any]]:
    replica = setup.replica
    connect_args: dict[str, Any] = {
        "host": replica.host,
        "port": replica.port,
        "user": setup.app_user,
        "password": setup.app_password,
        "database": setup.database,
        "charset": "utf8mb4",
        "autocommit": True,
    }

    def pooled_db(ping: int, reset: bool) -> Callable[[int], Any]:
        raw = PooledDB(
            pymysql,
            maxconnections=threads,
            blocking=True,
            ping=ping,
            reset=reset,
            cursorclass=pymysql.cursors.DictCursor,
            **connect_args,
        )

        def raw_pool(i: int) -> Any:
            conn = raw.connection()
            try:
                cursor = conn.cursor()
                cursor.execute(SQL, (i % ROWS,))
                rows = cursor.fetchall()
                cursor.close()
                return rows
            finally:
                conn.close()

        return raw_pool

    rs = ReplicaSet(
        Pool.from_url(setup.primary.url, max_connections=threads),
        [Pool.from_url(replica.url, max_connections=threads)],
    )

    def replica_set(i: int) -> Any:
        return rs.query(SQL, (i % ROWS,))

    def connect_per_query(**extra: Any) -> Callable[[int], Any]:
        def call(i: int) -> Any:
            conn = pymysql.connect(cursorclass=pymysql.cursors.DictCursor, **connect_args, **extra)
            try:
                with conn.cursor() as cursor:
                    cursor.execute(SQL, (i % ROWS,))
                    return cursor.fetchall()
            finally:
                conn.close()

        return call

    return {
        # DBUtils' defaults ping every checkout and roll back every return:
        # two more round trips per query. "lean" switches both off.
        "PooledDB defaults": pooled_db(1, True),
        "PooledDB lean": pooled_db(0, False),
        "ReplicaSet.query": replica_set,
        "connect per query": connect_per_query(),
        # pymysql >= 1.1.2 builds a TLS context per connect (~35 ms of CPU).
        "connect, no TLS": connect_per_query(ssl_disabled=True),
    }


def run(call: Callable[[int], Any], seconds: float, threads: int) -> float:
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(n: int) -> None:
        i = n
        while time.perf_counter() < stop:
            call(i)
            i += threads
            counts[n] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.5 s")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rounds, seconds = (2, 0.5) if args.quick else (args.rounds, args.seconds)
    if shutil.which("mariadbd") is None:
        print("mariadbd not found: apt-get install mariadb-server", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="scalekit-db-bench-"))
    setup = MariaDBReplication(workdir)
    try:
        print(f"starting MariaDB primary + replica in {workdir} ...", flush=True)
        setup.start()
        prepare(setup)
        calls = variants(setup, args.threads)
        for call in calls.values():  # warm up: connections, caches
            run(call, 0.2, args.threads)
        results: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for round_number in range(rounds):
            # Rotate the order each round so no variant always follows another.
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                results[name].append(run(calls[name], seconds, args.threads))
            print(f"round {round_number + 1}/{rounds} done", flush=True)
        medians = {name: statistics.median(values) for name, values in results.items()}
        raw = medians["PooledDB lean"]
        per_connect = max(medians["connect per query"], medians["connect, no TLS"])
        print(f"\nthreads={args.threads} rounds={rounds} seconds/round={seconds}")
        print(f"{'variant':<20} {'queries/s':>10} {'vs PooledDB lean':>19} {'vs connect':>11}")
        for name, value in medians.items():
            print(f"{name:<20} {value:>10.0f} {value / raw:>18.2f}x {value / per_connect:>10.1f}x")
        overhead = 1 - medians["ReplicaSet.query"] / raw
        speedup = medians["ReplicaSet.query"] / per_connect
        print(f"\nrouting overhead vs PooledDB lean: {overhead:.1%} (target <= 5%)")
        print(f"ReplicaSet.query vs the faster connect-per-query: {speedup:.1f}x (target >= 5x)")
        return 0
    finally:
        setup.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
