"""``algorithm.policy_loss``: a name from ``POLICY_LOSSES`` or a user's ``"package.module:function"``.

Every entry has ``policy_loss``'s signature: ``fn(logprobs, old_logprobs, advantages, mask, *, clip_low,
clip_high, agg, dual_clip, norm_len, weights) -> (scalar loss, {metric: float})``, all tensors ``(B, T)``
(advantages may be ``(B,)``). A new loss is one function and one line here; ``workers/losses.py`` only
looks the name up.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from r1ray.algos.policy_loss import policy_loss
from r1ray.algos.policy_variants import cispo_loss, gspo_loss
from r1ray.loss_spec import POLICY_LOSS_NAMES

PolicyLossFn = Callable[..., tuple]

POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "clipped": policy_loss,          # PPO clipped surrogate, clip-higher and dual clip (GRPO, DAPO, Dr. GRPO)
    "gspo": gspo_loss,               # sequence-level ratio (Qwen, 2025)
    "cispo": cispo_loss,             # clipped stop-gradient IS weight (MiniMax-M1, 2025)
}
assert tuple(POLICY_LOSSES) == POLICY_LOSS_NAMES, "r1ray/loss_spec.py names the losses the config may choose"


def get_policy_loss(name: str) -> PolicyLossFn:
    """The loss registered as ``name`` or imported from ``"package.module:function"``; ValueError (one
    line, naming ``algorithm.policy_loss``) for an unknown name or a path that does not import."""
    if name in POLICY_LOSSES:
        return POLICY_LOSSES[name]
    if ":" not in name:
        close = difflib.get_close_matches(name, POLICY_LOSSES, n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"algorithm.policy_loss={name!r} is not a known loss.{hint} Known: "
                         f"{', '.join(POLICY_LOSSES)}; or give 'package.module:function'")
    module_name, _, attribute = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (Exception, SystemExit) as exc:    # a user module can raise anything at import (even exit)
        raise ValueError(f"algorithm.policy_loss={name!r} does not import: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"algorithm.policy_loss={name!r} is not callable")
    return fn
