"""Secrets never reach logs, trackers or saved configs."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
REDACTED = "***"


def redact(tree: Any) -> Any:
    """A copy of a nested dict/list with the values of secret-looking keys replaced by ***."""
    if isinstance(tree, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) and v not in ("", None) else redact(v))
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree
