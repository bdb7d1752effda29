"""The logits path of the packed forward (the scoring head): chunked float32 logprobs and entropy equal the
whole-matrix computation (values and gradients), keep no float32 logits for the backward when recomputed,
and entropy carries gradients only when asked to."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from r1ray.protocol import pack
from r1ray.workers.engines import packing
from r1ray.workers.engines.packing import forward_response, pack_for_forward, pad_for_forward, padded_chunks

K, V = 10, 37


def _reference(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchunked logprobs and entropy of the whole (K, V) matrix, upcast at once (the formulas the
    chunks use, so that even bf16 gradients may be compared exactly)."""
    scaled = logits.float() / temperature
    logp_all = torch.log_softmax(scaled, dim=-1)
    return (scaled.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1),
            -(logp_all.exp() * logp_all).sum(-1))


def _value_and_grad(fn, logits: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_(True)
    out = fn(leaf)
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


def _head(dtype: torch.dtype, d: int = 8, v: int = V, seed: int = 0) -> torch.nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Linear(d, v, bias=False).to(dtype)


def _scores(head, hidden, targets, temperature, entropy_grad=True):
    """The scoring head's (N, 2) = (log p(target), entropy) of `hidden` through `head`'s weight."""
    return packing._score_positions(head, hidden, targets, temperature, True, entropy_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [3, K, 4 * K])
@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_scores_equal_the_whole_matrix(monkeypatch, chunk: int, temperature: float, dtype,
                                               recompute: bool) -> None:
    """Chunks of `chunk` positions, logits kept or recomputed in the backward: the values and the hidden
    states' gradients of the whole (K, V) matrix upcast at once, in float32 (the head's GEMM over a chunk
    may round differently from one over all rows, so within the dtype's tolerance)."""
    monkeypatch.setattr(packing, "LOGITS_CHUNK_TOKENS", chunk)
    monkeypatch.setattr(packing, "LOGITS_RECOMPUTE_BYTES", 0 if recompute else 2**40)
    gen = torch.Generator().manual_seed(0)
    head = _head(dtype)
    hidden = (3 * torch.randn(K, 8, generator=gen)).to(dtype)
    targets = torch.randint(0, V, (K,), generator=gen)
    weights = torch.randn(K, 2, generator=gen)
    got, got_grad = _value_and_grad(lambda x: _scores(head, x, targets, temperature), hidden, weights)
    want, want_grad = _value_and_grad(lambda x: torch.stack(_reference(head(x), targets, temperature), -1),
                                      hidden, weights)
    assert got.dtype == torch.float32 and got_grad.dtype == dtype
    torch.testing.assert_close(got, want)
    # bf16 gradients: a bf16 GEMM over other row blocks, within one bf16 rounding step (2**-7) of the largest.
    tolerance = {} if dtype == torch.float32 else dict(atol=2**-7 * float(want_grad.abs().max()), rtol=2**-6)
    torch.testing.assert_close(got_grad, want_grad, **tolerance)


def test_chunked_gradients_pass_gradcheck(monkeypatch) -> None:
    """Recomputed chunks run their forward again in the backward; the analytic gradient must still be the
    true one (float64 stays float64, so finite differences are exact enough)."""
    monkeypatch.setattr(packing, "LOGITS_CHUNK_TOKENS", 3)
    monkeypatch.setattr(packing, "LOGITS_RECOMPUTE_BYTES", 0)
    gen = torch.Generator().manual_seed(1)
    head = _head(torch.float64, d=4, v=5)
    hidden = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (7,), generator=gen)
    assert torch.autograd.gradcheck(lambda x: _scores(head, x, targets, 0.7), (hidden,))


def _saved_float32_sizes(fn, x: torch.Tensor) -> list[int]:
    """numel of every float32 tensor autograd keeps for the backward while `fn` runs."""
    sizes: list[int] = []

    def pack_hook(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.float32:
            sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        fn(x)
    return sizes


def test_no_float32_logits_are_kept_for_the_backward_when_recomputed(monkeypatch) -> None:
    k, v, chunk = 64, 500, 16
    monkeypatch.setattr(packing, "LOGITS_CHUNK_TOKENS", chunk)
    monkeypatch.setattr(packing, "LOGITS_RECOMPUTE_BYTES", 0)          # as for a real vocabulary
    head = _head(torch.bfloat16, v=v)
    hidden = torch.randn(k, 8).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, v, (k,))
    # The whole-matrix computation keeps (K, V) float32 tensors: the check below can see them.
    assert max(_saved_float32_sizes(lambda x: _reference(head(x), targets, 0.7)[0], hidden)) >= k * v
    assert all(n < chunk * v for n in _saved_float32_sizes(lambda x: _scores(head, x, targets, 0.7), hidden))


def test_no_positions_stay_connected_to_the_graph() -> None:
    """A micro-batch whose responses are all empty still backpropagates (FSDP's reduce-scatter must run)."""
    head = _head(torch.float32)
    hidden = torch.zeros(0, 8, requires_grad=True)
    scores = _scores(head, hidden, torch.zeros(0, dtype=torch.int64), 1.0)
    assert scores.shape == (0, 2) and scores.grad_fn is not None
    scores.sum().backward()
    assert hidden.grad is not None and head.weight.grad is not None


def test_greedy_scores_at_temperature_one_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    head = _head(torch.float32, v=11)
    hidden = torch.randn(5, 8, generator=gen)
    targets = torch.tensor([0, 3, 10, 7, 7])
    with torch.no_grad():
        for temperature in (1.0, 0.7):
            logits = head(hidden) / temperature
            scores = _scores(head, hidden, targets, temperature)
            torch.testing.assert_close(scores[:, 0], torch.log_softmax(logits, -1)[torch.arange(5), targets])
            probs = torch.softmax(logits, -1)
            torch.testing.assert_close(scores[:, 1], -(probs * probs.log()).sum(-1))
        # Greedy (temperature 0) scores with the raw logits; bf16 hidden states score in float32.
        torch.testing.assert_close(_scores(head, hidden, targets, 0.0), _scores(head, hidden, targets, 1.0))
        bf16 = _head(torch.bfloat16, v=11)
        assert _scores(bf16, hidden.to(torch.bfloat16), targets, 1.0).dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_lm() -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config).eval()


def _packed(width: int = 6):
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20]]
    prompt_lens = torch.tensor([3, 2, 3])
    tokens, cu = pack(seqs)
    return pack_for_forward(tokens, cu, prompt_lens, width)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_forward_response_equals_plain_logits_and_grads(tiny_lm, monkeypatch, entropy_grad: bool,
                                                        recompute: bool) -> None:
    """Through a real lm_head, with chunks smaller than the response tokens, logits kept or recomputed in
    the backward: the same values and parameter gradients as the whole logits matrix of a plain forward."""
    monkeypatch.setattr(packing, "LOGITS_CHUNK_TOKENS", 4)
    monkeypatch.setattr(packing, "LOGITS_RECOMPUTE_BYTES", 0 if recompute else 2**40)
    packed = _packed()
    temperature = 0.7

    tiny_lm.zero_grad()
    logp, ent = forward_response(tiny_lm, packed, torch.device("cpu"), temperature, True, entropy_grad)
    assert logp.requires_grad and ent.requires_grad == entropy_grad
    assert (ent.grad_fn is None) == (not entropy_grad)
    (logp.sum() + (ent.sum() if entropy_grad else 0.0)).backward()
    got = {n: p.grad.clone() for n, p in tiny_lm.named_parameters()}

    tiny_lm.zero_grad()
    logits = tiny_lm(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
    ref_logp, ref_ent = _reference(logits[packed.keep], packed.targets, temperature)
    (ref_logp.sum() + (ref_ent.sum() if entropy_grad else 0.0)).backward()
    mask = packing.length_mask(packed.response_lens, packed.width).bool()
    torch.testing.assert_close(logp[mask], ref_logp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent[mask], ref_ent.detach(), rtol=0, atol=1e-5)
    for name, param in tiny_lm.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_entropy_is_a_metric_without_grad_by_default(tiny_lm) -> None:
    logp, ent = forward_response(tiny_lm, _packed(), torch.device("cpu"), 1.0, with_entropy=True)
    assert logp.grad_fn is not None
    assert ent.grad_fn is None and not ent.requires_grad


def test_losses_tell_the_engine_whether_entropy_needs_grad() -> None:
    from r1ray.workers.losses import ActorLoss, LossSettings, SFTLoss

    def settings(entropy_coef: float) -> LossSettings:
        return LossSettings(clip_low=0.2, clip_high=0.2, dual_clip=None, agg="token-mean", norm_len=8,
                            kl_kind="k3", kl_coef=0.0, entropy_coef=entropy_coef)

    assert ActorLoss(settings(0.0), 1.0, 1).entropy_grad is False
    assert ActorLoss(settings(0.01), 1.0, 1).entropy_grad is True
    assert SFTLoss(1.0, 1).entropy_grad is False


def _sequences():
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20], [21, 22, 23]]
    prompt_lens = torch.tensor([3, 2, 4, 2])
    tokens, cu = pack(seqs)
    return seqs, tokens, cu, prompt_lens


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padded_and_packed_layouts_give_the_same_logprobs_and_grads(attn: str) -> None:
    """The two micro-batch layouts against each sequence run alone (no padding, no packing): equal
    logprobs and parameter gradients, with prompts and responses of different lengths in one batch."""
    config = Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True, attn_implementation=attn)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    seqs, tokens, cu, prompt_lens = _sequences()
    width = 6
    weights = torch.randn(len(seqs), width)

    def run(inputs):
        model.zero_grad()
        logp, _ = forward_response(model, inputs, torch.device("cpu"), 0.7, with_entropy=False)
        (logp * weights).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    packed_lp, packed_grads = run(pack_for_forward(tokens, cu, prompt_lens, width))
    padded_lp, padded_grads = run(pad_for_forward(tokens, cu, prompt_lens, width))

    model.zero_grad()
    alone = torch.zeros(len(seqs), width)
    for row, (seq, p) in enumerate(zip(seqs, prompt_lens.tolist())):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, p - 1:len(seq) - 1]
        lp = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, torch.tensor(seq[p:])[:, None]).squeeze(-1)
        (lp * weights[row, :len(lp)]).sum().backward()
        alone[row, :len(lp)] = lp.detach()
    alone_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    for got, grads in ((packed_lp, packed_grads), (padded_lp, padded_grads)):
        torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)
        for name in alone_grads:
            torch.testing.assert_close(grads[name], alone_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pad_for_forward_layout() -> None:
    """Prompts end in column P - 1 for every row; the final response token is a target, not an input."""
    _, tokens, cu, prompt_lens = _sequences()
    inputs = pad_for_forward(tokens, cu, prompt_lens, width=6)
    assert inputs.prompt_width == 4 and inputs.input_ids.shape == (4, 4 + 5 - 1)
    assert inputs.input_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    assert inputs.attention_mask[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0]
    assert inputs.position_ids[0].tolist()[1:7] == [0, 1, 2, 3, 4, 5]
    assert inputs.input_ids[3].tolist() == [0, 0, 21, 22, 0, 0, 0, 0]
    assert inputs.targets.tolist() == [4, 5, 6, 7, 10, 11, 16, 17, 18, 19, 20, 23]


def test_padded_chunks_respect_the_padded_budget_and_group_similar_lengths() -> None:
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, 14, (64,), generator=gen).tolist()
    responses = torch.randint(1, 120, (64,), generator=gen).tolist()
    budget = 1024
    chunks = padded_chunks(prompts, responses, budget)
    assert sorted(i for c in chunks for i in c) == list(range(64))
    for chunk in chunks:
        assert chunk == sorted(chunk)
        cost = len(chunk) * (max(prompts[i] for i in chunk) + max(responses[i] for i in chunk))
        assert cost <= budget or len(chunk) == 1
    # Sorted by length, the padding is a small share of the padded tokens.
    padded = sum(len(c) * (max(prompts[i] for i in c) + max(responses[i] for i in c)) for c in chunks)
    assert sum(prompts) + sum(responses) > 0.8 * padded
    assert padded_chunks([5], [500], 100) == [[0]]
    assert padded_chunks([], [], 100) == []


def test_use_packing_only_with_a_varlen_kernel() -> None:
    assert packing.use_packing("auto", "flash_attention_2")
    assert not packing.use_packing("auto", "sdpa") and not packing.use_packing("auto", "eager")
    assert packing.use_packing("on", "sdpa") and not packing.use_packing("off", "flash_attention_2")


def test_the_scoring_head_keeps_no_logits_for_the_backward(monkeypatch) -> None:
    """A plain forward keeps the (K, V) logits for the backward (10 GB in bf16 for 32k response tokens of a
    152k vocabulary); under the scoring head only hidden states are kept, and each chunk's logits are
    recomputed in its backward. Seen through every tensor autograd saves outside the checkpoints."""
    vocab = 499                                   # no other dimension of the model has this size
    config = Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = Qwen2ForCausalLM(config)
    monkeypatch.setattr(packing, "LOGITS_CHUNK_TOKENS", 4)
    monkeypatch.setattr(packing, "LOGITS_RECOMPUTE_BYTES", 0)     # as for a real vocabulary
    packed = _packed()

    def saved_shapes(fn) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            fn()
        return shapes

    plain = saved_shapes(lambda: model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                       logits_to_keep=packed.keep, use_cache=False).logits.float().log_softmax(-1))
    assert any(vocab in shape for shape in plain)                    # the check can see logits
    scored = saved_shapes(lambda: forward_response(model, packed, torch.device("cpu"), 0.7, True, True))
    assert scored and not any(vocab in shape for shape in scored), scored


@pytest.mark.parametrize("recompute", [False, True])
def test_a_micro_batch_without_response_tokens_still_backpropagates(tiny_lm, monkeypatch, recompute: bool) -> None:
    """Sequences that are all prompt: no position is scored, yet the result stays in the graph, so the
    rank joins the backward's collectives (FSDP2's reduce-scatter, Ulysses' all-to-alls)."""
    monkeypatch.setattr(packing, "LOGITS_RECOMPUTE_BYTES", 0 if recompute else 2**40)
    tokens, cu = pack([[1, 2, 3], [4, 5]])
    inputs = pack_for_forward(tokens, cu, torch.tensor([3, 2]), 1)
    tiny_lm.zero_grad(set_to_none=True)
    logp, _ = forward_response(tiny_lm, inputs, torch.device("cpu"), 1.0, with_entropy=False)
    assert logp.shape == (2, 1) and logp.grad_fn is not None
    logp.sum().backward()
    assert tiny_lm.get_input_embeddings().weight.grad is not None

