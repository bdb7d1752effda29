"""vLLM requests kept across weight updates: free running with `trainer.pause_mode=keep`.

In `abort` mode (the default) an engine call generates one segment and returns; the response goes back
as prompt + tokens so far in the next call. In `keep` mode the responses stay in vLLM's scheduler from
their first token to their last: each call (`advance`) adds the new groups' requests and steps the engine
until every request it holds has `tokens` more tokens (or finished), then returns what each produced.
Between two calls the engine does not step, so a weight sync lands between two decode steps of every
response. The sync pauses the scheduler with vLLM's own `sleep(level=0, mode="keep")` (requests frozen,
device synchronised), loads the weights, resets the KV and prefix caches with the running requests
preempted (their KV is recomputed under the new weights, as vLLM's `pause_generation(mode="keep",
clear_cache=True)` does) and resumes with `wake_up(tags=["scheduling"])`.

So a token's version and its behaviour logprob mean the same in both modes; `keep` saves the per-segment
round trip and resubmission, and needs an engine whose scheduler holds requests (vLLM; the HF engine's
decode loop ends with each call).

Request ids are the caller's keys ("<group>:<response>"); vLLM adds a suffix of its own inside and maps
outputs and aborts back to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Delta:
    """What one kept response produced since the last `advance` returned it."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)     # processed logprobs (behaviour policy mu)
    finished: bool = False
    truncated: bool = False                                  # finished at its max_tokens without a stop token


class KeptRequests:
    """The requests an engine holds across calls, keyed by the caller's ids."""

    def __init__(self, engine):
        self.engine = engine                 # vllm.LLM.llm_engine (an LLMEngine)
        self.deltas: dict[str, Delta] = {}   # every live request, with what it produced and was not returned
        self.kept_over_updates = 0           # responses that were mid-generation when weights were loaded
        self._runs = 0

    def __len__(self) -> int:
        return len(self.deltas)

    def add(self, key: str, prompt_ids: list[int], params) -> None:
        """A new request: `params` is a vLLM SamplingParams with n=1 and output_kind DELTA."""
        if key in self.deltas:
            raise ValueError(f"kept request {key!r} is already live")
        self.engine.add_request(key, {"prompt_token_ids": list(prompt_ids)}, params)
        self.deltas[key] = Delta()

    def abort(self, keys: list[str]) -> None:
        """Requests the caller no longer needs (groups evicted or the run stopping)."""
        live = [k for k in keys if k in self.deltas]
        if live:
            self.engine.abort_request(live)
        for key in live:
            del self.deltas[key]

    def advance(self, tokens: int) -> dict[str, Delta]:
        """Step the engine until every live request has `tokens` new tokens or finished; each request's
        tokens since the last call. The finished ones are forgotten."""
        self._step_until(lambda: all(d.finished or len(d.tokens) >= tokens for d in self.deltas.values()))
        done, self.deltas = self.deltas, {k: Delta() for k, d in self.deltas.items() if not d.finished}
        return done

    def run(self, requests: list[tuple[list[int], object]]) -> list[Delta]:
        """A synchronous generation while requests are kept (an evaluation during a free-running run):
        (prompt ids, SamplingParams with output_kind DELTA) each, stepped until all of them finished. The
        kept requests advance meanwhile under the same weights; their tokens wait for the next `advance`."""
        self._runs += 1
        keys = [f"r1ray-generate-{self._runs}-{i}" for i in range(len(requests))]
        for key, (ids, params) in zip(keys, requests):
            self.add(key, ids, params)
        self._step_until(lambda: all(self.deltas[k].finished for k in keys))
        return [self.deltas.pop(k) for k in keys]

    def updated(self) -> None:
        """Weights were loaded while these requests were live."""
        self.kept_over_updates += sum(1 for d in self.deltas.values() if not d.finished)

    def _step_until(self, done) -> None:
        """Step the engine until `done()`; a request it no longer holds would make that wait forever."""
        while not done():
            if not self.engine.has_unfinished_requests():
                lost = sorted(k for k, d in self.deltas.items() if not d.finished)
                raise RuntimeError(f"vLLM engine holds none of the requests {lost[:5]} any more")
            for out in self.engine.step():
                self._record(out)

    def _record(self, out) -> None:
        delta = self.deltas.get(out.request_id)
        if delta is None:                    # aborted meanwhile
            return
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        delta.tokens += ids
        delta.logprobs += [lp[t].logprob for lp, t in zip(completion.logprobs or [], ids)]
        if out.finished:
            delta.finished = True
            delta.truncated = completion.finish_reason == "length"
