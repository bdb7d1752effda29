"""What the config may name for the actor's loss, without importing torch (config checks run before it).

`POLICY_LOSS_NAMES` are the keys of `r1ray.algos.loss_registry.POLICY_LOSSES`; the rollout-correction
presets and their defaults live here, and `r1ray.algos.rollout_correction` computes their weights.
`uses_reference_model` says whether the KL term needs a reference model at all (read by the config checks,
the memory plan and the controller).
"""

from __future__ import annotations

from dataclasses import dataclass

POLICY_LOSS_NAMES = ("clipped", "gspo", "cispo")


@dataclass(frozen=True)
class CorrectionPreset:
    level: str                               # "token" | "sequence"
    mode: str                                # "truncate" (weight capped above) | "mask" (outside a band -> 0)
    cap: float = 0.0                         # truncate: the weight's upper bound
    band: tuple[float, float] = (0.0, 0.0)   # mask: kept ratios [low, high]


ROLLOUT_CORRECTIONS: dict[str, CorrectionPreset | None] = {
    "none": None,
    "tis_token": CorrectionPreset("token", "truncate", cap=2.0),
    "tis_seq": CorrectionPreset("sequence", "truncate", cap=2.0),
    "mis_token": CorrectionPreset("token", "mask", band=(0.5, 2.0)),
    "mis_seq": CorrectionPreset("sequence", "mask", band=(0.5, 2.0)),
    "icepop": CorrectionPreset("token", "mask", band=(0.5, 5.0)),
}


def resolve_preset(name: str, cap: float = 0.0, band=()) -> CorrectionPreset | None:
    """The preset `name` with `cap` (> 0) or `band` (two numbers) in place of its defaults; ValueError
    naming the config field otherwise."""
    if name not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"algorithm.rollout_correction: '{name}' is not a preset; choose one of "
                         f"{', '.join(ROLLOUT_CORRECTIONS)}")
    preset = ROLLOUT_CORRECTIONS[name]
    if preset is None:
        return None
    if cap:
        if cap < 1.0:
            raise ValueError(f"algorithm.rollout_correction_cap: {cap} must be >= 1 (it caps a weight whose mean is 1)")
        preset = CorrectionPreset(preset.level, preset.mode, cap=float(cap), band=preset.band)
    if band:
        if len(band) != 2:
            raise ValueError(f"algorithm.rollout_correction_band: {list(band)} must be two numbers [low, high]")
        low, high = (float(b) for b in band)
        if not 0.0 <= low < 1.0 < high:
            raise ValueError(f"algorithm.rollout_correction_band: {list(band)} must be [low, high] with "
                             f"0 <= low < 1 < high")
        preset = CorrectionPreset(preset.level, preset.mode, cap=preset.cap, band=(low, high))
    return preset


def uses_reference_model(cfg) -> bool:
    """A reference model runs only when the KL term can be non-zero at some step (`cfg`: an R1RayConfig)."""
    a = cfg.algorithm
    if a.kl_placement == "none":
        return False
    return a.kl_coef > 0 or (a.kl_schedule != "constant" and a.kl_coef_final > 0)
