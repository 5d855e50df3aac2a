"""``agentrt init``: write a commented starter configuration.

Wheels ship only the ``agentrt`` package, not the repository's ``config/`` directory, so the
starter is embedded here: ``config/agentrt.yaml`` after a header of next steps (a test keeps
the two identical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, fail, handle_errors

__all__ = ["STARTER_CONFIG", "init"]

STARTER_CONFIG = """\
# Written by `agentrt init`. Next:
#   agentrt config validate   check this file (every problem on its own line)
#   agentrt db upgrade        create the database schema (SQLite files also migrate on first use)
#   agentrt status            what each agent serves and how its reward moves

# agentrt: the embedded default. Experience goes to an SQLite file next to where you run.
# Every key is optional; see config/full.yaml for all of them, each with a comment.
database:
  url: ${AGENTRT_DATABASE_URL:-sqlite+aiosqlite:///agentrt.db}

runtime:
  durability: buffered        # record() returns after enqueue; see README for what a crash can lose
  pipeline: embedded          # the application's runtime runs the learning loop
  training: auto              # cycles compute in a training process, off the serving one
  device: auto                # cuda when torch sees one, else cpu
  seed: 7

agents:
  router:
    actions: [search, sql, ask_human]
    baseline: uniform
    model: router_model
    reward:
      combine: last
      wait_window: 10m
      default: 0.0

model_configuration:
  learning_models:
    router_model:
      type: contextual_bandit
      architecture: mlp
      parameters:
        learning_rate: 0.001
        batch_size: 64
        epochs: 10
        hidden_size: 64
        num_layers: 2
        dropout: 0.1
      optimization:
        method: adam
        parameters:
          beta1: 0.9
          beta2: 0.999

experience_configuration:
  collection:
    frequency: real_time
    batch_size: 1000
    storage_format: database
  retention:
    policy: time_based
    duration: 30d

optimization_parameters:
  strategy_optimization:
    exploration:
      method: epsilon_greedy
      epsilon: 0.1
      decay: 0.995
"""


@handle_errors
def init(
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to write it (default: --config).", show_default=False),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Write a commented starter configuration: an SQLite file and one example agent.

    Refuses to replace an existing file unless --force is given.

    Example: agentrt init config/agentrt.yaml
    """
    target = path or config
    if target.is_dir():
        raise fail(f"{target} is a directory; name the file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w" if force else "x", encoding="utf-8") as file:
            file.write(STARTER_CONFIG)
    except FileExistsError:
        raise fail(f"{target} already exists; pass --force to replace it") from None
    except OSError as exc:
        raise fail(f"cannot write {target}: {exc.strerror or exc}") from None
    console.print(
        f"wrote {target}; check it with `agentrt config validate {target}`",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
