"""The ``scalekit`` command.

::

    scalekit shards plan --strategy jump --from 4 --to 5
    scalekit shards move --bucket 17 --to 4 --control mysql://... \\
        --shard mysql://.../s0 --shard mysql://.../s1 ... --table tasks:user_id:id [--dry-run]

A progress bar (rich, from the ``cli`` extra) on a terminal, plain log lines otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .db.shards import Checkpoint

__all__ = ["main"]

_STRATEGIES = ("jump", "modulo", "bucket")


def _strategy(name: str, shards: int, buckets: int) -> Any:
    from .db.shards import BucketMap, JumpHash, Modulo

    if name == "jump":
        return JumpHash(shards)
    if name == "modulo":
        return Modulo(shards)
    return BucketMap.uniform(shards, buckets)


def _plan(args: argparse.Namespace, out: TextIO) -> int:
    from .db.shards import BucketMap, plan

    current = (
        BucketMap.load(args.map)
        if args.map
        else _strategy(args.strategy, getattr(args, "from"), args.buckets)
    )
    if isinstance(current, BucketMap):
        proposed: Any = current.rebalance(args.to)
    else:
        proposed = _strategy(args.strategy, args.to, args.buckets)
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
    if args.save:
        if not isinstance(proposed, BucketMap):
            print("--save only applies to --strategy bucket", file=sys.stderr)
            return 2
        proposed.save(args.save)
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
    from .db import Pool
    from .db.shards import ShardedTable, abort_move, move_bucket, plan_move

    if not args.shard:
        print("give every shard's URL, in order: --shard URL --shard URL ...", file=sys.stderr)
        return 2
    tables = [ShardedTable.parse(text) for text in args.table]
    control = Pool.from_url(args.control, name="control")
    shards = [Pool.from_url(url, name=f"shard{index}") for index, url in enumerate(args.shard)]
    try:
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
        control.close()
        for pool in shards:
            pool.close()


def build_parser() -> argparse.ArgumentParser:
    """The ``scalekit`` argument parser."""
    parser = argparse.ArgumentParser(prog="scalekit", description="scalekit operations")
    commands = parser.add_subparsers(dest="command", required=True)
    shards = commands.add_parser("shards", help="shard planning and bucket moves")
    actions = shards.add_subparsers(dest="action", required=True)

    plan = actions.add_parser("plan", help="what growing (or shrinking) the shard count moves")
    plan.add_argument("--strategy", choices=_STRATEGIES, default="jump")
    plan.add_argument("--from", type=int, required=True, metavar="N", help="shards now")
    plan.add_argument("--to", type=int, required=True, metavar="M", help="shards after")
    plan.add_argument(
        "--keys",
        type=int,
        default=0,
        metavar="K",
        help="examine ids 0..K-1 (default 100000; bucket maps need none)",
    )
    plan.add_argument("--buckets", type=int, default=1024, help="bucket count (bucket strategy)")
    plan.add_argument("--map", help="current BucketMap JSON file (instead of a uniform map)")
    plan.add_argument("--save", help="write the proposed BucketMap to this JSON file")

    move = actions.add_parser("move", help="move one bucket of a BucketMap to another shard")
    move.add_argument("--bucket", type=int, required=True)
    move.add_argument("--to", type=int, required=True, metavar="SHARD")
    move.add_argument("--control", required=True,
                      help="database URL holding the bucket map and move records")  # fmt: skip
    move.add_argument("--shard", action="append", default=[], metavar="URL",
                      help="a shard's primary URL; repeat for every shard, in order")  # fmt: skip
    move.add_argument("--table", action="append", default=[], required=True,
                      metavar="TABLE:SHARD_KEY:PK",
                      help="a table that follows the bucket, e.g. tasks:user_id:id")  # fmt: skip
    move.add_argument("--batch-size", type=int, default=500)
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
    args = build_parser().parse_args(argv)
    out = sys.stdout
    from .db.errors import DatabaseError

    try:
        if args.action == "plan":
            if args.keys and args.keys < 0:
                print("--keys must be positive", file=sys.stderr)
                return 2
            return _plan(args, out)
        return _move(args, out, checkpoint)
    except DatabaseError as exc:
        print(f"scalekit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
