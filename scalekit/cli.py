"""The ``scalekit`` command.

::

    scalekit shards plan --strategy jump --from 4 --to 5
    scalekit shards move --bucket 17 --to 4 --control mysql://... \\
        --shard mysql://.../s0[,mysql://replica/s0] --shard mysql://.../s1 ... \\
        --table tasks:user_id:id [--dry-run]

A progress bar (rich, from the ``cli`` extra) on a terminal, plain log lines otherwise.
Every error is one line on stderr saying what to fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from .db.shards import Checkpoint

__all__ = ["main"]

_STRATEGIES = ("jump", "modulo", "bucket")


class _UsageError(Exception):
    """Arguments that do not fit together; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with each error as one line naming the fix instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _strategy(name: str, shards: int, buckets: int) -> Any:
    from .db.shards import BucketMap, JumpHash, Modulo

    if name == "jump":
        return JumpHash(shards)
    if name == "modulo":
        return Modulo(shards)
    return BucketMap.uniform(shards, buckets)


def _plan(args: argparse.Namespace, out: TextIO) -> int:
    from .db.shards import BucketMap, plan

    if args.save and not args.map and args.strategy != "bucket":
        raise _UsageError("--save writes a BucketMap: add --strategy bucket (or --map FILE)")
    if args.to < 1:
        raise _UsageError(f"--to {args.to}: give the shard count after the change (at least 1)")
    if args.buckets is not None and (args.map or args.strategy != "bucket"):
        raise _UsageError(
            f"--buckets {args.buckets} applies to --strategy bucket without --map "
            "(a map file has its own bucket count)"
        )
    if args.map:
        try:
            current: Any = BucketMap.load(args.map)
        except OSError as exc:
            raise _UsageError(f"--map {args.map}: {exc.strerror or exc}") from None
        except ValueError as exc:  # not JSON, not UTF-8, not a bucket map
            raise _UsageError(f"--map {args.map}: {exc}") from None
    elif getattr(args, "from") is None:
        raise _UsageError("give the shard count now: --from N (or the current map: --map FILE)")
    else:
        current = _strategy(args.strategy, getattr(args, "from"), args.buckets or 1024)
    if isinstance(current, BucketMap):
        proposed: Any = current.rebalance(args.to)
    else:
        proposed = _strategy(args.strategy, args.to, args.buckets or 1024)
    keys: range | None = range(args.keys or 100_000)
    if isinstance(proposed, BucketMap) and not args.keys:
        keys = None  # the reassigned buckets are exact
    result = plan(current, proposed, keys)
    print(f"{current!r} -> {proposed!r}", file=out)
    print(result.summary(), file=out)
    if result.buckets:
        moves = " ".join(f"{bucket}:{old}->{new}" for bucket, (old, new) in
                         sorted(result.buckets.items()))  # fmt: skip
        print(f"bucket moves (bucket:from->to): {moves}", file=out)
    if args.save and isinstance(proposed, BucketMap):
        try:
            proposed.save(args.save)
        except OSError as exc:
            raise _UsageError(f"--save {args.save}: {exc.strerror or exc}") from None
        print(f"proposed map (version {proposed.version}) saved to {args.save}", file=out)
    return 0


@contextmanager
def _progress_reporter(out: TextIO) -> Iterator[Callable[[Any], None]]:
    """Rich progress bars on a terminal, else one log line per table step."""
    if out.isatty():
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        except ImportError:
            pass
        else:
            tasks: dict[tuple[str, str], Any] = {}
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(file=out),
                transient=False,
            ) as bar:

                def show(event: Any) -> None:
                    key = (event.step, event.table)
                    if key not in tasks:
                        tasks[key] = bar.add_task(f"{event.step} {event.table}", total=event.total)
                    bar.update(tasks[key], completed=event.done, total=event.total)

                yield show
            return
    last: dict[tuple[str, str], int] = {}

    def log(event: Any) -> None:
        key = (event.step, event.table)
        # One line per table step plus one per tenth, so logs stay short.
        step = max(event.total // 10, 1)
        previous = last.get(key)
        if previous is None or event.done >= event.total or event.done - previous >= step:
            last[key] = event.done
            print(f"{event.step} {event.table}: {event.done}/{event.total} rows", file=out,
                  flush=True)  # fmt: skip

    yield log


def _move(args: argparse.Namespace, out: TextIO, checkpoint: Checkpoint | None) -> int:
    from .db import Pool, ReplicaSet
    from .db.shards import ShardedTable, abort_move, move_bucket, plan_move

    if not args.shard:
        raise _UsageError("give every shard's URL, in order: --shard URL --shard URL ...")
    if args.to is None and not args.abort:
        raise _UsageError("give the target shard: --to SHARD (only --abort needs none)")
    if args.abort and args.dry_run:
        raise _UsageError("--abort and --dry-run do not go together: choose one")
    tables = [ShardedTable.parse(text) for text in args.table]
    pools: list[Pool] = []
    try:
        control = Pool.from_url(args.control, name="control")
        pools.append(control)
        shards: list[Pool | ReplicaSet] = []
        for index, urls in enumerate(args.shard):
            # "PRIMARY_URL,REPLICA_URL,...": the mover waits for the replicas before the flip.
            # A comma starts the next URL only before a scheme (a password may hold one).
            primary, *replicas = re.split(r",(?=[A-Za-z][A-Za-z0-9+.-]*://)", urls)
            first = Pool.from_url(primary, name=f"shard{index}")
            pools.append(first)
            if not replicas:
                shards.append(first)
                continue
            pools += [Pool.from_url(url, name=f"shard{index}-replica{number}")
                      for number, url in enumerate(replicas, 1)]  # fmt: skip
            shards.append(ReplicaSet(first, pools[len(pools) - len(replicas) :]))
        if args.abort:
            deleted = abort_move(shards, args.bucket, tables=tables, control=control,
                                 batch_size=args.batch_size)  # fmt: skip
            print(f"move of bucket {args.bucket} rolled back: {deleted} copied rows deleted "
                  "from the target; the bucket stays on its source", file=out)  # fmt: skip
            return 0
        if args.dry_run:
            result = plan_move(shards, args.bucket, args.to, tables=tables, control=control)
            print(result.summary(), file=out)
            return 0
        with _progress_reporter(out) as report:
            done = move_bucket(
                shards,
                args.bucket,
                args.to,
                tables=tables,
                control=control,
                batch_size=args.batch_size,
                progress=report,
                checkpoint=checkpoint,
                refresh_interval=args.refresh_interval,
                replica_timeout=args.replica_timeout,
            )
        if done.already:
            print(f"bucket {done.bucket} is already on shard {done.target}", file=out)
        else:
            rows = ", ".join(f"{table}={count}" for table, count in done.rows.items())
            resumed = f" (resumed at {done.resumed_from})" if done.resumed_from else ""
            print(
                f"bucket {done.bucket} moved: shard {done.source} -> shard {done.target}, "
                f"map version {done.version}{resumed}; rows {rows}; {done.synced} rows "
                "written during the copy synced",
                file=out,
            )
        return 0
    finally:
        for pool in pools:
            pool.close()


def build_parser() -> argparse.ArgumentParser:
    """The ``scalekit`` argument parser."""
    from .db.shards.freshness import DEFAULT_REFRESH_INTERVAL
    from .db.shards.mover import DEFAULT_REPLICA_TIMEOUT

    parser = _Parser(prog="scalekit", description="scalekit operations")
    commands = parser.add_subparsers(dest="command", required=True)
    shards = commands.add_parser("shards", help="shard planning and bucket moves")
    actions = shards.add_subparsers(dest="action", required=True)

    plan = actions.add_parser("plan", help="what growing (or shrinking) the shard count moves")
    plan.add_argument("--strategy", choices=_STRATEGIES, default="jump")
    plan.add_argument("--from", type=int, metavar="N", help="shards now (not with --map)")
    plan.add_argument("--to", type=int, required=True, metavar="M", help="shards after")
    plan.add_argument(
        "--keys",
        type=int,
        default=0,
        metavar="K",
        help="examine ids 0..K-1 (default 100000; bucket maps need none)",
    )
    plan.add_argument("--buckets", type=int, help="bucket count (--strategy bucket; default 1024)")
    plan.add_argument("--map", help="current BucketMap JSON file (instead of a uniform map)")
    plan.add_argument("--save", help="write the proposed BucketMap to this JSON file")

    move = actions.add_parser("move", help="move one bucket of a BucketMap to another shard")
    move.add_argument("--bucket", type=int, required=True)
    move.add_argument("--to", type=int, metavar="SHARD", help="target shard (not with --abort)")
    move.add_argument("--control", required=True,
                      help="database URL holding the bucket map and move records")  # fmt: skip
    move.add_argument("--shard", action="append", default=[], metavar="URL[,REPLICA_URL...]",
                      help="a shard's primary URL, then its replicas' (the mover waits for them "
                      "before the flip); repeat for every shard, in order")  # fmt: skip
    move.add_argument("--table", action="append", default=[], required=True,
                      metavar="TABLE:SHARD_KEY:PK",
                      help="a table that follows the bucket, e.g. tasks:user_id:id")  # fmt: skip
    move.add_argument("--batch-size", type=int, default=500)
    move.add_argument("--refresh-interval", type=float, default=DEFAULT_REFRESH_INTERVAL,
                      metavar="SECONDS",
                      help="the instances' ShardSet refresh_interval: the mover waits this long "
                      "after the flip before opening the target, and again before deleting "
                      f"(default {DEFAULT_REFRESH_INTERVAL})")  # fmt: skip
    move.add_argument("--replica-timeout", type=float, default=DEFAULT_REPLICA_TIMEOUT,
                      metavar="SECONDS",
                      help="how long the flip waits for the target's replicas to have the "
                      f"copied rows (default {DEFAULT_REPLICA_TIMEOUT:g})")  # fmt: skip
    move.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    move.add_argument("--abort", action="store_true",
                      help="roll back an unfinished move that has not flipped the map")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, *, checkpoint: Checkpoint | None = None) -> int:
    """Run the ``scalekit`` command; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        checkpoint: passed to ``move_bucket`` by ``shards move`` (see
            ``scalekit.db.shards.Checkpoint``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    from .db.errors import DatabaseError

    try:
        if args.action == "plan":
            if args.keys and not 0 < args.keys <= _MAX_PLAN_KEYS:
                raise _UsageError(
                    f"--keys {args.keys}: give a positive number of ids, at most "
                    f"{_MAX_PLAN_KEYS} (the share that moves is exact to 0.1% long before)"
                )
            return _plan(args, out)
        return _move(args, out, checkpoint)
    except (_UsageError, DatabaseError, ValueError) as exc:
        # ConfigError and MoveError are DatabaseErrors; a bad JSON map is a ValueError.
        return _error(args.action, str(exc))
    except Exception as exc:
        if not _from_driver(exc):
            raise
        # The driver's own error (a missing table or column): the pool raises it unchanged.
        return _error(args.action, f"the database refused a statement: {exc}; check that every "
                      "--table (table:shard_key:primary_key) exists on every shard")  # fmt: skip


_MAX_PLAN_KEYS = 10_000_000
"""``shards plan --keys``: hashing more ids takes minutes and tells nothing new."""


def _error(action: str, message: str) -> int:
    message = " ".join(message.split())
    print(f"scalekit shards {action}: error: {message}", file=sys.stderr)
    return 2


def _from_driver(exc: Exception) -> bool:
    """Whether ``exc`` comes from a DB-API driver (its top-level module has ``apilevel``)."""
    module = sys.modules.get(type(exc).__module__.partition(".")[0])
    return module is not None and hasattr(module, "apilevel")


if __name__ == "__main__":
    sys.exit(main())
