"""``scalekit shards move`` in a process of its own that SIGKILLs itself at a checkpoint.

``python mover_process.py --kill-at=STEP:BATCH shards move ...`` runs the
command's ``main`` with a checkpoint that kills the process when the move
reaches ``(STEP, BATCH)`` (see ``scalekit.db.shards.Checkpoint``); without
``--kill-at`` it is the plain command.
"""

from __future__ import annotations

import os
import signal
import sys

from scalekit import cli
from scalekit.db.shards import Step


def run(argv: list[str]) -> int:
    kill_at: tuple[Step, int] | None = None
    if argv and argv[0].startswith("--kill-at="):
        step, _, batch = argv.pop(0).removeprefix("--kill-at=").partition(":")
        kill_at = (Step(step), int(batch))

    def checkpoint(step: Step, batch: int) -> None:
        if (step, batch) == kill_at:
            print(f"killed at {step}:{batch}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return cli.main(argv, checkpoint=checkpoint)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
