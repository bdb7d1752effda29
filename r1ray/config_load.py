"""Loading a config: defaults <- YAML <- `key=value` overrides, with every problem reported at once.

OmegaConf does the typing and conversion. Around it we add what users of TRL and verl ask for: unknown
keys named with a did-you-mean suggestion, type errors named by their dotted key, and all problems of a
file listed together (one line each) instead of the first exception.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import warnings
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r1ray.config import R1RayConfig
from r1ray.config_checks import check_config


class ConfigError(ValueError):
    """One or more configuration problems; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, memory: bool = True) -> R1RayConfig:
    """Defaults <- YAML file <- dotted overrides, then the cross-field rules of `config_checks` (without the
    memory plan's when `memory` is false: `r1ray plan` prints the plan of a config that does not fit)."""
    return config_from_dict(_read_yaml(path) if path else {}, overrides, memory=memory)


def config_from_dict(user: dict[str, Any], overrides: Sequence[str] = (), *, memory: bool = True) -> R1RayConfig:
    """Defaults <- a nested dict (e.g. a resolved config) <- dotted overrides, with every check."""
    user = copy.deepcopy(user)
    parsed = _parse_overrides(overrides)
    _deep_merge(user, parsed)
    problems = _unknown_keys(user, R1RayConfig, "")
    unknown = {line.split(":", 1)[0] for line in problems}
    # Unknown keys are already reported with a suggestion; OmegaConf would name them a second time.
    problems += [p for p in _type_problems(user)
                 if not any(_names_key(p, u) for u in unknown) and " not in '" not in p]
    if problems:
        raise ConfigError(problems)
    with warnings.catch_warnings():
        # OmegaConf 2.4 warns about implicit str->number conversions that YAML makes on purpose.
        warnings.simplefilter("ignore")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(R1RayConfig), user))
    cfg = _without_unused_default_pool(cfg, user)
    problems = _overridden_unused_pools(cfg, parsed) + check_config(cfg, memory=memory)
    if problems:
        raise ConfigError(problems)
    return cfg


def _without_unused_default_pool(cfg: R1RayConfig, user: dict[str, Any]) -> R1RayConfig:
    """Drop the schema's "default" pool when no role uses it and the config did not define it itself: merged
    beside a config's own pools it would otherwise linger unused, and a check refuses unused pools (an
    override of a pool that nothing uses would change nothing)."""
    p = cfg.placement
    named = (user.get("placement") or {}).get("pools") or {}
    if "default" in named or "default" in {p.actor, p.ref, p.rollout, p.reward} or "default" not in p.pools:
        return cfg
    pools = {name: pool for name, pool in p.pools.items() if name != "default"}
    return dataclasses.replace(cfg, placement=dataclasses.replace(p, pools=pools))


def _overridden_unused_pools(cfg: R1RayConfig, overrides: dict[str, Any]) -> list[str]:
    """An override of a pool that no role uses changes nothing (placement.pools.default.device=gpu on a config
    whose roles use its own pools trained on CPU, silently): refuse it. A config file may keep spare pools."""
    p = cfg.placement
    used = {p.actor, p.ref, p.rollout, p.reward}
    named = ((overrides.get("placement") or {}).get("pools") or {}) if isinstance(overrides, dict) else {}
    return [f"placement.pools.{name}: set by an override, but no role uses this pool (the roles use "
            f"{', '.join(sorted(used))}); point placement.actor/ref/rollout/reward at it or override a used pool"
            for name in named if name not in used]


def config_to_yaml(cfg: R1RayConfig) -> str:
    """The resolved config as YAML (for `config show` and beside every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_to_dict(cfg: R1RayConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def yaml_error_line(path: Path, exc: "yaml.MarkedYAMLError") -> str:
    """One line: file:line:column, what is wrong, and how to fix the common cases (tabs, duplicate keys)."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = (exc.problem or exc.context or type(exc).__name__).strip()
    if mark is not None and _char_at(path, mark.line, mark.column) == "\t":
        problem, hint = "a tab character", "indent with spaces; YAML does not allow tabs"
    elif "duplicate key" in problem:
        hint = "each key may appear once per section; remove or merge the repeated one"
    else:
        hint = "check the brackets, quotes and indentation around that position"
    return f"{where}: not valid YAML: {problem} ({hint})"


def _char_at(path: Path, line: int, column: int) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[line][column] if line < len(lines) and column < len(lines[line]) else ""


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found (pass --config with an existing YAML file)"])
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([yaml_error_line(path, exc)]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save "
                           f"it as UTF-8"]) from exc
    except Exception as exc:  # other parse failures (OmegaConf's own) carry no position
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"{path}: not valid YAML: {first}"]) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (model:, data:, ...)"])
    return loaded


def _parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError([f"override '{o}': write it as section.key=value, e.g. trainer.total_steps=10" for o in bad])
    indexed = [o for o in overrides if any(part.isdigit() for part in o.partition("=")[0].split("."))]
    if indexed:
        raise ConfigError([f"override '{o}': one element of a list cannot be set on its own; give the whole list, "
                           f"e.g. {_list_key(o)}=[...]" for o in indexed])
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError([f"overrides: {str(exc).splitlines()[0]}"]) from exc


def _list_key(override: str) -> str:
    """'reward.weights.0=2' -> 'reward.weights': the key up to the first list index."""
    parts = override.partition("=")[0].split(".")
    return ".".join(parts[:next(i for i, p in enumerate(parts) if p.isdigit())])


def _deep_merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _unknown_keys(user: Any, cls: type, prefix: str) -> list[str]:
    """Keys the schema does not have, each with the closest known key as a suggestion."""
    if not isinstance(user, dict):
        return [] if not prefix else [f"{prefix.rstrip('.')}: expected a mapping of {cls.__name__} fields"]
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    problems = []
    for key, value in user.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            problems.append(f"{prefix}{key}: unknown key{hint}")
            continue
        kind = hints[key]
        if is_dataclass(kind):
            problems += _unknown_keys(value, kind, f"{prefix}{key}.")
        elif get_origin(kind) is dict and is_dataclass(get_args(kind)[1]) and isinstance(value, dict):
            for name, sub in value.items():
                problems += _unknown_keys(sub, get_args(kind)[1], f"{prefix}{key}.{name}.")
        elif get_origin(kind) is list and is_dataclass(get_args(kind)[0]) and isinstance(value, list):
            for index, sub in enumerate(value):
                problems += _unknown_keys(sub, get_args(kind)[0], f"{prefix}{key}[{index}].")
    return problems


def _names_key(problem: str, key: str) -> bool:
    """Whether a problem line is about `key` or something inside it ('trainer.save' is not 'trainer.save_every')."""
    return problem.startswith((key + ":", key + ".", key + "["))


def _type_problems(user: dict[str, Any]) -> list[str]:
    """Merge leaf by leaf so that every wrongly typed value is reported, not only the first."""
    base = OmegaConf.structured(R1RayConfig)
    try:
        # The common case, a well-typed config, needs one merge instead of one per leaf.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            OmegaConf.merge(base, user)
        return []
    except OmegaConfBaseException:
        pass
    problems = []
    # Each leaf is merged into its own section's schema, not the whole config's: a merge copies its base,
    # and the whole config made a bad value take half a second to report.
    sections = get_type_hints(R1RayConfig)
    bases: dict[str, Any] = {}
    for path, value in _leaves(user, ()):
        section = sections.get(path[0]) if len(path) > 1 else None
        prefix = ""
        if section is not None and is_dataclass(section):
            if path[0] not in bases:
                bases[path[0]] = OmegaConf.structured(section)
            target, keys, prefix = bases[path[0]], path[1:], path[0] + "."
        else:
            target, keys = base, path
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                OmegaConf.merge(target, nested)
        except OmegaConfBaseException as exc:
            full = getattr(exc, "full_key", None)
            key = prefix + full if full else ".".join(path)
            problems.append(f"{key}: {_type_message(key, value, str(exc).splitlines()[0])}")
    return problems


def _type_message(key: str, value: Any, omegaconf_says: str) -> str:
    """What a wrongly typed value means, in the terms of the config rather than OmegaConf's."""
    if value is None:
        empty = f" (an empty string is {key}='')" if "of type 'str'" in omegaconf_says else ""
        return f"no value given; write {key}=<value>{empty}"
    if "is not a ListConfig" in omegaconf_says:
        return f"expected a list, got {value!r}; write it in brackets, e.g. {key}=[{value}]"
    if "is not a DictConfig" in omegaconf_says or "is not a subclass of" in omegaconf_says or "to Dict[" in omegaconf_says:
        return f"expected a section of keys, got {value!r}; see `r1ray config fields` for what {key} holds"
    return omegaconf_says


def _leaves(tree: Any, path: tuple[str, ...]):
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, path + (str(key),))
    else:
        yield path, tree
