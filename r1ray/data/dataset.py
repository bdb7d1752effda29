"""Templated, tokenized prompts and the resumable sampler that draws P prompts per training step."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from r1ray.data.schema import DataError, PromptRow
from r1ray.data.template import PromptStyle, as_style

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptItem:
    """One prompt ready for rollout."""

    row: PromptRow
    text: str  # the rendered prompt
    prompt_ids: list[int]  # [prompt_len] token ids of ``text``


class PromptDataset:
    """Prompts rendered with a template and tokenized; prompts over ``max_prompt_length`` tokens are dropped.

    The number dropped is kept in ``n_dropped`` (and logged) so it can be reported as a metric.
    """

    def __init__(
        self,
        rows: Sequence[PromptRow],
        tokenizer: Any,
        template: str | PromptStyle,
        max_prompt_length: int | None,
    ) -> None:
        self.style = as_style(template)
        self.template = self.style.template
        self.max_prompt_length = max_prompt_length
        self.items, self.n_dropped = self._build_items(rows, tokenizer)

    def _build_items(self, rows: Sequence[PromptRow], tokenizer: Any) -> tuple[list[PromptItem], int]:
        if not rows:
            raise DataError("no prompt rows to build a dataset from (check data.train_files)")
        texts = [self.style.render(row.prompt, tokenizer) for row in rows]
        # Chat templates already write any BOS into the text; plain templates let the tokenizer add it.
        ids = tokenizer(texts, add_special_tokens=self.template != "chat")["input_ids"]
        limit = self.max_prompt_length
        items = [
            PromptItem(row=row, text=text, prompt_ids=list(prompt_ids))
            for row, text, prompt_ids in zip(rows, texts, ids)
            if limit is None or len(prompt_ids) <= limit
        ]
        n_dropped = len(rows) - len(items)
        if n_dropped:
            logger.warning(
                "dropped %d of %d prompts longer than max_prompt_length=%s tokens", n_dropped, len(rows), limit
            )
        if not items:
            longest = max(len(x) for x in ids)
            raise DataError(
                f"all {len(rows)} prompts are longer than max_prompt_length={limit} tokens (the longest has "
                f"{longest}); raise rollout.max_prompt_length"
            )
        return items, n_dropped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PromptItem:
        return self.items[index]

    def batch(self, indices: Sequence[int]) -> list[PromptItem]:
        """The items at ``indices`` (a batch from ``PromptSampler``)."""
        return [self.items[i] for i in indices]


class PromptSampler:
    """An endless stream of index batches, ``batch_size`` prompts per step, reshuffled every epoch.

    The order of epoch ``e`` is a pure function of ``(seed, e)``, so ``state_dict()`` needs only the
    epoch and the position inside it to resume with exactly the same data order. A state saved after
    the last batch of an epoch resumes with the first batch of the next epoch.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        if drop_last and dataset_size < batch_size:
            raise ValueError(
                f"only {dataset_size} prompts for batches of {batch_size}; lower data.prompts_per_step "
                f"or add data"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # index into the epoch's order of the next prompt to hand out
        self._order_cache: tuple[int, list[int]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one pass over the data (a short last batch counts unless ``drop_last``)."""
        full, rest = divmod(self.dataset_size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _epoch_end(self) -> int:
        return self.steps_per_epoch * self.batch_size if self.drop_last else self.dataset_size

    def epoch_order(self, epoch: int) -> list[int]:
        """The permutation of dataset indices used in ``epoch``."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        if self.shuffle:
            # SeedSequence mixes (seed, epoch), so runs whose seeds differ by one don't share epochs.
            order = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size).tolist()
        else:
            order = list(range(self.dataset_size))
        self._order_cache = (epoch, order)
        return order

    def next_batch(self) -> list[int]:
        """Indices of the next ``batch_size`` prompts, rolling over into the next epoch when needed."""
        if self.position >= self._epoch_end():
            self.epoch += 1
            self.position = 0
        order = self.epoch_order(self.epoch)
        batch = order[self.position:min(self.position + self.batch_size, self._epoch_end())]
        self.position += len(batch)
        return batch

    def __iter__(self) -> PromptSampler:
        return self

    def __next__(self) -> list[int]:
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint stores to resume the same order."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "dataset_size": self.dataset_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from ``state_dict()``; a changed dataset size keeps the epoch but not the exact order."""
        if state.get("dataset_size", self.dataset_size) != self.dataset_size:
            logger.warning(
                "data changed since the checkpoint (%s prompts, now %d): resuming epoch %d at its position, "
                "but the order differs", state["dataset_size"], self.dataset_size, state["epoch"],
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order_cache = None
