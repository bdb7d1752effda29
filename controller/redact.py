"""Secrets never reach logs, trackers or saved configs."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

# A secret word must be a whole part of the key ('apiKey', 'client_secret'), and 'token' its last part
# ('hf_token'), so that config fields which only mention tokens ('micro_batch_tokens', 'tokenizer',
# 'token_ids') keep their values in saved configs.
SECRET_KEY = re.compile(r"(?:^|[_\-.])(?:api[_-]?key|secret|password|passwd|credentials?)(?:$|[_\-.])"
                        r"|(?:^|[_\-.])token$", re.IGNORECASE)
REDACTED = "***"


def is_secret_key(key: Any) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))   # camelCase -> camel_Case
    return SECRET_KEY.search(words) is not None


def redact(tree: Any) -> Any:
    """A copy of a nested dict/list with the values of secret-looking keys replaced by ***, and secret-looking
    text inside any other string as well (`redact_text`)."""
    if isinstance(tree, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in ("", None) else redact(v))
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return redact_text(tree) if isinstance(tree, str) else tree


# Values that are credentials whatever their key: Hugging Face, OpenAI-style and GitHub tokens, bearer
# headers, and the password part of a URL (https://user:password@host), as in a wandb base URL or a
# runtime_env pip index.
SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}|\bsk-[A-Za-z0-9_\-]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}"
                          r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=\-]{8,}")
URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]+):[^/@\s]+@")


def redact_text(text: str) -> str:
    """`text` with secret-looking substrings replaced by ***."""
    return URL_PASSWORD.sub(rf"\1:{REDACTED}@", SECRET_VALUE.sub(REDACTED, text))


def redact_env(env: Mapping[str, str], visible: Sequence[str] = ()) -> dict[str, str]:
    """Environment variables for display: every value hidden except those named in `visible` (which are
    still scrubbed by `redact_text`). Env vars are where API keys travel, so names are shown, values not."""
    return {k: (redact_text(str(v)) if k in visible and not is_secret_key(k) else REDACTED) for k, v in env.items()}
