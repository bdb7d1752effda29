"""User code a config names ("package.module:function"), imported in a child process before a run starts.

The config checks only look for such a module (`importlib.util.find_spec`): running it there would run user
code on every config load. `r1ray config validate` and `r1ray train` import it for real, once, in a child
interpreter, so that a syntax error or an exception at import is reported in one line with its file and
line before Ray starts, instead of as a worker traceback minutes later; and so that a module that calls
`sys.exit(3)` at import cannot make r1ray exit 3 (the "nothing to do" code) or print over its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from r1ray.config import R1RayConfig
from r1ray.config_load import ConfigError

IMPORT_TIMEOUT_S = 120.0

# Runs in the child: import each path, report problems as one JSON line on the real stdout (what the
# user's modules print goes to a pipe the parent discards).
_CHILD = r"""
import importlib, importlib.util, json, os, sys, traceback
out = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1); os.dup2(devnull, 2)
problems = []
for field, path in json.loads(sys.argv[1]):
    module_name, _, attribute = path.partition(":")
    where = ""
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
        if not callable(fn):
            problems.append([field, path, f"{attribute} is {type(fn).__name__}, not a function", ""])
        continue
    except SystemExit as exc:
        what = f"the module called sys.exit({exc.code!r}) while being imported"
    except BaseException as exc:
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SyntaxError) and exc.filename:
            where = f"{exc.filename}:{exc.lineno}"
            what = f"SyntaxError: {exc.msg}"
        else:
            frames = [f for f in traceback.extract_tb(exc.__traceback__)
                      if "importlib" not in f.filename and f.filename != "<string>"]
            try:
                origin = importlib.util.find_spec(module_name).origin
            except BaseException:
                origin = None
            # The line of the user's module that raised, else the innermost frame.
            user = [f for f in frames if f.filename == origin] or frames
            if user:
                where = f"{user[-1].filename}:{user[-1].lineno}"
    problems.append([field, path, what, where])
out.write(json.dumps(problems) + "\n")
out.flush()
"""


def user_code_paths(cfg: R1RayConfig) -> list[tuple[str, str]]:
    """(config field, "package.module:function") for every user function the config names."""
    paths = [("reward.functions", name) for name in cfg.reward.functions if ":" in name]
    if ":" in cfg.algorithm.policy_loss:
        paths.append(("algorithm.policy_loss", cfg.algorithm.policy_loss))
    return paths


def check_user_code(cfg: R1RayConfig, timeout_s: float = IMPORT_TIMEOUT_S) -> None:
    """Import the config's user functions in a child process; ConfigError with one line per function that
    fails, naming the field, the path, the error and its file and line."""
    paths = user_code_paths(cfg)
    if not paths:
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths)], capture_output=True, text=True,
                              env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ConfigError([f"importing {', '.join(p for _, p in paths)} took longer than {timeout_s:g}s; a module "
                           f"that blocks at import cannot run in the reward or actor workers either"]) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ConfigError([f"importing {', '.join(p for _, p in paths)} ended the interpreter (exit code "
                           f"{done.returncode}); try `python -c 'import {paths[0][1].partition(':')[0]}'`"])
    problems = [f"{field}: '{path}' cannot be used: {what}{f' at {where}' if where else ''}; fix the module (or "
                f"its name) and validate again with `r1ray config validate`"
                for field, path, what, where in json.loads(lines[-1])]
    if problems:
        raise ConfigError(problems)
