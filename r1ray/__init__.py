"""r1ray: GRPO-family RL for reasoning LLMs (DeepSeek-R1 recipe) on a Ray single controller.

Imports stay light here (docs/design.md §1): the façade names resolve lazily, so `import r1ray` pulls in
neither Ray nor the controller.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_config", "Trainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from r1ray.config_load import load_config

        return load_config
    if name == "Trainer":
        from r1ray.controller.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'r1ray' has no attribute {name!r}")
