"""The ``swfp`` command line: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swfp.envs import TaskError
from swfp.runio import CheckpointError


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def cmd_expert(args) -> int:
    from swfp.algorithms.sac import SACConfig
    from swfp.envs import task_spec
    from swfp.expert import ExpertConfig, train_expert

    steps = args.env_steps or task_spec(args.task).expert_env_steps
    config = ExpertConfig(task=args.task, env_steps=steps, seed=args.seed,
                          learning_starts=min(args.learning_starts, max(steps // 10, 1)),
                          eval_every=min(args.eval_every, steps), eval_episodes=args.eval_episodes,
                          sac=SACConfig())
    info = train_expert(config, Path(args.out))
    print(f"expert {args.task}: final eval return {info['expert']['eval_return']:.1f} (step {info['expert']['step']}), "
          f"medium snapshot {info['medium']['eval_return']:.1f} (step {info['medium']['step']}) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swfp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("expert", help="train a Gaussian SAC expert (source of demonstrations)")
    p.add_argument("--task", required=True, help="Gymnasium id, e.g. Hopper-v5 or my_module:MyEnv-v0")
    p.add_argument("--env-steps", type=_positive(int), default=None,
                   help="environment steps (default: the task's built-in budget, 300k for locomotion)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--learning-starts", type=_nonnegative_int, default=5000,
                   help="uniform-random steps before learning (capped at 10%% of the budget)")
    p.add_argument("--eval-every", type=_positive(int), default=10_000)
    p.add_argument("--eval-episodes", type=_positive(int), default=5)
    p.add_argument("--out", required=True, help="expert directory to write")
    p.set_defaults(func=cmd_expert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"swfp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
