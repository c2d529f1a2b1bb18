"""One app instance for the moves-under-fire test: writes and reads a bucket through its own map.

``python shard_app_process.py CONFIG.json INDEX`` runs until the stop file of the
config exists, then writes its log (one line per operation) and exits. Each
loop inserts a row (of the moving bucket one time in ``every[INDEX]`` (0: never), else of a
bucket that stays put: an instance that rarely writes to the moving bucket is
the one whose map goes stale) and reads two of the last rows another process
had acknowledged (each process publishes its last acknowledged id in a
memory-mapped file).
Log lines:

* ``W <id> <t>`` — the insert of row ``id`` was acknowledged at monotonic time ``t``;
* ``U <id>`` — the insert raised: its outcome is unknown;
* ``R <id> <t> <found>`` — a read of row ``id`` started at ``t`` and found it (1) or not (0).

Times are ``time.monotonic()``, one clock for every process of the host.
"""

from __future__ import annotations

import json
import mmap
import random
import struct
import sys
import time
from pathlib import Path

from scalekit.db import MapStore, Pool, ReplicaSet, ShardSet


def run(config_path: str, index: int) -> None:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    users: list[int] = config["users"]
    others: list[int] = config["others"]
    every: int = config["every"][index]
    processes: int = config["processes"]
    stop = Path(config["stop"])
    rng = random.Random(config["seed"] * 10 + index)
    control = Pool.from_url(config["control"], name="control")
    sets = [ReplicaSet(Pool.from_url(url, name=f"shard{i}", acquire_timeout=60.0))
            for i, url in enumerate(config["shards"])]  # fmt: skip
    shards = ShardSet(sets, map_store=MapStore(control), refresh_interval=config["refresh"],
                      freeze_timeout=120.0)  # fmt: skip
    with open(config["published"], "r+b") as handle:
        published = mmap.mmap(handle.fileno(), 8 * processes)
    log: list[str] = []
    written = 0
    select = "SELECT id FROM events WHERE id = %s"
    while not stop.exists():
        row_id = 1_000_000 + index + processes * written
        written += 1
        user = _user(row_id, users, others, every)
        try:
            shards.execute("INSERT INTO events (id, user_id, note) VALUES (%s, %s, 'w')",
                           (row_id, user), key=user)  # fmt: skip
        except Exception as exc:  # the outcome is unknown; the checker allows either
            log.append(f"U {row_id} {type(exc).__name__}")
        else:
            log.append(f"W {row_id} {time.monotonic():.6f}")
            struct.pack_into("q", published, 8 * index, row_id)
        for _ in range(2):
            # A row another process acknowledged lately: a stale map would miss it.
            writer = rng.randrange(processes)
            (last,) = struct.unpack_from("q", published, 8 * writer)
            if not last:
                continue
            read_id = max(1_000_000 + writer, last - processes * rng.randrange(10))
            read_user = _user(read_id, users, others, config["every"][writer])
            started = time.monotonic()
            found = shards.query(select, (read_id,), key=read_user)
            log.append(f"R {read_id} {started:.6f} {1 if found else 0}")
    Path(config["log"].format(index=index)).write_text("\n".join(log) + "\n", encoding="utf-8")
    shards.close()
    control.close()
    published.close()


def _user(row_id: int, users: list[int], others: list[int], every: int) -> int:
    """The shard key of a row: the moving bucket's users one row in ``every``."""
    number = (row_id - 1_000_000) // 3
    if every and number % every == 0:
        return users[number % len(users)]
    return others[number % len(others)]


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
