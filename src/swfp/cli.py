"""swfp: behaviour-clone flow-matching policies and fine-tune them online (Stepwise Flow Policy).

One subcommand per job, each a thin layer over the Python API; `swfp COMMAND --help` for its options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from swfp.data import DatasetError
from swfp.envs import TaskError
from swfp.flow import InversionError
from swfp.runio import CheckpointError
from swfp.runner import RunStopped

if TYPE_CHECKING:  # torch is imported by the commands that use it: `swfp --help` stays fast
    import torch


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


def device_argument(p: argparse.ArgumentParser) -> None:
    """``--device``: where a command's networks and tensors live (environments and replay stay on the host)."""
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N (default auto)")


def threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads. One by default: a small MLP's update gains little from more, and
    torch's default (one per core) oversubscribes a machine running other jobs (measured 20x slower)."""
    p.add_argument("--threads", type=_positive(int), default=1,
                   help="torch CPU threads (default 1: fastest per core for these networks, and shares a busy machine)")


def device_and_threads_arguments(p: argparse.ArgumentParser) -> None:
    device_argument(p)
    threads_argument(p)


def torch_setup(args) -> torch.device:
    """Resolve ``--device`` (an unknown or absent one is a ValueError naming the fix: exit code 2) and apply
    ``--threads``; the run directory's ``meta.json`` records both."""
    import torch

    from swfp.devices import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    return device


@dataclass(frozen=True)
class Command:
    """A subcommand: ``name`` (``"eval"``, or ``"bench grid"`` for ``grid`` in the group ``bench``), its line in
    ``--help``, the function adding its options to its parser, and the handler returning the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = []  # in definition order, the order `swfp --help` lists them
GROUPS = {"bench": "measure figures on this machine (Markdown tables and CSV)"}  # commands holding subcommands


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated handler as ``swfp NAME``, with the options ``add_arguments`` gives its parser.

    Each command is its options, this decorator and its handler side by side, so adding one touches one place.
    """
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS.append(Command(name, help, add_arguments, run))
        return run
    return register


def expert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="Gymnasium id, e.g. Hopper-v5 (not with --resume)")
    p.add_argument("--env-steps", type=_positive(int), default=None,
                   help="environment steps (default: the task's built-in budget, see README \"Reproduce\"); with "
                        "--resume, a larger budget extends the run, finished or not")
    p.add_argument("--seed", type=_nonnegative_int, default=None, help="(default 0)")
    p.add_argument("--eval-every", type=_positive(int), default=None,
                   help="env steps between evaluations, each also a snapshot of the actor (default 20000)")
    p.add_argument("--eval-episodes", type=_positive(int), default=None, help="episodes per evaluation (default 10)")
    p.add_argument("--checkpoint-every", type=_positive(int), default=None, help="env steps (default: 1/10 of the run)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a field of the expert's config, e.g. --set learning_starts=1000 or --set choice.shortlist=8 "
                        "(the sac baseline's fields, `swfp algos --config sac`, and choice.*); repeatable")
    device_and_threads_arguments(p)
    p.add_argument("--out", required=True, help="run directory to write (or to continue with --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped or killed run from its checkpoint, with the settings it started with "
                        "(on this command's --device and --threads), to its budget or to a larger --env-steps")


@command("expert", "train a Gaussian SAC expert, resumable; ship its best snapshot and a medium one", expert_arguments)
def cmd_expert(args) -> int:
    from swfp.algorithms import build_config
    from swfp.envs import task_spec
    from swfp.expert import ExpertConfig, expert_run_config, extend_budget, train_expert
    from swfp.runio import read_json
    from swfp.runner import CHECKPOINT, RunConfig

    device = torch_setup(args)
    out = Path(args.out)
    settings = {"task": args.task, "env_steps": args.env_steps, "seed": args.seed, "eval_every": args.eval_every,
                "eval_episodes": args.eval_episodes, "checkpoint_every": args.checkpoint_every}
    given = {key: value for key, value in settings.items() if value is not None}
    if args.resume:
        env_steps = given.pop("env_steps", None)
        if given or args.set:
            flags = [f"--{key.replace('_', '-')}" for key in given] + ["--set"] * bool(args.set)
            raise ValueError(f"--resume continues {out} with the settings it started with (only --env-steps may "
                             f"extend its budget); drop {' '.join(flags)}")
        saved = read_json(out / "config.json") if env_steps is None else extend_budget(out, env_steps)
        config, run_config = build_config(ExpertConfig, saved=saved["config"]), RunConfig(**saved["run"])
    else:
        if args.task is None:
            raise ValueError("--task is required to start an expert run (only --resume reads it from the run)")
        if (out / CHECKPOINT).exists():
            raise ValueError(f"{out} already holds an expert run; pass --resume to continue it or choose another --out")
        given["env_steps"] = given.get("env_steps") or task_spec(args.task).expert_env_steps
        config = build_config(ExpertConfig, parse_set(args.set))
        run_config = expert_run_config(**given)
    choice = train_expert(config, run_config, out, resume=args.resume, device=device)
    expert, medium = choice["expert"], choice["medium"]
    print(f"expert {choice['task']}: snapshot at step {expert['step']}, stochastic return "
          f"{expert['evaluation']['return_mean']:.1f} ± {expert['evaluation']['return_std']:.1f}; medium at step "
          f"{medium['step']}, {medium['evaluation']['return_mean']:.1f} ± {medium['evaluation']['return_std']:.1f} "
          f"({medium['fraction_of_expert']:.2f} of the expert's), over {expert['evaluation']['episodes']} fresh "
          f"episodes each -> {out}")
    return 0


def demos_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--quality", choices=["expert", "medium", "medium-replay", "play", "task"], default=None,
                   help="medium-replay: the expert run's replay up to its medium snapshot, as D4RL's; play and "
                        "task: OGBench's oracle on a cube task, task-agnostic or solving the task (default: "
                        "medium, or task on a cube task)")
    p.add_argument("--episodes", type=_positive(int), default=None, help="episodes to roll out (default 100)")
    p.add_argument("--episode-steps", type=_positive(int), default=None,
                   help="length of a play episode on a cube task (default OGBench's 1001)")
    p.add_argument("--seed", type=_nonnegative_int, default=None, help="episode i is reset with seed + i (default 0)")
    p.add_argument("--expert", default=None,
                   help="expert directory (default: the one shipped for the task; medium-replay needs the run "
                        "directory `swfp expert` wrote, which keeps the replay)")
    p.add_argument("--out", required=True, help="dataset file to write (.npz)")


@command("demos", "make a dataset (.npz): an expert's rollouts or replay (D4RL-style), or OGBench's oracle on a "
         "cube task", demos_arguments)
def cmd_demos(args) -> int:
    # The same data on every x86 CPU: MKL otherwise picks its matrix kernels by instruction set, their rounding
    # differs, and a falling walker turns one ulp into other episodes (Walker2d medium, seed 0: return 298.8 on
    # an AVX-512 machine, 321.0 with MKL held to AVX2). MKL reads this at its first product, none has run yet.
    os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
    from swfp.demos import generate_demos, medium_replay
    from swfp.assets import shipped_expert_dir
    from swfp.envs import task_spec

    from swfp.manipulation import KINDS, is_oracle_task, oracle_demonstrations

    task_spec(args.task)  # a misspelt id is reported as an unknown task, not as a missing expert for it
    args.quality = args.quality or ("task" if is_oracle_task(args.task) else "medium")
    if (args.quality in KINDS) != is_oracle_task(args.task):
        raise ValueError(f"--quality {args.quality} does not apply to {args.task}: cube tasks take play or task "
                         "(OGBench's oracle), other tasks expert, medium or medium-replay (an expert's policy)")
    if args.episode_steps is not None and args.quality != "play":
        raise ValueError("--episode-steps sets the length of play episodes on a cube task; drop it")
    if args.quality in KINDS:
        dataset = oracle_demonstrations(args.task, args.quality, args.episodes or 100, args.seed or 0,
                                        args.episode_steps)
    elif args.quality == "medium-replay":
        if args.episodes is not None or args.seed is not None:
            raise ValueError("medium-replay is the expert run's recorded replay up to its medium snapshot; "
                             "--episodes and --seed do not apply to it")
        if args.expert is None:
            raise ValueError("medium-replay is read from the expert's training run: pass --expert RUN_DIR, the "
                             "directory `swfp expert` wrote (the shipped experts do not include their replay)")
        dataset = medium_replay(args.task, Path(args.expert))
    else:
        expert_dir = Path(args.expert) if args.expert else shipped_expert_dir(args.task)
        if not (expert_dir / "expert.json").is_file():
            raise FileNotFoundError(f"no expert at {expert_dir}: train one with `swfp expert --task {args.task} "
                                    f"--out DIR` and pass --expert DIR")
        dataset = generate_demos(args.task, expert_dir, args.quality, args.episodes or 100, args.seed or 0)
    path = dataset.save(Path(args.out))
    returns = dataset.episode_returns()
    success = (f", oracle success {dataset.metadata['success_rate']:.0%} of {dataset.metadata['episodes']} "
               "episodes" if "success_rate" in dataset.metadata else "")
    print(f"{args.quality} demonstrations for {args.task}: {len(dataset)} transitions, {len(returns)} episodes, "
          f"return {returns.mean():.1f} ± {returns.std():.1f}{success} -> {path}")
    return 0


@command("tasks", "list the built-in tasks and their defaults", lambda p: None)
def cmd_tasks(args) -> int:
    """The tasks with tuned defaults; any other Gymnasium id with a Box action space works with generic ones."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from swfp.envs import BUILTIN_TASKS

    table = Table(title="swfp --task ID (any other Gymnasium id gets generic defaults)")
    for column in ("id", "Gymnasium id", "episode steps", "action chunk", "eval episodes", "needs the extra"):
        table.add_column(column, no_wrap=True)
    for spec in BUILTIN_TASKS.values():
        needs = escape(f"[{spec.extra}]") if spec.extra else ""
        table.add_row(spec.task_id, spec.gym_id or spec.task_id, str(spec.max_episode_steps), str(spec.action_chunk),
                      str(spec.eval_episodes), needs)
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    return 0


def pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help=".npz, D4RL .hdf5, Minari directory or robomimic .hdf5")
    p.add_argument("--task", default=None, help="Gymnasium id (default: the task recorded in the dataset)")
    p.add_argument("--steps", type=_positive(int), default=100_000)
    p.add_argument("--batch-size", type=_positive(int), default=256)
    p.add_argument("--lr", type=_positive(float), default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--euler-steps", type=_positive(int), default=10, help="K, Euler steps of the sampler")
    p.add_argument("--hidden-dims", type=_positive(int), nargs="+", default=None,
                   help="velocity network widths (default: the task's, 256 256 256 for Hopper)")
    p.add_argument("--action-chunk", type=_positive(int), default=None, help="H, actions per chunk (task default)")
    p.add_argument("--eval-every", type=_nonnegative_int, default=0, help="gradient steps between evaluations")
    p.add_argument("--eval-episodes", type=_positive(int), default=None)
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    device_and_threads_arguments(p)
    p.add_argument("--out", required=True, help="run directory to write")


@command("pretrain", "behaviour-clone a flow policy by flow matching", pretrain_arguments)
def cmd_pretrain(args) -> int:
    from swfp.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(dataset=args.dataset, task=args.task, steps=args.steps, batch_size=args.batch_size,
                            action_chunk=args.action_chunk, euler_steps=args.euler_steps,
                            hidden_dims=tuple(args.hidden_dims) if args.hidden_dims else None,
                            eval_every=args.eval_every, eval_episodes=args.eval_episodes, seed=args.seed,
                            **({} if args.lr is None else {"lr": args.lr}))
    summary = pretrain(config, Path(args.out), torch_setup(args))
    print_comparison(summary)
    return 0


def print_comparison(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ev = summary["bc_eval"]
    table = Table(title=f"flow BC on {summary['task']} ({summary['steps']} steps, {summary['train_seconds']:.0f} s)")
    for col in ("policy", "return mean", "± std", "IQM", "episodes"):
        table.add_column(col, justify="right")
    table.add_row("dataset", f"{summary['dataset_return_mean']:.1f}", "", "", "")
    table.add_row("flow BC", f"{ev['return_mean']:.1f}", f"{ev['return_std']:.1f}", f"{ev['return_iqm']:.1f}",
                  str(ev["episodes"]))
    Console().print(table)


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory of any method (or its policy.* / actor.* file)")
    p.add_argument("--episodes", type=_positive(int), default=None, help="episodes (default 10)")
    p.add_argument("--seed", type=_nonnegative_int, default=None,
                   help="episode i is reset with seed + i, and the policy's noise is seeded with seed (default 0)")
    p.add_argument("--recorded", action="store_true",
                   help="the episodes and seed of the run's last evaluation (its eval.csv), so the numbers "
                        "reproduce it; not with --episodes or --seed")
    p.add_argument("--deterministic", action="store_true",
                   help="the method's deterministic action (a flow's chain from the noise mean x0 = 0)")
    p.add_argument("--task", default=None,
                   help="evaluate on this task instead of the one the policy was trained on; it must have the same "
                        "observation and action spaces (e.g. a task-agnostic cube policy on each cube-single-taskN)")
    p.add_argument("--video", default=None, help="directory for an MP4 of the first episode")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    device_and_threads_arguments(p)


@command("eval", "evaluate any run's policy (or reproduce its last evaluation with --recorded)", eval_arguments)
def cmd_eval(args) -> int:
    from swfp.evaluate import evaluate_seeded, recorded_evaluation
    from swfp.loader import load

    policy = load(args.run, torch_setup(args))
    task = policy.task_id if args.task is None else args.task
    if task != policy.task_id:
        check_same_spaces(policy, task)
    if args.recorded:
        if args.episodes is not None or args.seed is not None:
            raise ValueError("--recorded takes the episodes and seed the run recorded; drop --episodes and --seed")
        run_dir = Path(args.run).parent if Path(args.run).is_file() else Path(args.run)
        recorded = recorded_evaluation(run_dir)
        episodes, seed = int(recorded["eval_episodes"]), int(recorded["eval_seed"])
    else:
        episodes = 10 if args.episodes is None else args.episodes
        seed = 0 if args.seed is None else args.seed
    result = evaluate_seeded(policy, task, episodes, seed, args.deterministic,
                             video_dir=Path(args.video) if args.video else None)
    summary = {"run": str(args.run), "task": task, "algorithm": policy.algorithm, "seed": seed,
               "deterministic": args.deterministic, **result.summary()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    mode = "deterministic" if args.deterministic else "stochastic"
    table = Table(title=f"{args.run} on {task} ({mode}, episode seeds {seed}–{seed + episodes - 1})")
    for key in ("return_mean", "return_std", "return_iqm", "episodes", "episode_length_mean"):
        value = summary[key]
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    if summary["success_rate"] is not None:
        low, high = summary["success_interval"]
        table.add_row("success_rate [95 % CI]", f"{summary['success_rate']:.0%} [{low:.0%}, {high:.0%}]")
    Console().print(table)
    if args.video:
        print(f"video -> {Path(args.video) / 'episode_0.mp4'}")
    return 0


def check_same_spaces(policy, task: str) -> None:
    """A policy trained on one task acts on another only where the observation size, action size and action
    bounds agree (OGBench's cube-single tasks differ only in their goal, which the observation omits)."""
    import numpy as np

    from swfp.envs import make_env

    env = make_env(task)
    try:
        obs_dim, low, high = env.observation_space.shape[0], env.action_space.low, env.action_space.high
    finally:
        env.close()
    mine = (policy.obs_mean.numel(), policy.act_dim)
    if (obs_dim, low.shape[0]) != mine or not (np.allclose(low, policy.action_low)
                                               and np.allclose(high, policy.action_high)):
        raise ValueError(f"--task {task}: its observations and actions ({obs_dim}, {low.shape[0]}, bounds "
                         f"[{low.min():g}, {high.max():g}]) differ from those the policy was trained on for "
                         f"{policy.task_id} ({mine[0]}, {mine[1]}); evaluate it on a task with the same spaces")


# SWFP's shortcut flags: (argparse dest, config field); any other field is set with --set KEY=VALUE
SWFP_FLAGS = (("tau", "tau"), ("q_scale", "q_scale"), ("alpha", "alpha"), ("objective", "objective"),
              ("critic_entropy", "critic_entropy"), ("blocks_per_run", "blocks_per_run"),
              ("max_blocks", "max_blocks"), ("block_grad_steps", "block_grad_steps"), ("tau_radius", "tau_radius"),
              ("target_entropy", "target_entropy"))


SHARED_FLAGS = (("utd_ratio", "utd_ratio"), ("critic_warmup_steps", "critic_warmup_steps"))


def parse_set(items: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` items as config overrides (read by :func:`swfp.algorithms.build_config`)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def finetune_overrides(args, algo: str) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs plus the shortcut flags the user gave, as config overrides for ``algo``."""
    overrides = parse_set(args.set)
    for dest, key in SWFP_FLAGS + SHARED_FLAGS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        if algo != "swfp" and (dest, key) in SWFP_FLAGS:
            raise ValueError(f"--{dest.replace('_', '-')} is an SWFP option; set {algo}'s hyper-parameters "
                             f"with --set KEY=VALUE (`swfp algos --config {algo}` lists them)")
        overrides[key] = json.dumps(value)
    return overrides


def finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="pre-trained run directory (from swfp pretrain)")
    p.add_argument("--algo", default=None, help="method (default swfp; `swfp algos` lists them)")
    p.add_argument("--env-steps", type=_positive(int), default=300_000)
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--out", required=True, help="run directory to write (or to continue with --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its last checkpoint (on this command's --device, whichever "
                        "device started it)")
    p.add_argument("--dataset", default=None, help="demonstrations (default: the pre-training dataset)")
    device_and_threads_arguments(p)
    p.add_argument("--num-envs", type=_positive(int), default=1)
    p.add_argument("--eval-every", type=_positive(int), default=None, help="env steps (default: 1/20 of the run)")
    p.add_argument("--eval-episodes", type=_positive(int), default=None)
    p.add_argument("--checkpoint-every", type=_positive(int), default=None, help="env steps (default: 1/10 of the run)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any hyper-parameter of the method's config, e.g. --set critic.layer_norm=true "
                        "(`swfp algos --config NAME` lists them); repeatable")
    p.add_argument("--utd-ratio", type=_positive(int), default=None, help="updates per env step (off-policy methods)")
    p.add_argument("--critic-warmup-steps", type=_nonnegative_int, default=None)
    swfp_flags = p.add_argument_group("SWFP shortcuts (defaults in `swfp algos --config swfp`)")
    swfp_flags.add_argument("--tau", type=_positive(float), default=None,
                            help="JKO step size; with --q-scale gradient, the mean per-block action move")
    swfp_flags.add_argument("--q-scale", choices=["gradient", "value", "none"], default=None,
                            help="unit of Q in the block objective: mean |grad_a Q|, mean |Q|, or raw Q")
    swfp_flags.add_argument("--alpha", type=float, default=None, help="entropic temperature")
    swfp_flags.add_argument("--objective", choices=["jko", "langevin_fm"], default=None)
    swfp_flags.add_argument("--critic-entropy", choices=["none", "exact"], default=None)
    swfp_flags.add_argument("--blocks-per-run", type=_positive(int), default=None)
    swfp_flags.add_argument("--max-blocks", type=_positive(int), default=None, help="N_max, then compaction")
    swfp_flags.add_argument("--block-grad-steps", type=_positive(int), default=None, help="J")
    swfp_flags.add_argument("--tau-radius", type=_positive(float), default=None,
                            help="adapt tau toward this W2 per block")
    swfp_flags.add_argument("--target-entropy", type=float, default=None, help="tune alpha toward this entropy")


@command("finetune", "fine-tune a pre-trained flow policy online (SWFP or a baseline)", finetune_arguments)
def cmd_finetune(args) -> int:
    from swfp.algorithms import get_algorithm, make_config
    from swfp.runio import read_json

    out = Path(args.out)
    device = torch_setup(args)
    if args.resume:
        saved = read_json(out / "config.json")
        algo, run = saved["algorithm"], saved["run"]
        if args.algo is not None and args.algo != algo:
            raise ValueError(f"{out} is a {algo} run; resume it with --algo {algo} (or without --algo)")
        learner = get_algorithm(algo).from_pretrained(args.run, config=make_config(algo, saved=saved["config"]),
                                                      dataset=args.dataset, total_env_steps=run["total_env_steps"],
                                                      device=device)
        summary = learner.learn(out=out, seed=run["seed"], num_envs=run["num_envs"], eval_every=run["eval_every"],
                                eval_episodes=run["eval_episodes"], checkpoint_every=run["checkpoint_every"],
                                resume=True)
    else:
        if out.exists() and (out / "checkpoint.pt").exists():
            raise ValueError(f"{out} already holds a fine-tuning run; pass --resume to continue it or choose "
                             "another --out")
        args.algo = args.algo or "swfp"
        config = make_config(args.algo, finetune_overrides(args, args.algo))
        learner = get_algorithm(args.algo).from_pretrained(args.run, config=config, dataset=args.dataset,
                                                           total_env_steps=args.env_steps, device=device)
        summary = learner.learn(out=out, seed=args.seed, num_envs=args.num_envs, eval_every=args.eval_every,
                                eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every)
    print_finetune_summary(summary, out)
    return 0


def algos_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="NAME", help="print this method's default config as JSON")


@command("algos", "list the fine-tuning methods (or one method's hyper-parameters)", algos_arguments)
def cmd_algos(args) -> int:
    """The methods ``swfp finetune --algo`` takes; with ``--config NAME``, that method's defaults."""
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from swfp.algorithms import ALGORITHMS, get_algorithm
    if args.config:
        config_class = get_algorithm(args.config).config_class
        print(json.dumps(dataclasses.asdict(config_class()) if config_class else {}, indent=2))
        return 0
    table = Table(title="swfp finetune --algo NAME")
    table.add_column("name")
    table.add_column("method")
    for name, cls in ALGORITHMS.items():
        table.add_row(name, cls.description)
    Console().print(table)
    return 0


def print_finetune_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['algorithm']} on {summary['task']}, {summary['env_steps']} env steps")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("return before fine-tuning", summary["return_before"]), ("return after", summary["return_after"]),
            ("deterministic return after", summary["det_return_after"]),
            ("largest dip below start", summary["largest_dip_below_start"])]
    rows += [(k.replace("_", " "), v) for k, v in summary["status"].items()]
    rows += [(f"seconds/env step: {k}", v) for k, v in summary["seconds_per_env_step"].items()]
    for name, value in rows:
        table.add_row(name, f"{value:.4g}")
    Console().print(table)
    print(f"run directory: {out} (policy, checkpoint.pt, eval.csv, learning_curve.png)")


def quickstart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive(int), default=20_000, help="BC pre-training steps")
    p.add_argument("--env-steps", type=_positive(int), default=15_000, help="SWFP fine-tuning env steps")
    p.add_argument("--episodes", type=_positive(int), default=50, help="medium demonstration episodes")
    p.add_argument("--eval-episodes", type=_positive(int), default=20, help="final evaluation episodes per policy")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="an SWFP hyper-parameter (swfp algos --config swfp)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    device_and_threads_arguments(p)
    p.add_argument("--out", default="runs/quickstart")


@command("quickstart", "the main job: Hopper demos -> flow BC -> SWFP, before/after with intervals",
         quickstart_arguments)
def cmd_quickstart(args) -> int:
    """The README's main job: Hopper medium demonstrations from the shipped expert, flow BC, SWFP fine-tuning,
    then the BC and SWFP policies evaluated side by side with 95 % intervals and the trust-region summary."""
    from swfp.algorithms import make_config
    from swfp.algorithms.swfp import SWFP
    from swfp.assets import shipped_expert_dir
    from swfp.demos import generate_demos
    from swfp.evaluate import evaluate_seeded, mean_half_width
    from swfp.policy import Policy
    from swfp.pretrain import PretrainConfig, pretrain

    task, out = "Hopper-v5", Path(args.out)
    device = torch_setup(args)
    data = out / "hopper-v5-medium.npz"
    if not data.is_file():
        generate_demos(task, shipped_expert_dir(task), "medium", args.episodes, seed=0).save(data)
    print_comparison(pretrain(PretrainConfig(dataset=str(data), steps=args.steps, seed=args.seed,
                                             eval_episodes=args.eval_episodes), out / "bc", device))
    agent = SWFP.from_pretrained(out / "bc", config=make_config("swfp", finetune_overrides(args, "swfp")),
                                 total_env_steps=args.env_steps, device=device)
    summary = agent.learn(out=out / "swfp", seed=args.seed, eval_every=max(args.env_steps // 5, 1),
                          eval_episodes=args.eval_episodes)
    results = {}
    for label, policy in (("flow BC", Policy.load(out / "bc", device)), ("SWFP", agent.policy())):
        for deterministic in (False, True):
            returns = evaluate_seeded(policy, task, args.eval_episodes, args.seed + 2_000_000, deterministic).returns
            results[label, deterministic] = (float(returns.mean()), mean_half_width(returns))
    print_quickstart(results, summary, args.eval_episodes)
    print(f"run directory: {out} (bc/ and swfp/: policies, configs, metrics, learning_curve.png)")
    return 0


def print_quickstart(results: dict, summary: dict, episodes: int) -> None:
    """Before/after with 95 % intervals, the trust-region figures, and a plain verdict."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Hopper-v5: flow BC vs SWFP after {summary['env_steps']} env steps "
                        f"({episodes} fresh evaluation episodes each, mean ± 95 % CI)")
    for column in ("policy", "stochastic return", "deterministic return"):
        table.add_column(column, justify="right")
    for label in ("flow BC", "SWFP"):
        table.add_row(label, *(f"{results[label, d][0]:.1f} ± {results[label, d][1]:.1f}" for d in (False, True)))
    console = Console()
    console.print(table)
    status = summary["status"]
    console.print(f"trust region: {int(status['blocks_accepted'])} blocks accepted, {int(status['blocks_rejected'])} "
                  f"rejected, {int(status['blocks_compactions'])} compactions; last block: ΔF "
                  f"{status.get('delta_free_energy', float('nan')):.4g}, W₂ ≤ {status.get('w2_upper', float('nan')):.4g}"
                  f" within the bound sqrt(2τ·(−ΔF)) = {status.get('trust_bound', float('nan')):.4g}")
    verdicts = []
    for d, name in ((False, "stochastic"), (True, "deterministic")):
        (before, b_half), (after, a_half) = results["flow BC", d], results["SWFP", d]
        if after - a_half > before + b_half:
            verdicts.append(f"{name}: SWFP is better than BC ({after - before:+.1f}), beyond the 95 % intervals")
        elif after + a_half < before - b_half:
            verdicts.append(f"{name}: SWFP is worse than BC ({after - before:+.1f}), beyond the 95 % intervals")
        else:
            verdicts.append(f"{name}: the difference ({after - before:+.1f}) is within the 95 % intervals: this "
                            "budget is too short to show a gain; run `swfp finetune` with --env-steps 300000")
    console.print("\n".join(verdicts))


def bench_envs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="Hopper-v5")
    p.add_argument("--num-envs", type=_positive(int), nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=_positive(int), default=2000, help="vector steps timed per setting")
    p.add_argument("--out", default="benchmarks/results/envs")


@command("bench envs", "synchronous vs asynchronous vector-env stepping", bench_envs_arguments)
def cmd_bench_envs(args) -> int:
    from swfp.bench import bench_envs

    bench_envs(args.task, args.num_envs, args.steps, Path(args.out))
    print((Path(args.out) / "envs.md").read_text())
    return 0


def bench_bc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", nargs="+", default=["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5"])
    p.add_argument("--seeds", type=_nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=_positive(int), default=20_000, help="pre-training steps per run")
    p.add_argument("--episodes", type=_positive(int), default=50, help="medium episodes per dataset")
    device_and_threads_arguments(p)
    p.add_argument("--out", default="benchmarks/results/bc")


@command("bench bc", "BC return vs dataset return on medium demonstrations, several seeds", bench_bc_arguments)
def cmd_bench_bc(args) -> int:
    from swfp.bench import bench_bc

    bench_bc(args.tasks, args.seeds, args.steps, args.episodes, Path(args.out), torch_setup(args))
    print((Path(args.out) / "bc.md").read_text())
    return 0


def bench_grid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["small", "full"], default=None,
                   help="small: Hopper+Walker2d, swfp bptt reinflow dsrl rlpd bc, 3 seeds, 200k steps; "
                        "full: 5 tasks, every method, 5 seeds, 1M steps (explicit flags override)")
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--algos", nargs="+", default=None)
    p.add_argument("--seeds", type=_nonnegative_int, nargs="+", default=None)
    p.add_argument("--env-steps", type=_positive(int), default=None)
    p.add_argument("--pretrain-steps", type=_positive(int), default=20_000, help="BC steps per (task, seed)")
    p.add_argument("--dataset", action="append", metavar="TASK=PATH",
                   help="demonstrations for a task (default: medium data made from the shipped expert)")
    p.add_argument("--eval-episodes", type=_positive(int), default=None)
    p.add_argument("--eval-every", type=_positive(int), default=None,
                   help="env steps between a trial's evaluations (default: 1/20 of its run)")
    p.add_argument("--num-envs", type=_positive(int), default=1)
    p.add_argument("--device", default="auto",
                   help="every pre-training's and trial's --device (default auto; each job has one torch thread)")
    p.add_argument("--set", action="append", metavar="ALGO:KEY=VALUE",
                   help="a hyper-parameter of one method's trials, e.g. swfp:tau=0.05; repeatable")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address", default=None, help="a Ray cluster's address (default: a local Ray instance)")
    p.add_argument("--workers", type=_positive(int), default=None, help="trials at once (default: the cores)")
    p.add_argument("--stop-after", type=_positive(float), default=None, metavar="MINUTES",
                   help="stop running trials after this long, checkpointed (the same command resumes them)")
    p.add_argument("--out", default="benchmarks/results/grid")


@command("bench grid", "every (task, method, seed) as a resumable fine-tuning trial, local or Ray",
         bench_grid_arguments)
def cmd_bench_grid(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from swfp.grid import PRESETS, GridConfig, run_grid

    chosen = dict(PRESETS[args.preset]) if args.preset else {}
    for key in ("tasks", "algos", "seeds", "env_steps"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    missing = [k for k in ("tasks", "algos", "seeds", "env_steps") if k not in chosen]
    if missing:
        raise ValueError(f"give --preset small|full or all of --tasks --algos --seeds --env-steps (missing: "
                         f"{', '.join('--' + m.replace('_', '-') for m in missing)})")
    datasets = {}
    for item in args.dataset or []:
        task, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--dataset takes TASK=PATH, got {item!r}")
        datasets[task] = path
    settings: dict[str, dict[str, str]] = {}
    for item in args.set or []:
        algo, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (sep and eq and key):
            raise ValueError(f"--set takes ALGO:KEY=VALUE, got {item!r}")
        settings.setdefault(algo, {})[key] = value
    config = GridConfig(**chosen, pretrain_steps=args.pretrain_steps, eval_episodes=args.eval_episodes,
                        eval_every=args.eval_every, num_envs=args.num_envs, datasets=datasets, settings=settings,
                        device=args.device)
    rows = run_grid(config, Path(args.out), args.executor, args.workers, args.ray_address,
                    None if args.stop_after is None else 60 * args.stop_after)
    table = Table(title=f"grid {args.out}: {sum(r['state'] == 'done' for r in rows)} of {len(rows)} trials done")
    for column in ("trial", "state", "run_dir"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["trial"], row["state"], row["run_dir"])
    Console().print(table)
    return 0 if all(r["state"] == "done" for r in rows) else 1


def bench_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="the grid's directory (holding runs/<task>/<algo>/seed<s>/)")
    p.add_argument("--beside", action="append", metavar="GRID",
                   help="another grid whose methods RESULTS lacks are reported beside it (marked *); repeatable")
    p.add_argument("--rescore", type=_positive(int), default=None, metavar="N",
                   help="also evaluate every finished trial's final policy on the same N episodes (e.g. 100), "
                        "beside the numbers written during training; kept in each trial's rescore.json")
    p.add_argument("--rescore-seed", type=_nonnegative_int, default=None, metavar="S",
                   help="episode i of the re-scoring is seeded S + i, the policy's noise S (default 10000000)")


@command("bench report", "aggregate a grid: IQM with bootstrap intervals, P(improvement), dips, plots",
         bench_report_arguments)
def cmd_bench_report(args) -> int:
    from swfp.report import write_report
    from swfp.rescore import RESCORE_SEED

    if args.rescore_seed is not None and args.rescore is None:
        raise ValueError("--rescore-seed sets the episodes of --rescore N; give --rescore too")
    write_report(Path(args.results), [Path(b) for b in args.beside or []], args.rescore,
                 RESCORE_SEED if args.rescore_seed is None else args.rescore_seed)
    print((Path(args.results) / "report.md").read_text())
    return 0


def bench_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="`swfp finetune` run directories (finished or not)")
    p.add_argument("--labels", nargs="+", help="one per run (default: the directories' names)")
    p.add_argument("--last", type=_positive(int), default=3, help="evaluations averaged in the summary row")
    p.add_argument("--out", required=True)


@command("bench compare", "single runs side by side at shared env steps, with their config differences",
         bench_compare_arguments)
def cmd_bench_compare(args) -> int:
    from swfp.report import compare_runs

    labels = args.labels or [Path(run).name for run in args.runs]
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels needs one distinct label per run ({len(args.runs)} runs), got {labels}; "
                         "without --labels the run directories' names are used, so give labels when those repeat")
    compare_runs(dict(zip(labels, map(Path, args.runs))), Path(args.out), args.last)
    print((Path(args.out) / "compare.md").read_text())
    return 0


def _timing_arguments(p: argparse.ArgumentParser, repeats: int, out: str) -> None:
    """``--repeats``, ``--threads``, ``--device`` and ``--out`` of the timing benchmarks (compute, loop)."""
    p.add_argument("--repeats", type=_positive(int), default=repeats, help="timed calls per figure (median)")
    p.add_argument("--threads", type=_positive(int), default=1, help="torch threads (grid trials use 1)")
    device_argument(p)
    p.add_argument("--out", default=out)


def bench_compute_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="Hopper-v5", help="network sizes of this task")
    p.add_argument("--euler-steps", type=_positive(int), nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--block-counts", type=_nonnegative_int, nargs="+", default=[0, 1, 2, 4, 8, 16, 32])
    _timing_arguments(p, repeats=20, out="benchmarks/results/compute")


@command("bench compute", "update time/memory against K (SWFP block vs bptt); inference vs blocks",
         bench_compute_arguments)
def cmd_bench_compute(args) -> int:
    from swfp.compute import ComputeConfig, bench_compute
    from swfp.devices import resolve_device

    config = ComputeConfig(task=args.task, euler_steps=args.euler_steps, block_counts=args.block_counts,
                           repeats=args.repeats, threads=args.threads)
    bench_compute(config, Path(args.out), resolve_device(args.device))
    print((Path(args.out) / "compute.md").read_text())
    return 0


def bench_loop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="pre-trained run directory (from swfp pretrain)")
    p.add_argument("--algo", default="swfp", help="an off-policy method (swfp, bptt, dsrl, fql, dipo, sac, rlpd)")
    p.add_argument("--env-steps", type=_positive(int), default=20_000, help="env steps run and timed")
    p.add_argument("--budget", type=_positive(int), default=200_000,
                   help="the run's schedules (evaluations, checkpoints, SWFP blocks) are those of this budget")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyper-parameter of the method; repeatable")
    _timing_arguments(p, repeats=50, out="benchmarks/results/loop")


@command("bench loop", "wall time per env step of a fine-tuning run by phase, against the floor", bench_loop_arguments)
def cmd_bench_loop(args) -> int:
    from swfp.compute import LoopConfig, bench_loop
    from swfp.devices import resolve_device

    device = resolve_device(args.device)
    config = LoopConfig(pretrained=args.run, algo=args.algo, env_steps=args.env_steps, budget=args.budget, seed=args.seed,
                        repeats=args.repeats, threads=args.threads, settings=finetune_overrides(args, args.algo))
    bench_loop(config, Path(args.out), device)
    print((Path(args.out) / "loop.md").read_text())
    return 0


def bench_readme_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--log", default="docs/experiment-log.md", help="the experiment log's page (default %(default)s)")
    p.add_argument("--log-links", default="results",
                   help="how the log's page reaches --results (default %(default)s: docs/results links to "
                        "../benchmarks/results, so the site serves the tables and plots)")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--headline", default="swfp-v2",
                   help="the grid under --results whose report is the README's headline table (default %(default)s)")


@command("bench readme", "regenerate the experiment log (docs) and README.md's headline table from benchmarks/results",
         bench_readme_arguments)
def cmd_bench_readme(args) -> int:
    from swfp.readme import update_headline, update_log

    update_log(Path(args.log), Path(args.results), args.log_links)
    update_headline(Path(args.readme), Path(args.results), args.headline)
    print(f"{args.log}: experiment log regenerated from {args.results}; "
          f"{args.readme}: headline table from {Path(args.results) / args.headline}")
    return 0


def bench_experts_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experts", default=None, help="one expert directory per task (default: the shipped experts)")
    p.add_argument("--pages", nargs="+", default=["README.md", "docs/datasets.md"],
                   help="the pages holding the experts table (default: %(default)s)")


@command("bench experts", "regenerate the README's and documentation's table of the shipped experts (returns and "
         "D4RL scores)", bench_experts_arguments)
def cmd_bench_experts(args) -> int:
    from swfp.assets import ASSETS
    from swfp.expert_table import update_experts_table

    experts = Path(args.experts) if args.experts else ASSETS / "experts"
    for page in args.pages:
        block = update_experts_table(Path(page), experts)
    print(block)
    return 0


def bench_critic_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", nargs="+", default=["Hopper-v5", "Walker2d-v5", "Ant-v5"])
    p.add_argument("--repeats", type=_positive(int), default=30)
    device_and_threads_arguments(p)
    p.add_argument("--out", default="benchmarks/results/critic")


@command("bench critic", "cost of the critic update with and without the exact entropy term", bench_critic_arguments)
def cmd_bench_critic(args) -> int:
    from swfp.bench import bench_critic_entropy

    bench_critic_entropy(args.tasks, args.repeats, Path(args.out), torch_setup(args))
    print((Path(args.out) / "critic_entropy.md").read_text())
    return 0


def bench_compaction_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a SWFP run directory (finished or checkpointed) whose policy holds blocks")
    p.add_argument("--episodes", type=_positive(int), default=100, help="paired evaluation episodes per policy")
    p.add_argument("--state-episodes", type=_positive(int), default=40,
                   help="stochastic episodes of the cascade whose states the compaction is fitted on")
    p.add_argument("--steps", type=_positive(int), default=2000, help="compaction steps (SWFP's compaction_steps)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    device_and_threads_arguments(p)
    p.add_argument("--out", required=True)


@command("bench compaction", "a SWFP run's cascade vs its compacted flow: paired returns, actions",
         bench_compaction_arguments)
def cmd_bench_compaction(args) -> int:
    from swfp.bench import bench_compaction

    bench_compaction(Path(args.run), args.episodes, args.state_episodes, args.steps, args.seed, Path(args.out),
                     torch_setup(args))
    print((Path(args.out) / "compaction.md").read_text())
    return 0



def build_parser() -> argparse.ArgumentParser:
    """The ``swfp`` parser: one subparser per registered command, a group's commands under the group's own."""
    parser = argparse.ArgumentParser(prog="swfp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    group_subparsers = {}
    for cmd in COMMANDS:
        group, _, name = cmd.name.rpartition(" ")
        if group and group not in group_subparsers:
            group_parser = sub.add_parser(group, help=GROUPS[group])
            group_subparsers[group] = group_parser.add_subparsers(dest=f"{group}_command", required=True)
        p = (group_subparsers[group] if group else sub).add_parser(name, help=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, CheckpointError, DatasetError, InversionError, ValueError, FileNotFoundError) as exc:
        print(f"swfp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # the shell's convention for a process ended by a signal
        print(f"swfp {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
