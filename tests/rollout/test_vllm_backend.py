"""vLLM rollout backends without a GPU: a stand-in ``vllm`` package (tests/fake_vllm) whose ``LLM`` samples with the
tiny transformers model. What is checked: the SamplingParams mapping, the conversion of vLLM's outputs, the weight
sync after optimizer steps (colocate, sleep mode, PEFT names, server mode over real HTTP), the importance-sampling
weights, and the errors when vLLM is missing or a trainer does not support it. The NCCL transport and a real vLLM
engine need a GPU and are not run here (docs/vllm.md)."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from posttrain import GRPOConfig, GRPOTrainer
from posttrain.kit import make_dataset
from posttrain.losses import sampler_importance_weights
from posttrain.rollout.vllm_backend import (
    request_output_lists,
    sampling_params_kwargs,
    to_generations,
    vllm_param_name,
    weight_groups,
)
from tests.conftest import train_args

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fake_vllm"


def _forget_vllm():
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The stand-in ``vllm`` package, importable for the duration of a test (and the environment variables the
    colocate backend sets for vLLM's launcher, RANK, WORLD_SIZE, ..., undone afterwards)."""
    environ, threads = dict(os.environ), torch.get_num_threads()
    had_group = torch.distributed.is_initialized()
    _forget_vllm()
    monkeypatch.syspath_prepend(str(FAKE_VLLM))
    import vllm

    vllm.LLM.instances.clear()
    yield vllm
    _forget_vllm()
    os.environ.clear()
    os.environ.update(environ)
    # A trainer built while those variables were set starts a 1-process gloo group, and accelerate then sets the
    # torch threads to the CPU count: undo both, or every later test runs on 2 threads in a distributed state.
    if torch.distributed.is_initialized() and not had_group:
        from accelerate.state import AcceleratorState, PartialState

        torch.distributed.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts():
    return make_dataset("reverse", "prompt_only", n=16, seed=3, min_len=3, max_len=5)


def token_count_reward(prompts, completions, completion_ids, **kwargs):
    return [-sum(ids) / (1024.0 * max(len(ids), 1)) for ids in completion_ids]


def vllm_grpo_args(tmp_path, **overrides):
    defaults = dict(num_generations=4, max_completion_length=6, max_prompt_length=32, per_device_train_batch_size=8,
                    max_steps=2, learning_rate=1e-2, use_vllm=True)
    defaults.update(overrides)
    return train_args(GRPOConfig, tmp_path, **defaults)


class PolicySnapshots(TrainerCallback):
    """The policy's weights after every optimizer step."""

    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step.append({k: v.detach().clone() for k, v in model.named_parameters()})


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def perturbed_model(path):
    """The model of ``path`` with in-memory weights that differ from the folder's (so that an engine that only
    loaded the folder would sample with other weights)."""
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model


# ------------------------------------------------------------------------------------------------
# sampling options and results
# ------------------------------------------------------------------------------------------------


def test_sampling_params_mapping(fake_vllm):
    kwargs = sampling_params_kwargs(num_return_sequences=4, max_new_tokens=12, temperature=0.7, top_p=0.9, top_k=None,
                                    min_p=None, repetition_penalty=1.1, seed=5, return_logprobs=True)
    assert kwargs == dict(n=4, max_tokens=12, temperature=0.7, top_p=0.9, top_k=-1, min_p=0.0,
                          repetition_penalty=1.1, seed=5, logprobs=0)
    assert sampling_params_kwargs(top_k=0)["top_k"] == -1 and sampling_params_kwargs(top_k=20)["top_k"] == 20
    assert sampling_params_kwargs(min_p=0.05)["min_p"] == 0.05
    assert sampling_params_kwargs()["logprobs"] is None
    greedy = sampling_params_kwargs(do_sample=False, temperature=0.7, top_k=20, top_p=0.5, min_p=0.1)
    assert (greedy["temperature"], greedy["top_k"], greedy["top_p"], greedy["min_p"]) == (0.0, -1, 1.0, 0.0)
    assert sampling_params_kwargs(generation_kwargs={"stop_token_ids": [7]})["stop_token_ids"] == [7]
    fake_vllm.SamplingParams(**kwargs)  # vLLM's names
    with pytest.raises(TypeError):
        fake_vllm.SamplingParams(**sampling_params_kwargs(generation_kwargs={"do_sample": True}))


def test_outputs_become_generations_cut_after_eos(fake_vllm, tokenizer):
    eos = tokenizer.eos_token_id
    a, b = tokenizer("a b")["input_ids"], tokenizer("c")["input_ids"]
    vl = fake_vllm
    outputs = [
        vl.RequestOutput("0", None, [1, 2], [
            vl.CompletionOutput(1, "", b + [eos], None, [{t: vl.Logprob(-0.5)} for t in b + [eos]]),
            vl.CompletionOutput(0, "", a + [eos] + b, None, [{t: vl.Logprob(-float(i))} for i, t in
                                                             enumerate(a + [eos] + b)]),
        ]),
        vl.RequestOutput("1", None, [3], [vl.CompletionOutput(0, "", a, None, [{t: vl.Logprob(-1.0)} for t in a])]),
    ]
    lists = request_output_lists(outputs)
    assert lists["prompt_ids"] == [[1, 2], [1, 2], [3]]
    assert lists["completion_ids"] == [a + [eos] + b, b + [eos], a]  # samples in index order
    gens = to_generations(lists["prompt_ids"], lists["completion_ids"], lists["logprobs"], tokenizer)
    assert gens.completion_ids == [a + [eos], b + [eos], a]  # cut after the first EOS, which stays
    assert gens.logprobs == [[-float(i) for i in range(len(a) + 1)], [-0.5] * (len(b) + 1), [-1.0] * len(a)]
    assert gens.texts == [tokenizer.decode(a, skip_special_tokens=True), tokenizer.decode(b, skip_special_tokens=True),
                          tokenizer.decode(a, skip_special_tokens=True)]
    for o in outputs:
        for s in o.outputs:
            s.logprobs = None
    assert to_generations(**request_output_lists(outputs), tokenizer=tokenizer).logprobs is None


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_missing_vllm_is_a_clear_early_error(monkeypatch, tmp_path):
    from posttrain import GKDConfig, PPOConfig

    _forget_vllm()
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails as if it were not installed
    for mode, transport in (("colocate", "nccl"), ("server", "nccl")):
        with pytest.raises(ImportError, match=r"pip install 'posttrain\[vllm\]'.*CUDA GPU"):
            vllm_grpo_args(tmp_path, vllm_mode=mode, vllm_weight_sync_transport=transport)
    vllm_grpo_args(tmp_path, vllm_mode="server", vllm_weight_sync_transport="http")  # the trainer needs no vLLM
    with pytest.raises(ValueError, match="vllm_mode"):
        vllm_grpo_args(tmp_path, vllm_mode="remote")
    with pytest.raises(ValueError, match="PPO"):
        PPOConfig(output_dir=str(tmp_path), use_vllm=True, report_to=[])
    with pytest.raises(ValueError, match="GKD"):
        GKDConfig(output_dir=str(tmp_path), use_vllm=True, report_to=[])


def test_server_that_is_not_running(tmp_path):
    from posttrain.rollout.vllm_client import VLLMClient, VLLMServerError

    with pytest.raises(VLLMServerError, match="posttrain vllm-serve"):
        VLLMClient(base_url="http://127.0.0.1:9", transport="http", connection_timeout=0)


# ------------------------------------------------------------------------------------------------
# colocate mode: the engine samples with the policy's weights after every optimizer step
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sleep", [False, True], ids=["awake", "sleep-mode"])
def test_colocate_engine_gets_the_policy_weights(fake_vllm, tiny_model_dir, tokenizer, prompts, tmp_path, sleep):
    model = perturbed_model(tiny_model_dir)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    on_disk = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    snapshots = PolicySnapshots()
    args = vllm_grpo_args(tmp_path, vllm_mode="colocate", vllm_enable_sleep_mode=sleep, max_steps=3)
    trainer = GRPOTrainer(model, token_count_reward, args=args, train_dataset=prompts, processing_class=tokenizer,
                          callbacks=[snapshots])
    trainer.train()
    llm = fake_vllm.LLM.instances[-1]
    assert llm.model_path == str(tiny_model_dir)
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["max_model_len"] == 32 + 6 and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["enable_sleep_mode"] is sleep
    seen = llm.weights_at_generate
    assert len(seen) == 3  # one generation batch per optimizer step
    assert same_weights(seen[0], start)  # the in-memory policy, not the folder's weights
    assert not same_weights(seen[0], {k: v.detach() for k, v in on_disk.items()})
    for step in (1, 2):  # after optimizer step s the engine samples with the weights of step s
        assert same_weights(seen[step], snapshots.after_step[step - 1])
        assert not same_weights(seen[step], seen[step - 1])  # without the sync it would sample with stale weights
    names = [c[0] for c in llm.calls]
    assert names.count("reset_prefix_cache") == 3  # after every sync
    if sleep:
        assert llm.calls[0] == ("sleep", 2) and ("wake_up", ("weights",)) in llm.calls
        assert names[-1] == "sleep"
    # the sampler's log-probs reach the loss (importance-sampling correction): the stand-in samples with the same
    # transformers forward as the trainer, so the ratio is 1 up to the KV-cache rounding
    logged = trainer.state.log_history[0]
    assert abs(logged["sampling/importance_sampling_ratio/mean"] - 1.0) < 1e-2
    assert logged["sampling/sampling_logp_difference/mean"] < 1e-2


@pytest.mark.parametrize("sleep", [False, True], ids=["awake", "sleep-mode"])
def test_weights_are_sent_once_per_optimizer_step(fake_vllm, tiny_model_dir, tokenizer, prompts, tmp_path, sleep):
    """gradient_accumulation_steps=2 with steps_per_generation=1: two generations per optimizer step. The weights
    are sent once per step, or before every generation in sleep mode (sleep level 2 discards them)."""
    snapshots = PolicySnapshots()
    args = vllm_grpo_args(tmp_path, vllm_mode="colocate", gradient_accumulation_steps=2, steps_per_generation=1,
                          per_device_train_batch_size=4, max_steps=2, vllm_enable_sleep_mode=sleep)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          processing_class=tokenizer, callbacks=[snapshots])
    start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    llm = fake_vllm.LLM.instances[-1]
    names = [c[0] for c in llm.calls]
    assert names.count("generate") == 4 and names.count("reset_prefix_cache") == (4 if sleep else 2)
    expected = [start, start, snapshots.after_step[0], snapshots.after_step[0]]
    assert all(same_weights(seen, want) for seen, want in zip(llm.weights_at_generate, expected))


def test_online_dpo_samples_with_vllm(fake_vllm, tiny_model_dir, tokenizer, prompts, tmp_path):
    from posttrain import OnlineDPOConfig, OnlineDPOTrainer

    args = train_args(OnlineDPOConfig, tmp_path, max_steps=2, per_device_train_batch_size=4, max_new_tokens=6,
                      use_vllm=True, vllm_mode="colocate")
    trainer = OnlineDPOTrainer(tiny_model_dir, reward_funcs=token_count_reward, args=args, train_dataset=prompts,
                               processing_class=tokenizer)
    trainer.train()
    llm = fake_vllm.LLM.instances[-1]
    assert [c for c in llm.calls if c[0] == "generate"] == [("generate", 8, 1)] * 2  # 4 prompts x 2 completions
    assert not same_weights(llm.weights_at_generate[1], llm.weights_at_generate[0])  # synced after step 1


def test_importance_weights_reach_the_grpo_loss(fake_vllm, tiny_model_dir, tokenizer, prompts, tmp_path):
    """A completion whose sampler probability is far below the trainer's (sequence ratio above the cap) gets no
    gradient with vllm_importance_sampling_mode="sequence_mask"; without the correction it does."""
    grads = {}
    for correction in (True, False):
        args = vllm_grpo_args(tmp_path, vllm_mode="colocate", vllm_importance_sampling_correction=correction)
        trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                              processing_class=tokenizer)
        trainer.model.eval()
        rows = [trainer.train_dataset[i] for i in range(2) for _ in range(4)]
        batch = trainer.generate_and_score(rows, 1)[0]
        assert ("sampling_logps" in batch) is correction
        if correction:
            assert batch["sampling_logps"].shape == trainer.token_logps(trainer.model, batch)[0].shape
            batch["sampling_logps"] = batch["sampling_logps"] - 5.0  # ratio exp(5 * length) > cap
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, batch).backward()
        grads[correction] = sum(p.grad.abs().sum() for p in trainer.model.parameters() if p.grad is not None)
    assert grads[True] == 0 and grads[False] > 0


# ------------------------------------------------------------------------------------------------
# PEFT: the merged weights under the base model's names
# ------------------------------------------------------------------------------------------------


def test_vllm_param_names():
    assert vllm_param_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert vllm_param_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert vllm_param_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert vllm_param_name("base_model.model.lm_head.original_module.weight") is None
    assert vllm_param_name("model.norm.weight") == "model.norm.weight"


def test_peft_weights_are_the_merged_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    x = torch.tensor([[1, 5, 9, 4]])
    before = peft_model(input_ids=x).logits
    merged = dict(copy.deepcopy(peft_model).merge_and_unload().named_parameters())
    groups = [[(n, t.clone()) for n, t in group] for group in weight_groups(peft_model)]
    sent = dict(pair for group in groups for pair in group)
    assert sent.keys() == merged.keys()
    assert all(torch.allclose(sent[k], merged[k], atol=1e-6) for k in merged)
    assert not torch.equal(sent["model.layers.0.self_attn.q_proj.weight"],
                           AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.layers[0].self_attn.q_proj.weight)
    assert torch.allclose(peft_model(input_ids=x).logits, before, atol=1e-6)  # the adapter is unmerged again
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


def test_colocate_with_peft_loads_merged_weights(fake_vllm, tiny_model_dir, tokenizer, prompts, tmp_path):
    from peft import LoraConfig

    args = vllm_grpo_args(tmp_path, vllm_mode="colocate", max_steps=2)
    trainer = GRPOTrainer(tiny_model_dir, token_count_reward, args=args, train_dataset=prompts,
                          processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    llm = fake_vllm.LLM.instances[-1]
    trainer.rollout_backend.sync_weights(trainer.model, trainer.state.global_step)
    merged = dict(copy.deepcopy(trainer.model).merge_and_unload().named_parameters())
    engine = dict(llm.hf_model.named_parameters())
    assert all(torch.allclose(engine[k], merged[k], atol=1e-6) for k in merged)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(engine[q], llm.weights_at_generate[0][q])  # the trained adapter is in the engine


# ------------------------------------------------------------------------------------------------
# server mode over real HTTP on localhost (weights in the request bodies: NCCL needs GPUs)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def server(fake_vllm, tiny_model_dir):
    from posttrain.rollout.vllm_server import VLLMServer, build_llm

    srv = VLLMServer(build_llm(str(tiny_model_dir)), host="127.0.0.1", port=0).start()
    yield srv
    srv.stop()


def test_server_generate_and_update_weights(server, fake_vllm, tiny_model_dir, tokenizer):
    from posttrain.rollout.vllm_client import VLLMClient, VLLMServerError

    llm = fake_vllm.LLM.instances[-1]
    assert llm.kwargs["worker_extension_cls"] == "posttrain.rollout.vllm_backend.WeightSyncWorkerExtension"
    client = VLLMClient(base_url=f"http://127.0.0.1:{server.port}", transport="http", connection_timeout=5)
    prompts = [tokenizer("Reverse: a b c")["input_ids"], tokenizer("Reverse: d e")["input_ids"]]
    out = client.generate(prompts, **sampling_params_kwargs(num_return_sequences=3, max_new_tokens=5, seed=1,
                                                            return_logprobs=True))
    assert out["prompt_ids"] == [prompts[0]] * 3 + [prompts[1]] * 3
    assert len(out["completion_ids"]) == 6 and all(1 <= len(c) <= 5 for c in out["completion_ids"])
    assert [len(lp) for lp in out["logprobs"]] == [len(c) for c in out["completion_ids"]]
    assert all(x <= 0 for lp in out["logprobs"] for x in lp)

    model = perturbed_model(tiny_model_dir)
    client.http_chunk_bytes = 20_000  # several requests
    client.update_named_params(model.named_parameters())
    client.reset_prefix_cache()
    assert same_weights(dict(llm.hf_model.named_parameters()), dict(model.named_parameters()))
    assert ("reset_prefix_cache",) in llm.calls
    with pytest.raises(VLLMServerError, match="HTTP 404"):
        client._post("/no_such_endpoint/")
    with pytest.raises(VLLMServerError, match="HTTP 500.*no parameter"):
        client.update_named_params([("model.no_such.weight", torch.zeros(2))])


def test_grpo_with_a_vllm_server(server, fake_vllm, tiny_model_dir, tokenizer, prompts, tmp_path):
    snapshots = PolicySnapshots()
    args = vllm_grpo_args(tmp_path, vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{server.port}",
                          vllm_weight_sync_transport="http", vllm_server_timeout=5)
    model = perturbed_model(tiny_model_dir)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = GRPOTrainer(model, token_count_reward, args=args, train_dataset=prompts, processing_class=tokenizer,
                          callbacks=[snapshots])
    trainer.train()
    seen = fake_vllm.LLM.instances[-1].weights_at_generate
    assert len(seen) == 2
    assert same_weights(seen[0], start) and same_weights(seen[1], snapshots.after_step[0])
    assert not same_weights(seen[1], seen[0])
    assert "sampling/importance_sampling_ratio/mean" in trainer.state.log_history[0]


def test_vllm_serve_command(tiny_model_dir, tmp_path):
    """`posttrain vllm-serve` in its own process (with the stand-in vllm on PYTHONPATH) answers health and
    generate requests."""
    import socket

    from posttrain.rollout.vllm_client import VLLMClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_VLLM), str(Path(__file__).resolve().parents[2])]))
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "vllm-serve", "--model", str(tiny_model_dir),
                             "--host", "127.0.0.1", "--port", str(port), "--log_level", "warning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = VLLMClient(host="127.0.0.1", server_port=port, transport="http", connection_timeout=60,
                            request_timeout=60)
        out = client.generate([[5, 6, 7]], **sampling_params_kwargs(max_new_tokens=3, num_return_sequences=2))
        assert len(out["completion_ids"]) == 2 and out["logprobs"] is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------
# the importance-sampling weights (a pure function)
# ------------------------------------------------------------------------------------------------


def test_sampler_importance_weights():
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    sampler = torch.tensor([[-1.5, -1.0, float("nan")], [-1.0, -3.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token = sampler_importance_weights(trainer, sampler, mask, mode="token_truncate", cap=2.0)
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), 1.0], [1.0, math.exp(2.0), 1.0]])
    assert torch.allclose(token.ratio, expected)
    assert torch.allclose(token.weights, expected.clamp(max=2.0))
    masked = sampler_importance_weights(trainer, sampler, mask, mode="token_mask", cap=2.0)
    assert torch.allclose(masked.weights, torch.where(expected > 2.0, 0.0, expected))
    seq = sampler_importance_weights(trainer, sampler, mask, mode="sequence_truncate", cap=2.0)
    assert seq.weights.shape == (2, 1)
    assert torch.allclose(seq.ratio, torch.tensor([[math.exp(-0.5)], [math.exp(2.0)]]))
    assert torch.allclose(seq.weights, torch.tensor([[math.exp(-0.5)], [2.0]]))
    seq_mask = sampler_importance_weights(trainer, sampler, mask, mode="sequence_mask", cap=2.0)
    assert torch.allclose(seq_mask.weights, torch.tensor([[math.exp(-0.5)], [0.0]]))
    with pytest.raises(ValueError, match="mode"):
        sampler_importance_weights(trainer, sampler, mask, mode="tokens")


def test_multi_turn_rollouts_through_vllm(fake_vllm, tiny_model_dir, tokenizer, tmp_path):
    """An episodic environment's turns are all sampled by the vLLM backend (colocate); the sampler's log-probs come
    back for the sampled tokens only, laid out like the trainer's, and equal them (the stand-in samples with the
    same weights): the inserted tokens are masked on both sides."""
    from agent_helpers import eos_prone
    from datasets import Dataset

    from posttrain.kit.agents import GuessNumberEnv, guess_prompt_rows

    path = tmp_path / "eos-prone"
    eos_prone(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    args = vllm_grpo_args(tmp_path, vllm_mode="colocate", max_completion_length=40, max_prompt_length=None,
                          max_tool_calling_iterations=3)
    trainer = GRPOTrainer(str(path), args=args, train_dataset=Dataset.from_list(guess_prompt_rows(8, seed=4)),
                          processing_class=tokenizer, environment_factory=lambda: GuessNumberEnv(8, 4))
    trainer.model.eval()
    torch.manual_seed(0)
    batch = trainer.generate_and_score([trainer.train_dataset[i] for i in range(2) for _ in range(4)], 1)[0]
    assert max(e.turns for e in trainer.agent.last_episodes) >= 2
    logps, mask, _ = trainer.token_logps(trainer.model, batch)
    assert batch["sampling_logps"].shape == logps.shape
    torch.testing.assert_close(batch["sampling_logps"][mask.bool()], logps[mask.bool()], atol=1e-3, rtol=1e-3)
