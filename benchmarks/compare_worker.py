"""One side-by-side run: a posttrain or TRL trainer on a saved model folder and a JSON-lines data file.

    <python> benchmarks/compare_worker.py '{"lib": "trl", "scenario": "dpo", "mode": "check", ...}'

Runs under either library's virtual environment and imports only that library (``lib="trl"`` never imports
posttrain), so the peer runs from its own install. Prints one JSON line: per-step losses and metrics, the tokens
and pairs per second of the timed steps, peak RSS, wall times, the machine load, and a fingerprint of the first
batch (so two runs can be shown to have trained on the same tokens).

``mode``:

* ``check``   -- correctness: fp32, no gradient checkpointing, learning rate 0, sequential data order.
* ``default`` -- what a new user gets: each library's own config defaults; only the shared hyperparameters
  (batch size, max_length, learning rate, steps, seed) are set.
* ``best``    -- each library at its best on this machine: bf16 autocast (this CPU runs bf16 natively; fp32 where
  torch reports no native bf16), no gradient checkpointing, plus the scenario's ``best`` options (e.g. packing for
  SFT, precomputed reference log-probs for DPO and KTO, as issue 8 lists them); see ``SCENARIOS`` below. (Until 2026-11-24
  "best" meant fp32; bf16 measured 1.67x faster here. Precomputing runs the reference over the whole dataset
  before step 1 in both libraries, outside the timed steps.)

Token counting is the harness's own and identical for both libraries: the real (non-padding) tokens of the
examples each batch was collated from, summed over the timed steps (steps ``warmup_steps + 1`` .. ``steps``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Mapping

T0 = time.perf_counter()

@dataclasses.dataclass(frozen=True)
class Scenario:
    """What the harness needs to know of a Trainer-based scenario; the branches below read these fields.

    ``best``: options that make each library fastest on a CPU machine (both libraries support all of them);
    ``head``: the model class (``causal`` LM, ``sequence`` or ``token`` classification);
    ``sampling``: ``None`` for offline trainers, ``"group"`` (GRPO, RLOO: ``batch_size`` counts completions,
    ``num_generations`` per prompt), ``"pairwise"`` (Online DPO, XPO, Nash-MD: ``batch_size`` counts prompts, two
    completions each) or ``"rollout"`` (PPO: one completion a prompt, its own step accounting);
    ``reference``: takes ``ref_model``; ``reward_funcs``: gets the harness's ``length_reward``."""

    trainer: str
    config: str
    best: Mapping = dataclasses.field(default_factory=dict)
    head: str = "causal"
    sampling: str | None = None
    reference: bool = False
    reward_funcs: bool = False


SCENARIOS = {
    "sft": Scenario("SFTTrainer", "SFTConfig", best={"packing": True}),
    "dpo": Scenario("DPOTrainer", "DPOConfig", best={"precompute_ref_log_probs": True}, reference=True),
    "kto": Scenario("KTOTrainer", "KTOConfig", best={"precompute_ref_log_probs": True}, reference=True),
    "bco": Scenario("BCOTrainer", "BCOConfig", reference=True),
    "reward": Scenario("RewardTrainer", "RewardConfig", head="sequence"),
    "prm": Scenario("PRMTrainer", "PRMConfig", head="token"),
    "grpo": Scenario("GRPOTrainer", "GRPOConfig", sampling="group", reward_funcs=True),
    "rloo": Scenario("RLOOTrainer", "RLOOConfig", sampling="group", reward_funcs=True),
    "ppo": Scenario("PPOTrainer", "PPOConfig", sampling="rollout", reference=True),
    "online_dpo": Scenario("OnlineDPOTrainer", "OnlineDPOConfig", sampling="pairwise", reference=True,
                           reward_funcs=True),
    "xpo": Scenario("XPOTrainer", "XPOConfig", sampling="pairwise", reference=True),
    "nash_md": Scenario("NashMDTrainer", "NashMDConfig", sampling="pairwise", reference=True),
    "cpo": Scenario("CPOTrainer", "CPOConfig"),
    "orpo": Scenario("ORPOTrainer", "ORPOConfig"),
    "gkd": Scenario("GKDTrainer", "GKDConfig"),
}
PAIRWISE = tuple(n for n, sc in SCENARIOS.items() if sc.sampling == "pairwise")
ONLINE = tuple(n for n, sc in SCENARIOS.items() if sc.sampling)  # they sample: completions/s, a reward or judge


def length_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """The reward of the online speed scenarios: cheap, deterministic and identical in both libraries (the harness's own
    code): the completion's length in characters / 100. Accepts both libraries' calling conventions (keyword
    ``prompts``/``completions``, standard text or conversational messages)."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else c
        out.append(len(text) / 100.0)
    return out


def load_tokenizer(path: str):
    """The model folder's tokenizer. The folders are written by transformers 5 (posttrain's venv); transformers 4 (the
    ``trl==0.21.0`` peer venv) cannot read their ``tokenizer_config.json`` (``tokenizer_class: TokenizersBackend``,
    ``extra_special_tokens`` as a list), so there the same ``tokenizer.json``, special tokens and chat template are
    loaded into a ``PreTrainedTokenizerFast`` (token ids identical: checked by the first-batch fingerprints)."""
    import transformers
    from transformers import AutoTokenizer

    if int(transformers.__version__.split(".")[0]) >= 5:
        return AutoTokenizer.from_pretrained(path)
    from transformers import PreTrainedTokenizerFast

    with open(os.path.join(path, "tokenizer_config.json")) as f:
        conf = json.load(f)
    extra = conf.get("extra_special_tokens") or []
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(path, "tokenizer.json"),
        additional_special_tokens=list(extra.values() if isinstance(extra, dict) else extra),
        **{k: conf[k] for k in ("eos_token", "pad_token", "bos_token", "unk_token", "padding_side", "model_max_length",
                                "clean_up_tokenization_spaces") if conf.get(k) is not None})
    template = os.path.join(path, "chat_template.jinja")
    if os.path.exists(template):
        with open(template) as f:
            tok.chat_template = f.read()
    return tok


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _malloc_mb() -> str:
    """glibc's view of the heap: bytes in use, free but kept in the heap, and in mmapped chunks (mallinfo2)."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info
        i = libc.mallinfo2()
    except (OSError, AttributeError):
        return "malloc: n/a"
    mb = 2**20
    return f"malloc in use {i.uordblks / mb:.0f} MB, free in heap {i.fordblks / mb:.0f} MB, mmapped {i.hblkhd / mb:.0f} MB"


class PeakTracer:
    """Where a step's resident-memory peak happens (``COMPARE_TRACE_PEAK=1``): a thread samples RSS every millisecond
    and the model's blocks (embedding, each decoder layer, final norm, output head) and the optimizer label the samples
    with the phase running then (``fwd layers.3``, ``bwd embed_tokens``, ``optimizer``). After each step it prints the
    RSS at the step's start, the peak and its phase, and the highest RSS of every phase, on stderr."""

    def __init__(self, model, optimizer_holder):
        import threading

        self.phase, self.samples, self.running = "step", [], True
        self.step, self.start_rss = 0, 0.0  # the step being sampled (0: none yet) and its starting RSS
        base = getattr(model, "base_model", model)
        inner = getattr(base, "model", base)
        inner = getattr(inner, "model", inner) if not hasattr(inner, "layers") else inner
        blocks = [("embed_tokens", getattr(inner, "embed_tokens", None)), ("norm", getattr(inner, "norm", None)),
                  ("lm_head", getattr(base, "lm_head", None) or getattr(model, "lm_head", None))]
        blocks += [(f"layers.{i}", layer) for i, layer in enumerate(getattr(inner, "layers", []))]
        for name, module in blocks:
            if module is None:
                continue
            module.register_forward_pre_hook(lambda m, a, n=name: self.set(f"fwd {n}"))
            module.register_full_backward_pre_hook(lambda m, g, n=name: self.set(f"bwd {n}"))
        self.optimizer_holder = optimizer_holder
        self.hooked = False
        threading.Thread(target=self.sample, daemon=True).start()

    def set(self, phase: str) -> None:
        self.phase = phase

    def sample(self) -> None:
        while self.running:
            self.samples.append((_rss_now_mb(), self.phase))
            time.sleep(0.001)

    def begin(self) -> None:
        """Start a step: report the previous one (its training_step, then the optimizer step that followed it)."""
        self.report()
        opt = getattr(self.optimizer_holder, "optimizer", None)
        if opt is not None and not self.hooked:
            opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
            opt.register_step_pre_hook(lambda *a: self.set("optimizer"))
            opt.register_step_post_hook(lambda *a: self.set("after optimizer"))
            self.hooked = True
        self.samples = []
        self.set("step")
        self.start_rss = _rss_now_mb()
        self.step += 1

    def report(self) -> None:
        samples = list(self.samples)
        if not samples or not self.step:
            return
        peaks: dict[str, float] = {}
        for rss, phase in samples:
            peaks[phase] = max(peaks.get(phase, 0.0), rss)
        rss, phase = max(samples)
        top = sorted(peaks.items(), key=lambda kv: -kv[1])[:8]
        print(f"step {self.step} (peak tracer): start {self.start_rss:.0f} MB, peak {rss:.0f} MB in '{phase}'; by phase: "
              + ", ".join(f"{p} {v:.0f}" for p, v in top), file=sys.stderr, flush=True)


def cpu_snapshot() -> tuple[float, float]:
    """(seconds of CPU the whole machine has been busy, seconds of CPU this process has used), from /proc/stat."""
    busy = 0.0
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return busy, t.user + t.system


def other_cpu_cores(start: tuple[float, float], stop: tuple[float, float], seconds: float) -> float:
    """Average number of CPU cores that *other* processes kept busy between two snapshots."""
    return max(0.0, (stop[0] - start[0]) - (stop[1] - start[1])) / max(seconds, 1e-9)


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def example_sequences(ex: dict, with_kl: bool = True) -> list[list[int]]:
    """The full token sequences one collated example stands for, from either library's column names.

    SFT: ``input_ids`` (a packed row is one sequence of its concatenated parts). Paired preference rows:
    ``prompt + chosen`` and ``prompt + rejected`` (posttrain: ``*_input_ids``; TRL: ``*_ids``).
    """
    def get(*names):
        for n in names:
            if n in ex and ex[n] is not None:
                return list(ex[n])
        return None

    completion = get("completion_input_ids", "completion_ids")
    if completion is not None:  # unpaired (KTO): the row and, when the example carries it, its mismatched KL row
        prompt = get("prompt_input_ids", "prompt_ids") or []
        if prompt and completion[: len(prompt)] == prompt:  # TRL 0.21 BCO: completion_input_ids include the prompt
            prompt = []
        kl = get("kl_completion_input_ids", "KL_completion_ids")
        return [prompt + completion] + ([prompt + kl] if kl is not None and with_kl else [])
    chosen = get("chosen_input_ids", "chosen_ids")
    if chosen is not None:
        rejected = get("rejected_input_ids", "rejected_ids")
        prompt = get("prompt_input_ids", "prompt_ids") or []
        if prompt and chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
            prompt = []  # TRL's CPO/ORPO: chosen_input_ids / rejected_input_ids are the whole sequences
        return [prompt + chosen, prompt + rejected]
    ids = get("input_ids")
    return [ids] if ids is not None else []


def fingerprint(seqs: list[list[int]]) -> str:
    return hashlib.sha1(json.dumps(seqs).encode()).hexdigest()[:12]


class BatchRecorder:
    """Wraps a data collator: records, per batch and in order, the real tokens and the sequences it was built from."""

    def __init__(self, collator, kl_shift: bool = False):
        self.collator = collator
        self.tokens: list[int] = []
        self.first: list[list[int]] | None = None
        self.kl_shift = kl_shift

    def __call__(self, examples):
        if self.kl_shift:  # posttrain KTO: give row i the completion of row i-1 (TRL's pairing) as its fixed KL row
            comps = [ex["completion_input_ids"] for ex in examples]
            examples = [dict(ex, kl_completion_input_ids=c) for ex, c in zip(examples, comps[-1:] + comps[:-1])]
        seqs = [s for ex in examples for s in example_sequences(ex)]
        # counted: the trained rows (not KTO's KL rows, which only one library carries in its examples)
        tokens = sum(len(s) for ex in examples for s in example_sequences(ex, with_kl=False))
        batch = self.collator(examples)
        if not seqs and isinstance(batch, Mapping) and "attention_mask" in batch:
            # untokenized examples (TRL's GKD and both libraries' vision collators tokenize in the collator): the
            # collated rows' attended tokens (vision: image tokens included; a BatchFeature is a Mapping, not a dict)
            seqs = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
            tokens = sum(len(s) for s in seqs)
        self.tokens.append(tokens)
        if self.first is None:
            self.first = seqs
        return batch

    def __getattr__(self, name):  # trainers read attributes of their collator (e.g. posttrain's `flatten`)
        return getattr(self.collator, name)


def grpo_loss_check(cfg: dict, L, torch) -> dict:
    """GRPO's first-step loss on identical *fixed* completions, through each library's own ``compute_loss``.

    Neither library takes completions from outside its sampler, but both split a step into "generate and score"
    (which produces the training inputs) and ``compute_loss(model, inputs)``. This builds those inputs from the same
    token ids in each library's own layout (TRL: left-padded prompt + right-padded completion tensors; posttrain:
    right-padded prompt+completion rows with a completion mask), with the same advantages and the same reference
    log-probs (computed here by the harness, identical code in both venvs), and calls ``compute_loss`` once in train
    mode (on-policy: ``num_iterations=1``, no old log-probs), then backward. Returns the loss, the gradient norm and the
    metrics the call recorded.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(cfg["ref_model"], dtype=torch.float32)
    rows = _read_jsonl(cfg["data"])
    G, B = cfg["num_generations"], cfg["batch_size"]
    prompts = [list(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False))
               for r in rows[: B // G] for _ in range(G)]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, cfg["max_completion_length"] + 1, (B,), generator=gen).tolist()
    comps = [torch.randint(5, tok.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    comps[0][-1] = tok.eos_token_id
    rewards = torch.tensor([len(c) / 10.0 for c in comps]).view(-1, G)
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).view(-1)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    Tc = max(lengths)
    cids = torch.tensor([c + [pad] * (Tc - len(c)) for c in comps])
    cmask = torch.tensor([[1] * len(c) + [0] * (Tc - len(c)) for c in comps])
    Tp = max(len(p) for p in prompts)
    pids = torch.tensor([[pad] * (Tp - len(p)) + p for p in prompts])
    pmask = torch.tensor([[0] * (Tp - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():  # reference log-probs of the completion tokens (harness code)
        logits = ref(input_ids=torch.cat([pids, cids], 1), attention_mask=torch.cat([pmask, cmask], 1)).logits
        logits = logits[:, Tp - 1:-1].float() / cfg["overrides"].get("temperature", 1.0)
        ref_logps = torch.log_softmax(logits, -1).gather(-1, cids.unsqueeze(-1)).squeeze(-1) * cmask
    n_tokens = cmask.sum().float()

    args = L.GRPOConfig(output_dir=f"/tmp/posttrain-compare-{cfg['lib']}-grpo-loss-{os.getpid()}", report_to=[],
                        per_device_train_batch_size=B, num_generations=G, max_completion_length=cfg["max_completion_length"],
                        bf16=False, gradient_checkpointing=False, learning_rate=0.0, max_steps=1, save_strategy="no",
                        **({"use_cpu": True} if cfg["lib"] == "trl" and not torch.cuda.is_available() else {}),
                        **cfg["overrides"])
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in rows[:16]])
    trainer = L.GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=data, processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    if cfg["lib"] == "trl":
        inputs = {"prompt_ids": pids, "prompt_mask": pmask, "completion_ids": cids, "completion_mask": cmask,
                  "advantages": advantages, "old_per_token_logps": None, "num_items_in_batch": n_tokens}
        if args.beta != 0.0:
            inputs["ref_per_token_logps"] = ref_logps
    else:
        from posttrain.data.preference import build_rows

        inputs = dict(build_rows(prompts, comps, pad_token_id=pad), advantages=advantages, num_items_in_batch=n_tokens,
                      truncated=torch.zeros(B, dtype=torch.bool))
        if args.beta != 0.0:
            inputs["ref_logps"] = ref_logps
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainer.model.parameters() if p.grad is not None))
    metrics = {k: float(v[-1]) for k, v in trainer._metrics["train"].items() if v}
    first = dict(metrics, loss=float(loss), grad_norm=float(grad_norm))
    import importlib.metadata as md

    return {"lib": cfg["lib"], "scenario": "grpo", "mode": "loss_check", "losses": [float(loss)], "first_log": first,
            "first_batch": fingerprint([p + c for p, c in zip(prompts, comps)]),
            "versions": {p: md.version(p) for p in ("torch", "transformers", cfg["lib"])},
            "completion_tokens": int(n_tokens), "config": {k: getattr(args, k, None) for k in
                                                            ("loss_type", "beta", "epsilon", "epsilon_high", "temperature",
                                                             "importance_sampling_level", "scale_rewards")}}


def trainer_classes(L, lib: str, scenario: str):
    """(trainer class, config class) of ``scenario`` in library module ``L``. TRL 1.x ships Online DPO, CPO, ORPO and
    GKD only under ``trl.experimental.<trainer>``."""
    names = (SCENARIOS[scenario].trainer, SCENARIOS[scenario].config)
    if lib == "trl" and not hasattr(L, names[0]):
        import importlib

        L = importlib.import_module(f"trl.experimental.{scenario}")
    return tuple(getattr(L, n) for n in names)


def completions_per_step(scenario: str, batch_size: int) -> int:
    """Completions sampled per training step: ``batch_size`` counts completions (GRPO, RLOO), prompts with two
    completions each (Online DPO, XPO, Nash-MD: policy + policy, reference or mixture) or prompts (PPO)."""
    return 2 * batch_size if SCENARIOS[scenario].sampling == "pairwise" else batch_size


def force_completion_length(trainer, lib: str, scenario: str, n: int) -> None:
    """Make every sampled completion exactly ``n`` tokens long (``min_new_tokens``), so that completions/s compare
    equal work. posttrain and TRL 1.x take ``generation_kwargs`` (set by compare.py); TRL 0.21's pairwise trainers keep
    a ``generation_config`` and its PPO builds one inside ``train``, so those are patched here."""
    if lib != "trl" or scenario not in PAIRWISE + ("ppo",):
        return
    if scenario == "ppo":
        import trl.trainer.ppo_trainer as ppo
        from transformers import GenerationConfig

        class ForcedLength(GenerationConfig):
            def __init__(self, **kwargs):
                super().__init__(**dict(kwargs, min_new_tokens=n))

        ppo.GenerationConfig = ForcedLength
    elif getattr(trainer, "generation_config", None) is not None and not getattr(trainer.args, "generation_kwargs", None):
        trainer.generation_config.min_new_tokens = n


def shared_training_kwargs(cfg: dict, lib: str, name: str, mode: str, torch, best: dict | None = None) -> dict:
    """The config fields both libraries get for a Trainer-based scenario (``name`` in the output folder), with
    ``mode``'s changes: ``check`` fp32 without checkpointing at learning rate 0, ``best`` bf16 where native, without
    checkpointing, plus the scenario's ``best`` options."""
    kwargs = dict(output_dir=cfg.get("output_dir", f"/tmp/posttrain-compare-{lib}-{name}-{os.getpid()}"),
                  max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch_size"], logging_steps=1, report_to=[],
                  save_strategy="no", disable_tqdm=True, seed=cfg.get("seed", 0), max_length=cfg["max_length"],
                  learning_rate=cfg.get("learning_rate", 1e-5), dataloader_num_workers=0)
    if lib == "trl" and not torch.cuda.is_available():
        # TRL's bf16 default (on unless fp16) makes TrainingArguments refuse to start on a machine without a GPU unless
        # use_cpu=True is given; posttrain sets it by itself. The least a TRL user must add to run on CPU.
        kwargs["use_cpu"] = True
    if mode == "check":
        kwargs.update(bf16=False, gradient_checkpointing=False, learning_rate=0.0)
    if mode == "best":
        native_bf16 = torch.cuda.is_available() or (torch.cpu._is_avx512_bf16_supported()
                                                     or torch.cpu._is_amx_tile_supported())
        kwargs.update(bf16=native_bf16, gradient_checkpointing=False, **(best or {}))
    return kwargs


def build_trainer(cfg: dict, L, lib: str, scenario: str, mode: str, torch, fixed=None):
    """The library's trainer for ``scenario`` with the shared settings (``cfg['overrides']``) and the per-library
    arguments each trainer needs (model heads, reference, reward, judge, value model, PPO's step accounting)."""
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    sc = SCENARIOS[scenario]
    trainer_cls, config_cls = trainer_classes(L, lib, scenario)
    auto = {"causal": AutoModelForCausalLM, "sequence": AutoModelForSequenceClassification,
            "token": AutoModelForTokenClassification}[sc.head]
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    if cfg.get("vision"):  # SFT on a vision-language model: the model folder's processor, the parquet rows with images
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(cfg["model"])
        model = AutoModelForImageTextToText.from_pretrained(cfg["model"], dtype=dtype)
        data = Dataset.from_parquet(cfg["data"])
        # no packing in "best": neither library packs image rows
        kwargs = shared_training_kwargs(cfg, lib, f"{scenario}-vlm", mode, torch)
        overrides = dict(cfg.get("overrides", {}))
        lib_overrides = overrides.pop(lib, {})
        overrides.pop("posttrain" if lib == "trl" else "trl", None)
        kwargs.update(overrides)
        kwargs.update(lib_overrides)
        return trainer_cls(model=model, args=config_cls(**kwargs), train_dataset=data, processing_class=processor)
    tokenizer = load_tokenizer(cfg["model"])
    model = auto.from_pretrained(cfg["model"], dtype=dtype)
    rows = _read_jsonl(cfg["data"])
    if cfg.get("num_prompts"):  # the fixed-completion checks: exactly one step's prompts
        rows = rows[: cfg["num_prompts"]]
    if scenario == "bco" and lib == "posttrain" and cfg.get("bco_tokens") == "trl":
        # TRL 0.21's BCO appends EOS to the chat template's completion, which already ends with the end-of-turn token
        # (EOS): give posttrain those tokens (pre-tokenized rows pass through its data preparation)
        def tokens(r):
            prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False)
            assert full[: len(prompt)] == prompt
            return {"prompt_input_ids": prompt, "completion_input_ids": full[len(prompt):] + [tokenizer.eos_token_id],
                    "label": r["label"]}

        rows = [tokens(r) for r in rows]
    if scenario in ("cpo", "orpo") and lib == "posttrain" and cfg.get("pref_tokens") == "trl":
        # TRL 1.16's CPO and ORPO (trl.experimental) also append EOS to each chat-template answer, which ends with the
        # end-of-turn token (EOS) and a newline: give posttrain those tokens (pre-tokenized rows)
        def pair_tokens(r):
            prompt = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            out = {"prompt_input_ids": prompt}
            for side in ("chosen", "rejected"):
                full = tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=False)
                assert full[: len(prompt)] == prompt
                answer = full[len(prompt):]
                out[f"{side}_input_ids"] = answer + ([tokenizer.eos_token_id] if answer[-1] != tokenizer.eos_token_id else [])
            return out

        rows = [pair_tokens(r) for r in rows]
    overrides = dict(cfg.get("overrides", {}))
    lib_overrides = overrides.pop(lib, {})  # e.g. {"trl": {"use_bias_correction_kl": False}}
    overrides.pop("posttrain" if lib == "trl" else "trl", None)

    kwargs = shared_training_kwargs(cfg, lib, scenario, mode, torch, best=sc.best)
    if sc.sampling in ("group", "rollout"):
        del kwargs["max_length"]  # GRPO, RLOO, PPO: completion budgets only (shared overrides)
    if fixed is not None and "shuffle_dataset" in {f.name for f in dataclasses.fields(config_cls)}:
        kwargs["shuffle_dataset"] = False
    kwargs.update(overrides)
    kwargs.update(lib_overrides)
    if lib == "trl" and cfg.get("peer_version", "").startswith("0.") and scenario == "online_dpo":
        # TRL 0.21's OnlineDPOConfig has no generation_kwargs: its generation_config gets min_new_tokens instead
        # (force_completion_length)
        kwargs.pop("generation_kwargs", None)
    extra: dict = {}
    if sc.sampling == "rollout":
        # one step = one rollout: TRL 0.21 counts rollouts (total_episodes completions), posttrain optimizer steps
        # (num_ppo_epochs x num_mini_batches per rollout)
        per_rollout = kwargs.get("num_ppo_epochs", 4) * kwargs.get("num_mini_batches", 1)
        if lib == "trl":
            kwargs["total_episodes"] = cfg["steps"] * cfg["batch_size"]
            kwargs["num_sample_generations"] = 0  # else it samples from an evaluation set during training
            del kwargs["max_steps"]
        else:
            kwargs["max_steps"] = cfg["steps"] * per_rollout
        cfg["_step_scale"] = 1 if lib == "trl" else per_rollout
    args = config_cls(**kwargs)

    if cfg.get("ref_model") and sc.reference:
        extra["ref_model"] = AutoModelForCausalLM.from_pretrained(cfg["ref_model"], dtype=dtype)
    if scenario == "gkd":  # the teacher: the second kit model (seed 1)
        extra["teacher_model"] = AutoModelForCausalLM.from_pretrained(cfg["ref_model"], dtype=dtype)
    # TRL 0.21's pairwise trainers take a judge or a reward model, no reward functions: both libraries get the judge
    judged = sc.sampling == "pairwise" and (not sc.reward_funcs or cfg.get("peer_version", "").startswith("0."))
    if sc.reward_funcs and not judged:
        extra["reward_funcs"] = [length_reward]
    if judged:
        from benchmarks.compare_online import LengthJudge

        extra["judge"] = LengthJudge()
    if sc.sampling == "rollout":
        value = AutoModelForSequenceClassification.from_pretrained(cfg["value_model"], dtype=dtype)
        if fixed is not None:  # the check: the same harness score in both (see compare_online)
            reward = fixed.trl_reward_model() if lib == "trl" else None
            if lib == "posttrain":
                extra["reward_funcs"] = [fixed.posttrain_reward()]
        else:
            reward = AutoModelForSequenceClassification.from_pretrained(cfg["value_model"], dtype=dtype) if lib == "trl" \
                else cfg["value_model"]
        if lib == "trl":
            # TRL 0.21's PPO takes tokenized prompts ("input_ids") and pads them with the tokenizer's padding side,
            # which must be "left" for generation (as in TRL's PPO examples)
            tokenizer.padding_side = "left"
            rows = [{"input_ids": tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)}
                    for r in rows]
            extra.setdefault("ref_model", None)  # required by TRL 0.21 (None: a copy of the policy)
            return trainer_cls(args=args, processing_class=tokenizer, model=model, reward_model=reward,
                               value_model=value, train_dataset=Dataset.from_list(rows), **extra)
        if reward is not None:
            # by path: posttrain's PPOTrainer takes no reward_processing_classes, and a reward model *object* then has
            # no tokenizer at the first scoring (archive/NOTES.md, "PPO"); a path loads the model folder's own tokenizer
            extra["reward_model"] = cfg["value_model"]
        return trainer_cls(args=args, processing_class=tokenizer, model=model, value_model=value,
                           train_dataset=Dataset.from_list(rows), **extra)
    return trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, **extra)


# -- diffusion (DDPO, AlignProp): their own loop, no transformers Trainer -------------------------------------------

DIFFUSION = ("ddpo", "alignprop")
DIFFUSION_PROMPTS = ("a red square", "a green field", "a blue sky at noon", "a yellow sun")
TARGET_COLOR = (0.9, 0.2, 0.1)  # the reward's colour (RGB in [0, 1])


class CyclePrompts:
    """The prompt function of the diffusion scenarios: the same fixed prompts in the same order in both libraries
    (``prompt_function() -> (prompt, metadata)``)."""

    def __init__(self):
        self.i = 0

    def __call__(self):
        p = DIFFUSION_PROMPTS[self.i % len(DIFFUSION_PROMPTS)]
        self.i += 1
        return p, {}


def color_reward(images, prompts=None, metadata=None):
    """The reward of the diffusion scenarios, identical (harness code) and differentiable in both libraries: minus the
    mean squared distance of the image's pixels ((N, 3, H, W) in [0, 1]) to ``TARGET_COLOR``."""
    import torch

    target = torch.tensor(TARGET_COLOR, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return -((images.float() - target) ** 2).mean(dim=(1, 2, 3)), {}


def _floats(d: dict) -> dict:
    """The scalar entries of a logged dict as floats (tensors, numpy scalars; arrays such as TRL's ``reward`` dropped)."""
    out = {}
    for k, v in d.items():
        try:
            if hasattr(v, "numel") and v.numel() != 1:
                continue
            if hasattr(v, "size") and not hasattr(v, "numel") and getattr(v, "size", 1) != 1:
                continue
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def clip_text_encoder_v4(path: str):
    """The folder's CLIP text encoder for transformers 4 (TRL 0.21's venv).

    transformers 5 saves ``CLIPTextModel``'s weights without the ``text_model.`` prefix that transformers 4 expects;
    loaded by name, transformers 4 would initialise a fresh random text encoder (with a warning only), so TRL would
    sample from other prompt embeddings than posttrain. Loaded strictly here, with the prefix put back."""
    import transformers
    from safetensors.torch import load_file

    model = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(path))
    weights = load_file(os.path.join(path, "model.safetensors"))
    model.load_state_dict({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in weights.items()},
                          strict=True)
    return model.eval()


def diffusion_run(cfg: dict, L, torch) -> dict:
    """One DDPO or AlignProp run: both libraries' trainers on the same pipeline folder, prompts, reward and config.

    One "step" is one epoch of the trainers' own loop (``trainer.step(epoch, global_step)``): DDPO samples
    ``batch_size`` images (one sampling batch) and trains on every recorded transition of them (one optimizer step,
    gradients accumulated over the denoising steps); AlignProp samples ``batch_size`` images with gradients through the
    last denoising steps and takes one optimizer step. The epochs after the first (warm-up) are timed; samples/s are
    images per second, "tokens"/s denoising transitions (images x sample_num_steps) per second."""
    import dataclasses
    import importlib.metadata as md

    lib, scenario, mode = cfg["lib"], cfg["scenario"], cfg["mode"]
    overrides = dict(cfg.get("overrides", {}))
    lib_overrides = overrides.pop(lib, {})
    overrides.pop("posttrain" if lib == "trl" else "trl", None)
    overrides.update(lib_overrides)
    use_lora = overrides.pop("use_lora", True)
    config_cls = getattr(L, "DDPOConfig" if scenario == "ddpo" else "AlignPropConfig")
    trainer_cls = getattr(L, "DDPOTrainer" if scenario == "ddpo" else "AlignPropTrainer")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    steps = cfg["steps"]
    warmup = min(max(cfg.get("warmup_steps", 1), 1), steps - 1) if steps > 1 else 0
    B = cfg["batch_size"]
    if mode == "check":
        precision = "no"
    elif mode == "best":
        native_bf16 = torch.cuda.is_available() or (torch.cpu._is_avx512_bf16_supported()
                                                     or torch.cpu._is_amx_tile_supported())
        precision = "bf16" if native_bf16 else "no"
    else:  # TRL's default (fp16) cannot run on a CPU; posttrain's is bf16 where native: both fp32 ("no")
        precision = "no"
    kwargs = dict(num_epochs=steps, seed=cfg.get("seed", 0), mixed_precision=precision, train_batch_size=B,
                  save_freq=10**9,  # no checkpoints inside the run (TRL saves the accelerator state every save_freq epochs)
                  project_kwargs={"project_dir": f"/tmp/posttrain-compare-{lib}-{scenario}-{os.getpid()}"})
    if mode == "check" or "learning_rate" in cfg:  # else each trainer's default (the same in both: 3e-4, AlignProp 1e-3)
        kwargs["train_learning_rate"] = 0.0 if mode == "check" else cfg["learning_rate"]
    if scenario == "ddpo":
        kwargs.update(sample_batch_size=B, sample_num_batches_per_epoch=1)
    if "output_dir" in fields:
        kwargs["output_dir"] = kwargs["project_kwargs"]["project_dir"]
    kwargs.update(overrides)
    dropped = sorted(k for k in kwargs if k not in fields)
    config = config_cls(**{k: v for k, v in kwargs.items() if k in fields})
    init_start = time.perf_counter()  # pipeline loading included (posttrain loads the folder in its constructor)
    if lib == "trl":
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            # the folder's tokenizer was saved by transformers 5 (class TokenizersBackend), which transformers 4 (TRL 0.21's
            # venv) cannot load by name: the pipeline gets the same tokenizer loaded as in load_tokenizer
            import trl.models.modeling_sd_base as sd_base

            if not hasattr(transformers, "TokenizersBackend"):  # diffusers checks a passed component against that name
                transformers.TokenizersBackend = transformers.PreTrainedTokenizerFast

            pipeline_cls = sd_base.StableDiffusionPipeline

            class FolderPipeline:
                @staticmethod
                def from_pretrained(path, **kw):
                    kw.setdefault("tokenizer", load_tokenizer(os.path.join(path, "tokenizer")))
                    kw.setdefault("text_encoder", clip_text_encoder_v4(os.path.join(path, "text_encoder")))
                    return pipeline_cls.from_pretrained(path, **kw)

            sd_base.StableDiffusionPipeline = FolderPipeline
        pipeline = L.DefaultDDPOStableDiffusionPipeline(cfg["model"], use_lora=use_lora)
    else:
        config.use_lora = use_lora
        pipeline = cfg["model"]
    trainer = trainer_cls(config, color_reward, CyclePrompts(), pipeline)
    init_s = time.perf_counter() - init_start

    logs: dict[int, dict] = {}
    if lib == "trl":  # TRL 0.21 logs only through accelerate's trackers: record what it logs
        log = trainer.accelerator.log

        def recording_log(values, step=None, **kw):
            logs.setdefault(step, {}).update(_floats(values))
            return log(values, step=step, **kw)

        trainer.accelerator.log = recording_log
    marks: list[tuple[float, tuple[float, float]]] = []
    step_fn = trainer.step

    def timed_step(epoch, global_step):
        if epoch == warmup:
            marks.append((time.perf_counter(), cpu_snapshot()))
        out = step_fn(epoch, global_step)
        if epoch == steps - 1:
            marks.append((time.perf_counter(), cpu_snapshot()))
        return out

    trainer.step = timed_step
    if mode == "check" and scenario == "ddpo":
        from benchmarks.compare_diffusion import install_fixed_chain

        install_fixed_chain(trainer, lib, cfg)
    if mode == "check" and scenario == "alignprop":
        from benchmarks.compare_diffusion import install_shared_noise

        install_shared_noise(trainer, cfg)
    train_start = time.perf_counter()
    trainer.train(epochs=steps)
    train_s = time.perf_counter() - train_start
    if lib == "posttrain":
        for h in trainer.log_history:
            logs.setdefault(int(h["step"]), {}).update({k: float(v) for k, v in h.items() if k != "step"})
    rows = [dict(logs[k], step=k) for k in sorted(k for k in logs if k is not None) if "loss" in logs[k]]
    if scenario == "alignprop" and lib == "trl":
        for h in rows:  # TRL logs 10 - mean(reward), posttrain -mean(reward): the same objective up to the constant
            h["loss (as logged)"] = h["loss"]
            h["loss"] = h["loss"] - 10.0
    for h, norm in zip(rows, getattr(trainer, "_grad_norms", [])):  # check mode (compare_diffusion.install_shared_noise)
        h["grad_norm"] = norm
    if hasattr(trainer, "_noise_shapes"):
        trainer._fixed_chain_fingerprint = fingerprint(trainer._noise_shapes)
    (t0, c0), (t1, c1) = marks[0], marks[-1]
    timed = t1 - t0
    images = B * (steps - warmup)
    transitions = images * config.sample_num_steps
    versions = {}
    for p in ("torch", "transformers", "accelerate", "diffusers", "peft", lib):
        try:
            versions[p] = md.version(p)
        except Exception:  # noqa: BLE001
            pass
    fixed = getattr(trainer, "_fixed_chain_fingerprint", None)
    return {
        "lib": lib, "scenario": scenario, "mode": mode, "versions": versions,
        "losses": [h["loss"] for h in rows],
        "completion_lengths": None,
        "first_log": rows[0] if rows else {},
        "first_batch": fixed or fingerprint([list(DIFFUSION_PROMPTS), [B, config.sample_num_steps]]),
        "first_batch_tokens": B * config.sample_num_steps,
        "dataset_rows": 0,
        "tokens_per_s": transitions / timed,
        "samples_per_s": images / timed,
        "timed_tokens": transitions,
        "timed_s": timed,
        "train_s": train_s,
        "init_s": init_s,
        "wall_s": time.perf_counter() - T0,
        "peak_rss_mb": _peak_rss_mb(),
        "bf16": precision == "bf16",
        "gradient_checkpointing": scenario == "alignprop",  # both checkpoint the UNet calls with gradients
        "other_cpu_cores": other_cpu_cores(c0, c1, timed),
        "own_cpu_s": c1[1] - c0[1],
        "tokens_per_cpu_s": transitions / max(c1[1] - c0[1], 1e-9),
        "load_start": cfg["_load_start"],
        "load_end": os.getloadavg(),
        "config_not_in_library": dropped,
        "timed_epochs": steps - warmup,
    }


def main(cfg: dict) -> dict:
    import torch

    lib, scenario, mode = cfg["lib"], cfg["scenario"], cfg["mode"]
    torch.set_num_threads(cfg.get("threads", 2))
    load_start = os.getloadavg()
    if lib == "trl":
        import trl as L
    elif lib == "posttrain":
        import posttrain as L
    else:
        raise ValueError(lib)
    from transformers import TrainerCallback

    if mode == "loss_check":
        return grpo_loss_check(cfg, L, torch)
    if scenario in DIFFUSION:
        return diffusion_run(dict(cfg, _load_start=load_start), L, torch)
    fixed = None
    sampling = SCENARIOS[scenario].sampling if scenario in SCENARIOS else None
    if mode == "check" and sampling:  # both libraries train on the same (fixed) completions
        from benchmarks.compare_online import FixedCompletions

        n = {"group": cfg["overrides"].get("num_generations", 1), "pairwise": 2, "rollout": 1}[sampling]
        fixed = FixedCompletions(load_tokenizer(cfg["model"]), n, cfg["completion_tokens"],
                                 full_length=cfg.get("full_length", False))
    init_start = time.perf_counter()
    trainer = build_trainer(cfg, L, lib, scenario, mode, torch, fixed)
    init_s = time.perf_counter() - init_start
    if fixed is not None:
        from benchmarks.compare_online import install

        ref = None
        if sampling == "group" and cfg.get("ref_model"):
            from transformers import AutoModelForCausalLM

            ref = AutoModelForCausalLM.from_pretrained(cfg["ref_model"], dtype=getattr(torch, cfg.get("dtype", "float32")))
        install(trainer, lib, scenario, fixed, cfg["overrides"].get("num_generations", 1), ref)
    elif sampling:
        force_completion_length(trainer, lib, scenario, cfg["completion_tokens"])
    # KTO pairing: TRL pairs prompt i with completion i-1 of its batch for the KL term, posttrain with completion i+1.
    # "trl" (default in check mode) makes posttrain use TRL's pairing through its fixed-KL-row input; "native" keeps it.
    kl_shift = (lib == "posttrain" and scenario == "kto" and cfg.get("overrides", {}).get("loss_type", "kto") == "kto"
                and cfg.get("kto_pairing", "trl" if mode == "check" else "native") == "trl")  # apo_zero_unpaired: no KL
    recorder = BatchRecorder(trainer.data_collator, kl_shift=kl_shift)
    trainer.data_collator = recorder
    # same order in both libraries, whatever their samplers do: in checks, and in KTO speed runs (TRL's KTO samples in
    # dataset order by default, as its KL pairing needs; posttrain shuffles: the timed batches would differ, and with
    # them the work per real token, since each row's KL row is another row's completion)
    if (mode == "check" and not sampling) or scenario == "kto":
        from torch.utils.data import SequentialSampler

        trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)

    scale = cfg.get("_step_scale", 1)  # posttrain PPO: optimizer steps per rollout
    warmup, steps = cfg.get("warmup_steps", 0) * scale, cfg["steps"] * scale
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        saw_begin = False

        def start(self):
            if "start" not in clock:
                clock["start"] = time.perf_counter()
                clock["cpu_start"] = cpu_snapshot()

        def on_train_begin(self, args, state, control, **kw):
            if warmup == 0:
                self.start()

        def on_step_begin(self, args, state, control, **kw):
            self.saw_begin = True
            if state.global_step == warmup:
                self.start()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup and not self.saw_begin:  # trainers without on_step_begin (TRL 0.21 PPO)
                self.start()
            if state.global_step == steps:
                clock["stop"] = time.perf_counter()
                clock["cpu_stop"] = cpu_snapshot()

    trainer.add_callback(Clock())
    step_losses: list[float] = []  # each step's loss as training_step returns it (see the rounding note below)
    training_step = trainer.training_step

    profile_step = int(os.environ.get("COMPARE_PROFILE_STEP", "0"))  # profile that step: op table on stderr
    trace_rss = os.environ.get("COMPARE_TRACE_RSS") == "1"  # each step's resident memory on stderr
    tracer = PeakTracer(trainer.model, trainer) if os.environ.get("COMPARE_TRACE_PEAK") == "1" else None

    step_cpu: list[float] = []  # CPU seconds of each training_step call (the rest of a step: data, optimizer, logging)

    def recorded_step(*a, **k):
        if len(step_losses) + 1 == profile_step:
            from torch.profiler import ProfilerActivity, profile

            shapes = os.environ.get("COMPARE_PROFILE_SHAPES") == "1"  # the op table grouped by input shapes
            with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
                cpu = time.process_time()
                loss = training_step(*a, **k)
                cpu = time.process_time() - cpu
            print(f"profiled step {profile_step}: {cpu:.3f} CPU s (profiler included)", file=sys.stderr)
            print(prof.key_averages(group_by_input_shape=shapes).table(sort_by="self_cpu_time_total", row_limit=30,
                                                                       max_name_column_width=60), file=sys.stderr)
        else:
            if tracer is not None:
                tracer.begin()
            cpu = time.process_time()
            loss = training_step(*a, **k)
            cpu = time.process_time() - cpu
        step_cpu.append(cpu)
        step_losses.append(float(loss))
        if trace_rss:  # memory over the run: resident now and the peak so far, after each step
            print(f"step {len(step_losses)}: rss {_rss_now_mb():.0f} MB, peak {_peak_rss_mb():.0f} MB, "
                  f"tokens {recorder.tokens[-1] if recorder.tokens else 0}, {_malloc_mb()}", file=sys.stderr, flush=True)
        return loss

    trainer.training_step = recorded_step
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_start
    if tracer is not None:
        tracer.report()
        tracer.running = False
    key = "loss/policy_avg" if scenario == "ppo" else "loss"  # TRL 0.21 PPO logs no "loss"
    logs = [dict(h) for h in trainer.state.log_history if key in h]
    if scenario != "ppo" and len(step_losses) == len(logs):
        # transformers 4's Trainer and TRL's Online DPO family log the loss rounded to 4 decimals: take each step's own
        # value where the logged one is that rounding (logging_steps=1, no gradient accumulation: one step per entry)
        for h, loss in zip(logs, step_losses):
            if h["loss"] != loss and abs(h["loss"] - round(loss, 4)) < 1e-9:
                h["loss"] = loss
    if scenario == "orpo":  # the odds-ratio term alone (the libraries' NLL terms differ: archive/NOTES.md, "CPO, ORPO, GKD")
        for h in logs:
            h["loss - nll_loss"] = h["loss"] - h["nll_loss"]
    if scenario == "ppo":  # the PPO loss both libraries optimise: policy loss + vf_coef * value loss
        vf_coef = trainer.args.vf_coef
        for h in logs:
            h["loss"] = h["loss/policy_avg"] + vf_coef * h["loss/value_avg"]
        logs = logs[::scale]  # posttrain logs every optimizer step; one entry per rollout, like TRL
    timed = clock["stop"] - clock["start"]
    timed_tokens = sum(recorder.tokens[warmup:steps])
    samples = cfg["batch_size"] * (cfg["steps"] - cfg.get("warmup_steps", 0))  # sequences, pairs, unpaired rows
    if sampling:
        samples = completions_per_step(scenario, cfg["batch_size"]) * (cfg["steps"] - cfg.get("warmup_steps", 0))
        if sampling == "group":  # completion tokens: completions x their logged mean length, per timed step
            timed_tokens = sum(cfg["batch_size"] * h.get("completions/mean_length", 0.0) for h in logs[warmup:steps])
        else:  # every completion is completion_tokens long (force_completion_length / generation_kwargs)
            timed_tokens = samples * cfg["completion_tokens"]
    try:
        import importlib.metadata as md

        versions = {p: md.version(p) for p in ("torch", "transformers", "accelerate", "datasets", lib)}
    except Exception:  # noqa: BLE001
        versions = {}
    first_batch = fingerprint(sorted(fixed.used)) if fixed is not None else fingerprint(recorder.first or [])
    return {
        "lib": lib, "scenario": scenario, "mode": mode, "versions": versions,
        "losses": [h["loss"] for h in logs],
        "completion_lengths": [h.get("completions/mean_length") for h in logs],
        "first_log": logs[0],
        "first_batch": first_batch,
        "first_batch_tokens": recorder.tokens[0] if recorder.tokens else 0,
        "dataset_rows": len(trainer.train_dataset),
        "tokens_per_s": timed_tokens / timed,
        "samples_per_s": samples / timed,
        "timed_tokens": timed_tokens,
        "timed_s": timed,
        "train_s": train_s,
        "init_s": init_s,
        "wall_s": time.perf_counter() - T0,
        "peak_rss_mb": _peak_rss_mb(),
        "bf16": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "other_cpu_cores": other_cpu_cores(clock["cpu_start"], clock["cpu_stop"], timed),
        # CPU seconds this process used in the timed steps; tokens per CPU-second is less sensitive to other
        # processes than tokens per wall-second (but counts OpenMP spin-waiting as work)
        "own_cpu_s": clock["cpu_stop"][1] - clock["cpu_start"][1],
        "tokens_per_cpu_s": timed_tokens / max(clock["cpu_stop"][1] - clock["cpu_start"][1], 1e-9),
        # of own_cpu_s, the part inside training_step (forward, backward); the rest is data, optimizer and logging
        "training_step_cpu_s": sum(step_cpu[warmup:steps]),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
