"""Records executions forever in ``durability: sync`` mode, printing every acknowledged id.

Usage: ``python record_forever.py DATABASE_URL SPILL_DIR``. Each line ``ack <uuid>`` is written
(and flushed) only after ``await rt.record(...)`` has returned, so every id the parent reads
was acknowledged as durable. The parent kills this process with SIGKILL at some point and
checks that every acknowledged id is in the database.
"""

from __future__ import annotations

import sys

import anyio

from agentrt import Runtime, load_config
from agentrt.log import configure_logging

WORKERS = 4


async def record_forever(url: str, spill_dir: str) -> None:
    config = load_config(
        {
            "database": {"url": url},
            "runtime": {"durability": "sync", "auto_migrate": True, "spill_dir": spill_dir},
            "agents": {"router": {"actions": ["fast", "cheap"]}},
        }
    )
    async with Runtime(config) as rt:

        async def worker(number: int) -> None:
            step = 0
            while True:
                decision = await rt.record("router", {"worker": number, "step": step}, "cheap", 1.0)
                sys.stdout.write(f"ack {decision.id}\n")
                sys.stdout.flush()
                step += 1

        async with anyio.create_task_group() as tg:
            for number in range(WORKERS):
                tg.start_soon(worker, number)


def main() -> None:
    # Logs go to stderr: stdout carries only the acknowledgements.
    configure_logging("warning", "json")
    anyio.run(record_forever, sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    main()
