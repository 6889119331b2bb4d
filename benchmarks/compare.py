"""posttrain side by side with TRL: first-step correctness checks, then speed and memory (issue 8).

    python benchmarks/compare.py check [--size small]                       # PASS/FAIL table
    python benchmarks/compare.py speed [--size bench] [--repeats 3] [--steps 8] [--settings default best]
    make bench-trl                                                          # peer venv + check + speed

The peer runs from its own virtual environment (``benchmarks/peer/make_venv.sh`` creates
``benchmarks/.venv-trl-<version>``); posttrain runs from ``.venv``. Both load the same saved model folder and the same
JSON-lines data file (``benchmarks/compare_data.py``), with the same hyperparameters, one fresh process per run
(``benchmarks/compare_worker.py``). Speed runs alternate the libraries, swapping which goes first in every repeat
(A B, B A, A B, ...), and the tables give medians and the ratio posttrain/TRL. Every run records the 1-minute load
average and the CPU that *other* processes used during its timed steps; results with other processes busy are
labelled as taken under load. Raw results go to ``benchmarks/out/compare/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compare_data import OUT, model_dir, prepare, prepare_diffusion, prepare_long, prepare_vision  # noqa: E402

WORKER = str(Path(__file__).with_name("compare_worker.py"))
# The peer: TRL 1.16.0 for the trainers it ships; TRL 0.21.0 (the last release with them) for PPO, XPO, Nash-MD, PRM and
# BCO. Each runs from its own venv, benchmarks/.venv-trl-<version>, created by benchmarks/peer/make_venv.sh when missing.
PEER_VERSION = os.environ.get("TRL_VERSION", "1.16.0")
LEGACY_PEER_VERSION = os.environ.get("TRL_LEGACY_VERSION", "0.21.0")
# trainers TRL 1.16 no longer ships (trl.experimental has none of them)
LEGACY = ("bco", "prm", "ppo", "xpo", "nash_md", "ddpo", "alignprop")
LIBS = ("posttrain", "trl")
TOLERANCE = 1e-4  # |a - b| <= TOLERANCE * max(1, |a|, |b|): relative for large values, absolute for small ones
LOADED = 0.25  # other processes busy on more than this many cores on average: the run is "under load"
COMPLETION_TOKENS = 64  # speed runs of the online trainers: every completion is exactly this long in both libraries
FORCE_LENGTH = {"generation_kwargs": {"min_new_tokens": COMPLETION_TOKENS}}

# scenario name -> (trainer, data kind, model head, worker overrides shared by both libraries; a "posttrain" or "trl"
# key holds overrides for that library only)
SCENARIOS = {
    "sft": ("sft", "sft", "causal-lm", {}),
    "sft-packing": ("sft", "sft", "causal-lm", {"packing": True}),
    "sft-dft": ("sft", "sft", "causal-lm", {"loss_type": "dft"}),  # Dynamic Fine-Tuning (TRL 1.16's other loss type)
    "dpo": ("dpo", "pref", "causal-lm", {"loss_type": ["sigmoid"]}),
    # the other DPO loss types both libraries share, one check each (DPO_CHECKS), and the options that change the loss
    **{f"dpo-{name}": ("dpo", "pref", "causal-lm", overrides) for name, overrides in {
        **{t: {"loss_type": [t]} for t in ("hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot_unpaired",
                                           "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")},
        **{t: {"loss_type": [t], "label_smoothing": 0.1} for t in ("exo_pair", "robust", "aot")},
        "mpo": {"loss_type": ["sigmoid", "ipo", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        "forward_kl": {"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"},
        "js_divergence": {"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence"},
        "alpha_divergence": {"loss_type": ["sigmoid"], "f_divergence_type": "alpha_divergence"},
        "alpha_divergence-0.3-ipo": {"loss_type": ["ipo"], "f_divergence_type": "alpha_divergence",
                                     "f_alpha_divergence_coef": 0.3},
        "wpo": {"loss_type": ["sigmoid"], "use_weighting": True},
        "ld": {"loss_type": ["sigmoid"], "ld_alpha": 0.5},
    }.items()},
    "reward": ("reward", "pref", "seq-cls", {}),
    # KTO on the preference rows made unpaired (compare_data: same length spread as DPO); check mode gives posttrain
    # TRL's KL pairing (compare_worker.BatchRecorder)
    "kto": ("kto", "unpaired_long", "causal-lm", {}),
    "kto-apo_zero_unpaired": ("kto", "unpaired_long", "causal-lm", {"loss_type": "apo_zero_unpaired"}),
    # the same with each library's own KL pairing (TRL: prompt i with completion i-1; posttrain: i+1): information only
    "kto-native-pairing": ("kto", "unpaired_long", "causal-lm", {}),
    # KTO on the kit's short unpaired rows (~22 tokens; the scenario until 2026-11-25): per-op overhead, not compute
    "kto-short": ("kto", "unpaired", "causal-lm", {}),
    # BCO (TRL 0.21) on the same unpaired rows; UDM off (no embedding_func) in both. Check mode gives posttrain TRL 0.21's
    # tokens (a second EOS after the chat template's end of turn); bco-native-tokens keeps each library's own
    "bco": ("bco", "unpaired_long", "causal-lm", {}),
    "bco-native-tokens": ("bco", "unpaired_long", "causal-lm", {}),
    # process reward model (TRL 0.21): kit stepwise rows, a 2-label token-classification kit model
    "prm": ("prm", "stepwise", "token-cls", {}),
    # online: identical cheap reward (compare_worker.length_reward), same sampling settings; min_new_tokens makes every
    # completion max_completion_length tokens long in both, so completions/s compare equal work
    "grpo": ("grpo", "prompts", "causal-lm", {"num_generations": 4, "max_completion_length": COMPLETION_TOKENS,
                                                "temperature": 1.0, "beta": 0.0, **FORCE_LENGTH}),
    "rloo": ("rloo", "prompts", "causal-lm", {"num_generations": 4, "max_completion_length": COMPLETION_TOKENS,
                                                "temperature": 1.0, "beta": 0.05, **FORCE_LENGTH}),
    # pairwise online trainers: batch = prompts, 2 completions each. Online DPO (TRL 1.16: trl.experimental) ranks them by
    # length_reward; XPO and Nash-MD (TRL 0.21, no reward functions) by compare_online.LengthJudge. TRL 0.21 keeps a
    # generation_config without generation_kwargs: compare_worker.force_completion_length sets its min_new_tokens.
    "online-dpo": ("online_dpo", "prompts", "causal-lm", {"max_new_tokens": COMPLETION_TOKENS, **FORCE_LENGTH}),
    "xpo": ("xpo", "prompts", "causal-lm", {"max_new_tokens": COMPLETION_TOKENS, "posttrain": FORCE_LENGTH}),
    "nash-md": ("nash_md", "prompts", "causal-lm", {"max_new_tokens": COMPLETION_TOKENS, "posttrain": FORCE_LENGTH}),
    # PPO (TRL 0.21): the kit sequence-classification model as reward model and as value model (both libraries); one
    # step = one rollout of batch_size completions (num_ppo_epochs=4 optimizer steps over it, the default)
    "ppo": ("ppo", "prompts", "causal-lm", {"response_length": COMPLETION_TOKENS, "posttrain": FORCE_LENGTH}),
    # CPO and ORPO (TRL 1.16: trl.experimental) on the DPO preference rows; CPO once per loss type both libraries share
    "cpo": ("cpo", "pref", "causal-lm", {"loss_type": "sigmoid"}),
    "cpo-hinge": ("cpo", "pref", "causal-lm", {"loss_type": "hinge"}),
    "cpo-ipo": ("cpo", "pref", "causal-lm", {"loss_type": "ipo"}),
    "cpo-simpo": ("cpo", "pref", "causal-lm", {"loss_type": "simpo", "cpo_alpha": 0.0}),
    "cpo-simpo-nll": ("cpo", "pref", "causal-lm", {"loss_type": "simpo", "cpo_alpha": 1.0, "label_smoothing": 0.1}),
    "cpo-alphapo": ("cpo", "pref", "causal-lm", {"loss_type": "alphapo", "alpha": 0.25}),
    "cpo-sigmoid-alpha": ("cpo", "pref", "causal-lm", {"loss_type": "sigmoid", "alpha": 0.001, "label_smoothing": 0.1}),
    "cpo-native-tokens": ("cpo", "pref", "causal-lm", {"loss_type": "sigmoid"}),  # each library's own tokens
    "orpo": ("orpo", "pref", "causal-lm", {}),
    # GKD (TRL 1.16: trl.experimental) on the preference rows' prompt + chosen answer as conversations, teacher = the
    # seed-1 kit model; lmbda=0 and no seq_kd: no sampling, so both train on the dataset's completions
    "gkd": ("gkd", "distill", "causal-lm", {"lmbda": 0.0, "temperature": 1.0}),
    "gkd-forward-kl": ("gkd", "distill", "causal-lm", {"lmbda": 0.0, "temperature": 1.0, "beta": 0.0}),
    "gkd-reverse-kl": ("gkd", "distill", "causal-lm", {"lmbda": 0.0, "temperature": 1.0, "beta": 1.0}),
    "gkd-temperature-0.9": ("gkd", "distill", "causal-lm", {"lmbda": 0.0}),
    # SFT on a vision-language model (TRL 1.16): the kit's tiny Llava folder (model + processor) and the kit's colors
    # rows (one image each, prompt-completion conversations) from one parquet file; padded batches in both (neither
    # packs image rows)
    "sft-vlm": ("sft", "colors", "vlm", {}),
    # diffusion RL (TRL 0.21): the kit's tiny Stable Diffusion folder, compare_worker's fixed prompts and colour reward;
    # one step = one epoch of the trainers' own loop (batch_size images); LoRA rank 4 on the UNet in both
    "ddpo": ("ddpo", "diffusion", "diffusion", {"sample_num_steps": 10, "per_prompt_stat_tracking": False,
                                                 "use_lora": True}),
    # AlignProp: gradients through the last 5 of 10 denoising steps, fixed (the random cutoff draws from each library's
    # own RNG: different work per step)
    "alignprop": ("alignprop", "diffusion", "diffusion", {"sample_num_steps": 10, "truncated_backprop_rand": False,
                                                           "truncated_backprop_timestep": 5, "use_lora": True}),
}
VISION = ("sft-vlm",)  # scenarios whose model is the tiny Llava (compare_data.prepare_vision)
MAX_LENGTH = {"sft": 512, "dpo": 1024, "reward": 1024, "kto": 1024, "bco": 1024, "prm": 1024, "grpo": None, "rloo": None,
              "ppo": None, "online_dpo": 512, "xpo": 512, "nash_md": 512, "cpo": 1024, "orpo": 1024, "gkd": 1024,
              "ddpo": None, "alignprop": None}
# Mismatches that are explained (archive/NOTES.md: "KTO", "GRPO", "Third batch"); the table still says FAIL, with the reason.
KNOWN = {
    "kto-native-pairing": "KL pairs differ by design (TRL: completion i-1, posttrain: i+1)",
    "bco": "logits/*: TRL 0.21 BCO logs the sum of all logits (every position and vocabulary entry) per row, posttrain the "
           "mean logit of the completion tokens",
    "bco-native-tokens": "TRL 0.21 BCO appends a second EOS after the chat template's end of turn; posttrain does not",
    # online steps on fixed completions (archive/NOTES.md, "Online trainers"): metric definitions unless said otherwise
    "online-dpo sigmoid, temperature 1": "objective/kl, entropy, non_score_reward, rlhf_reward: TRL sums log-probs over "
                                         "the padding after EOS too (equal with full-length completions)",
    "xpo sigmoid, alpha 0.1, temperature 1": "logps/*, objective/kl, objective/entropy: TRL 0.21 XPO averages over the "
                                             "policy's and the reference's completions (logps/*: policy + reference "
                                             "log-prob), posttrain over the policy's",
    "dpo-forward_kl": "float32 rounding: the scores 1 - exp(-h) turn both libraries' ~1e-4 errors in the summed "
                      "log-ratios h into ~1e-4 relative in the loss; against the float64 oracle (details) posttrain's "
                      "loss is the closer one",
    "dpo-alpha_divergence": "float32 rounding, as dpo-forward_kl: exp(-h/2) amplifies the errors in h; against the "
                            "float64 oracle (details) posttrain's loss is the closer one",
    "dpo-alpha_divergence-0.3-ipo": "float32 rounding, as dpo-forward_kl: the loss agrees, the gradient norm (through "
                                    "exp(-0.7 h)) to 3e-4",
    "dpo-bco_pair": "posttrain subtracts the running reward mean (the BCO paper's delta, as TRL 0.2x did); TRL 1.16 "
                    "subtracts nothing (docs/differences.md)",
    "ppo k1, completions 4-24 tokens with EOS": "value loss: TRL 0.21 puts the score on the position after EOS and trains "
                                                "the value there too (padding_mask_p1); objective/entropy: TRL counts -1 "
                                                "per padding position (INVALID_LOGPROB)",
}
# Metrics each library defines differently for a trainer (docs/differences.md): the check shows them, does not count them
DEFINED_APART = {
    # TRL 1.16's CPO and ORPO (trl.experimental, the pre-1.0 code) average the logits over every position of the padded
    # batch (prompt and padding included) and the vocabulary; posttrain, like TRL's own DPO, over the completion tokens
    "cpo": ("logits/chosen", "logits/rejected"),
    "orpo": ("logits/chosen", "logits/rejected"),
}
_CPO_ALPHA_0 = "nll_loss: with cpo_alpha=0 TRL logs 0 (it skips the NLL), posttrain the NLL of the chosen completions"
KNOWN.update({
    "cpo-native-tokens": "TRL's CPO/ORPO append EOS after the chat template's end of turn and newline; posttrain does not",
    "cpo-simpo": _CPO_ALPHA_0,
    "cpo-alphapo": _CPO_ALPHA_0,
    "cpo-sigmoid-alpha": "TRL bug: AlphaPO rewards as exp(logps)**-alpha underflow for summed log-probs below about "
                         "-103 (fp32): inf rewards, loss 0, grad_norm nan; posttrain computes exp(-alpha*logps)",
    "orpo": "nll_loss (hence loss, grad_norm): TRL's ORPO takes the NLL over prompt and completion tokens, posttrain "
            "over the completion (the paper's L_SFT); the odds-ratio term (loss - nll_loss) agrees",
})
KNOWN["online-dpo ipo, temperature 1"] = KNOWN["online-dpo sigmoid, temperature 1"]
KNOWN["online-dpo sigmoid, temperature 0.9 (default)"] = KNOWN["online-dpo sigmoid, temperature 1"]
KNOWN["xpo sigmoid, alpha 0.1, temperature 0.9 (default)"] = KNOWN["xpo sigmoid, alpha 0.1, temperature 1"]
KNOWN["xpo ipo, alpha 0.1, temperature 1"] = KNOWN["xpo sigmoid, alpha 0.1, temperature 1"]
DPO_CHECKS = [s for s in SCENARIOS if s.startswith("dpo-")]
CHECKS = ["sft", "sft-packing", "sft-dft", "dpo", *DPO_CHECKS, "reward", "kto", "kto-apo_zero_unpaired", "kto-native-pairing", "bco", "bco-native-tokens", "prm", "grpo-loss", "online",
          "cpo", "cpo-hinge", "cpo-ipo", "cpo-simpo", "cpo-simpo-nll", "cpo-alphapo", "cpo-sigmoid-alpha", "cpo-native-tokens",
          "orpo", "gkd", "gkd-forward-kl", "gkd-reverse-kl", "gkd-temperature-0.9", "sft-vlm", "ddpo",
          "alignprop"]
# GRPO loss on fixed completions (compare_worker.grpo_loss_check): each loss type both libraries share, with and without KL
GRPO_LOSS_CASES = [{"loss_type": t, "beta": b} for t in ("grpo", "bnpo", "dr_grpo", "dapo") for b in (0.0, 0.04)] + [
    {"loss_type": "grpo", "beta": 0.04, "importance_sampling_level": "sequence"},
    {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7},
] + [  # CISPO (epsilon_high is its cap) and SAPO (default gate temperatures), with and without KL
    {"loss_type": "cispo", "beta": b, "epsilon_high": 5.0} for b in (0.0, 0.04)
] + [{"loss_type": "sapo", "beta": b} for b in (0.0, 0.04)] + [
    # the KL term without the importance-ratio factor (both libraries default to use_bias_correction_kl=True)
    {"loss_type": t, "beta": 0.04, "use_bias_correction_kl": False} for t in ("grpo", "bnpo", "dr_grpo", "dapo")
]
# Whole first steps of the online trainers on fixed completions (compare_online): name -> (scenario, overrides, options).
# Options: batch (completions for GRPO/RLOO, prompts otherwise), full_length (every completion max length, no EOS),
# known (why a FAIL is expected). Completions are 4-24 tokens (about half end with EOS) unless full_length.
ONLINE_CHECKS = {
    "grpo-step beta=0.04 (dapo)": (
        "grpo", {"num_generations": 4, "max_completion_length": 24, "beta": 0.04, "loss_type": "dapo"}, {"batch": 8}),
    "rloo-step beta=0.05 (default)": ("rloo", {"num_generations": 4, "max_completion_length": 24}, {"batch": 8}),
    "rloo-step beta=0": ("rloo", {"num_generations": 4, "max_completion_length": 24, "beta": 0.0}, {"batch": 8}),
    "rloo-step beta=0.05, normalize_advantages, temperature 0.7": (
        "rloo", {"num_generations": 4, "max_completion_length": 24, "normalize_advantages": True, "temperature": 0.7},
        {"batch": 8}),
    "online-dpo sigmoid, temperature 1": ("online_dpo", {"max_new_tokens": 24, "temperature": 1.0}, {"batch": 4}),
    "online-dpo ipo, temperature 1": ("online_dpo", {"max_new_tokens": 24, "temperature": 1.0, "loss_type": "ipo"},
                                      {"batch": 4}),
    "online-dpo sigmoid, temperature 1, full-length completions": (
        "online_dpo", {"max_new_tokens": 24, "temperature": 1.0}, {"batch": 4, "full_length": True}),
    "online-dpo sigmoid, temperature 0.9 (default)": ("online_dpo", {"max_new_tokens": 24}, {"batch": 4}),
    "xpo sigmoid, alpha 0.1, temperature 1": ("xpo", {"max_new_tokens": 24, "temperature": 1.0, "alpha": [0.1]},
                                              {"batch": 4}),
    "xpo sigmoid, alpha 0.1, temperature 0.9 (default)": ("xpo", {"max_new_tokens": 24, "alpha": [0.1]}, {"batch": 4}),
    "xpo ipo, alpha 0.1, temperature 1": ("xpo", {"max_new_tokens": 24, "temperature": 1.0, "alpha": [0.1],
                                                  "loss_type": "ipo"}, {"batch": 4}),
    "nash-md mixture_coef 0.5, temperature 1": ("nash_md", {"max_new_tokens": 24, "temperature": 1.0}, {"batch": 4}),
    "nash-md mixture_coef 0.5, temperature 0.9 (default)": ("nash_md", {"max_new_tokens": 24}, {"batch": 4}),
    "ppo k1, full-length completions": ("ppo", {"response_length": 24, "num_ppo_epochs": 1}, {"batch": 8, "full_length": True}),
    "ppo k3, full-length completions": ("ppo", {"response_length": 24, "num_ppo_epochs": 1, "kl_estimator": "k3"},
                                        {"batch": 8, "full_length": True}),
    "ppo k1, completions 4-24 tokens with EOS": ("ppo", {"response_length": 24, "num_ppo_epochs": 1}, {"batch": 8}),
}


def peer_version(scenario: str) -> str:
    """The TRL version a scenario (or trainer name) is compared with."""
    trainer = SCENARIOS[scenario][0] if scenario in SCENARIOS else scenario
    return LEGACY_PEER_VERSION if trainer in LEGACY else PEER_VERSION


def python_for(lib: str, version: str = PEER_VERSION) -> str:
    if lib == "posttrain":
        return str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
    py = ROOT / "benchmarks" / f".venv-trl-{version}" / "bin" / "python"
    if not py.exists():  # the harness creates the peer's venv (torch first, then trl and the stack it needs)
        print(f"creating the peer venv: benchmarks/peer/make_venv.sh {version}", flush=True)
        subprocess.run([str(ROOT / "benchmarks" / "peer" / "make_venv.sh"), version], check=True, cwd=str(ROOT))
    return str(py)


def run_worker(cfg: dict, timeout: int = 3600) -> dict:
    # "posttrain_root": another posttrain source tree (speed --baseline) imported ahead of this one's
    path = os.pathsep.join([cfg["posttrain_root"], str(ROOT)] if cfg.get("posttrain_root") else [str(ROOT)])
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    cfg = dict(cfg, peer_version=cfg.get("peer_version") or peer_version(cfg["scenario"]))
    proc = subprocess.run([python_for(cfg["lib"], cfg["peer_version"]), WORKER, json.dumps(cfg)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({cfg['lib']} {cfg['scenario']} {cfg['mode']}):\n{proc.stderr[-4000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result line:\n{proc.stdout[-2000:]}")


def all_paths(size: str, examples: int, scenarios) -> dict[str, str]:
    """Model folders and data files of the scenarios (the vision and diffusion inputs only when asked for)."""
    paths = prepare(size, examples, examples)
    if any(s in VISION for s in scenarios):
        paths.update(prepare_vision(size, examples))
    if any(SCENARIOS.get(s, ("",))[0] in ("ddpo", "alignprop") for s in scenarios):
        paths.update(prepare_diffusion())
    return paths


def base_config(scenario: str, size: str, paths: dict, args) -> dict:
    trainer, kind, head, overrides = SCENARIOS[scenario]
    # at least one timed step: warm-up capped below the step count (a smoke run with --steps 2 times step 2)
    warmup = min(getattr(args, "warmup_steps", 0), max(args.steps - 1, 0))
    cfg = dict(scenario=trainer, model=paths[head], data=paths[f"{kind}_data"], steps=args.steps,
               warmup_steps=warmup, batch_size=args.batch_size, max_length=MAX_LENGTH[trainer],
               threads=args.threads, seed=0, overrides=dict(overrides), completion_tokens=COMPLETION_TOKENS,
               value_model=paths["seq-cls"], peer_version=getattr(args, "peer", None) or peer_version(scenario))
    if trainer == "gkd":  # the teacher, in speed runs too
        cfg["ref_model"] = str(ref_model_dir(size))
    if scenario in VISION:
        cfg["vision"] = True
    return cfg


def ref_model_dir(size: str) -> Path:
    """The second kit model (seed 1): DPO/KTO/BCO reference in the checks, GKD teacher. Built when missing."""
    ref = model_dir(size, "causal-lm-ref")
    if not (ref / "config.json").exists():
        from posttrain.kit import build_tiny_model

        build_tiny_model("qwen2", size=size, seed=1, output_dir=ref)
    return ref


# -- correctness ---------------------------------------------------------------------------------------------------


def close(a: float, b: float, tol: float = TOLERANCE) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def compare_runs(ours: dict, peer: dict, tol: float = TOLERANCE, defined_apart=()) -> dict:
    """First-step loss and every metric both libraries log, plus later-step losses and the first batch's tokens.
    ``defined_apart``: metrics the two libraries define differently (DEFINED_APART): shown, not counted."""
    skip = {"epoch", "step", "learning_rate"}
    a, b = ours["first_log"], peer["first_log"]
    shared = sorted((set(a) & set(b)) - skip)
    apart = [(k, a[k], b[k], close(a[k], b[k], tol)) for k in shared if k in defined_apart]
    rows = [(k, a[k], b[k], close(a[k], b[k], tol)) for k in shared if k not in defined_apart]
    steps_ok = len(ours["losses"]) == len(peer["losses"]) and all(close(x, y, tol) for x, y in zip(ours["losses"], peer["losses"]))
    same_batch = ours["first_batch"] == peer["first_batch"]
    return {
        "loss": (a["loss"], b["loss"]),
        "loss_ok": close(a["loss"], b["loss"], tol),
        "metrics": rows,
        "defined_apart": apart,
        "only_posttrain": sorted(set(a) - set(b) - skip),
        "only_trl": sorted(set(b) - set(a) - skip),
        "all_steps_ok": steps_ok,
        "same_first_batch": same_batch,
        "passed": close(a["loss"], b["loss"], tol) and all(r[3] for r in rows) and steps_ok and same_batch,
    }


def check_row(name: str, runs: dict, c: dict, known: str | None = None, steps: bool = True) -> str:
    """One line of the check table."""
    x, y = c["loss"]
    n_ok = sum(r[3] for r in c["metrics"])
    result = "PASS" if c["passed"] else "FAIL" + (f" (known: {known})" if known else "")
    if c.get("defined_apart"):
        result += f" ({', '.join(r[0] for r in c['defined_apart'])}: defined differently, not compared)"
    return (f"| {name} | {runs['trl']['versions'].get('trl', '?')} | {x:.8f} | {y:.8f} | "
            f"{abs(x - y) / max(abs(x), abs(y), 1e-12):.1e} | {n_ok}/{len(c['metrics'])} | "
            f"{('yes' if c['all_steps_ok'] else 'NO') if steps else '-'} | {'yes' if c['same_first_batch'] else 'NO'} | "
            f"{result} |")


def check_details(name: str, runs: dict, c: dict) -> list[str]:
    lines = [f"{name}: " + ", ".join(f"{k} {u:.8g} vs {v:.8g}{'' if ok else ' (FAIL)'}" for k, u, v, ok in c["metrics"])]
    if c.get("defined_apart"):
        lines.append("  defined differently (not compared): " + ", ".join(f"{k} {u:.8g} vs {v:.8g}"
                                                                           for k, u, v, _ in c["defined_apart"]))
    if c["only_posttrain"] or c["only_trl"]:
        lines.append(f"  logged only by posttrain: {c['only_posttrain']}; only by TRL: {c['only_trl']}")
    if len(runs["posttrain"]["losses"]) > 1:
        lines.append(f"  losses per step: posttrain {runs['posttrain']['losses']}, TRL {runs['trl']['losses']}")
    return lines


def check(argv=None) -> str:
    p = argparse.ArgumentParser(prog="compare.py check")
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=3, help="steps at learning rate 0 (every step's loss is compared)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--scenarios", nargs="+", default=CHECKS,
                   help=f"any of {sorted(SCENARIOS)}, grpo-loss, online (every ONLINE_CHECKS case) or names of ONLINE_CHECKS")
    p.add_argument("--peer", default=None, help="TRL version for every scenario (default: per scenario, see LEGACY)")
    a = p.parse_args(argv)
    paths = all_paths(a.size, a.examples, a.scenarios)
    ref = ref_model_dir(a.size)
    out = ["| check | TRL | posttrain first loss | TRL first loss | rel. diff | shared metrics within tol. | all steps | "
           "same first batch | result |", "|---|---|---|---|---|---|---|---|---|"]
    details, raw = [], {}
    for scenario in [s for s in a.scenarios if s in SCENARIOS]:
        cfg = dict(base_config(scenario, a.size, paths, a), mode="check", dtype=a.dtype)
        if SCENARIOS[scenario][0] in ("dpo", "kto", "bco", "gkd"):
            cfg["ref_model"] = str(ref)  # a reference (GKD: teacher) that differs from the policy, so the loss is not log 2
        if SCENARIOS[scenario][0] == "kto":
            # policy = the seed-1 model, reference = the seed-0 one: with this order KTO's KL estimate on these batches is
            # positive (the other order gives a negative estimate, which both libraries clamp to 0, hiding the KL term)
            cfg["model"], cfg["ref_model"] = str(ref), paths["causal-lm"]
        if scenario == "kto-native-pairing":
            cfg["kto_pairing"] = "native"
        if scenario == "bco":
            cfg["bco_tokens"] = "trl"
        if SCENARIOS[scenario][0] == "ddpo":  # both train on one recorded chain (compare_diffusion)
            from benchmarks.compare_diffusion import record

            cfg["chain"] = record(paths["diffusion"], str(OUT / "data" / f"ddpo-chain-b{a.batch_size}.pt"), a.batch_size,
                                  SCENARIOS[scenario][3]["sample_num_steps"])
        if SCENARIOS[scenario][0] in ("cpo", "orpo") and not scenario.endswith("native-tokens"):
            cfg["pref_tokens"] = "trl"  # TRL's tokens (a second EOS after each answer's end of turn) for posttrain too
        runs = {lib: run_worker(dict(cfg, lib=lib)) for lib in LIBS}
        raw[scenario] = runs
        c = compare_runs(runs["posttrain"], runs["trl"], defined_apart=DEFINED_APART.get(SCENARIOS[scenario][0], ()))
        out.append(check_row(scenario, runs, c, KNOWN.get(scenario)))
        details += check_details(scenario, runs, c)
    if "grpo-loss" in a.scenarios:
        for case in GRPO_LOSS_CASES:
            cfg = dict(lib=None, scenario="grpo", mode="loss_check", model=paths["causal-lm"], ref_model=str(ref),
                       data=paths["prompts_data"], batch_size=8, num_generations=4, max_completion_length=24, steps=1,
                       overrides=case, peer_version=a.peer)
            shared = {k: v for k, v in case.items() if k not in LIBS}
            runs = {lib: run_worker(dict(cfg, lib=lib, overrides=dict(shared, **case.get(lib, {})))) for lib in LIBS}
            name = "grpo-loss " + ",".join(f"{k}={v}" for k, v in shared.items()) + "".join(
                f", {'TRL' if lib == 'trl' else lib} {k}={v}" for lib in LIBS for k, v in case.get(lib, {}).items())
            raw[name] = runs
            c = compare_runs(runs["posttrain"], runs["trl"])
            out.append(check_row(name, runs, c, None, steps=False))
            details += check_details(name, runs, c)
    online = [n for n in ONLINE_CHECKS if "online" in a.scenarios or n in a.scenarios]
    for name in online:  # whole first steps on fixed completions (compare_online)
        scenario, overrides, opts = ONLINE_CHECKS[name]
        cfg = dict(lib=None, scenario=scenario, mode="check", model=paths["causal-lm"], ref_model=str(ref),
                   value_model=paths["seq-cls"], data=paths["prompts_data"], steps=1, batch_size=opts["batch"],
                   num_prompts=opts["batch"] // overrides.get("num_generations", 1), max_length=MAX_LENGTH[scenario],
                   completion_tokens=overrides.get("max_completion_length") or overrides.get("max_new_tokens")
                   or overrides["response_length"], full_length=opts.get("full_length", False), threads=a.threads,
                   seed=0, overrides=overrides, peer_version=a.peer)
        runs = {lib: run_worker(dict(cfg, lib=lib)) for lib in LIBS}
        raw[name] = runs
        c = compare_runs(runs["posttrain"], runs["trl"])
        out.append(check_row(name, runs, c, KNOWN.get(name), steps=False))
        details += check_details(name, runs, c)
    oracle = {"dpo": None, "dpo-forward_kl": "forward_kl", "dpo-alpha_divergence": "alpha_divergence"}
    if any(name in raw for name in oracle):  # each library against an exact (float64) computation of the same step
        from benchmarks import dpo_oracle

        exact = dpo_oracle.main(["--size", a.size, "--batch_size", str(a.batch_size), "--examples", str(a.examples)])
        for name, divergence in oracle.items():
            if name not in raw:
                continue
            details.append(f"{name} vs a float64 oracle (benchmarks/dpo_oracle.py), error = library - exact:")
            keys = [k for k in exact if not k.startswith("loss")] + ["loss"]
            for k in keys:
                v = exact[f"loss ({divergence})" if k == "loss" and divergence else k]
                errs = ", ".join(f"{lib} {raw[name][lib]['first_log'][k] - v:+.2e}" for lib in LIBS)
                details.append(f"  {k}: exact {v:.8g}; {errs}")
    header = (f"Model: kit qwen2 '{a.size}', {a.dtype}, dropout off, learning rate 0, sequential data order, batch "
              f"{a.batch_size}, {a.steps} steps; tolerance |a-b| <= {TOLERANCE:g} * max(1, |a|, |b|). DPO: sigmoid loss, beta 0.1, "
              "reference = a second kit model (seed 1). Online trainers: one step on fixed completions (compare_online).")
    text = header + "\n\n" + "\n".join(out) + "\n\n```\n" + "\n".join(details) + "\n```\n"
    save(f"check-{a.size}-{a.dtype}", raw, text)
    print(text)
    return text


# -- speed ---------------------------------------------------------------------------------------------------------


def med(values):
    return statistics.median(values) if values else float("nan")


def speed(argv=None) -> str:
    p = argparse.ArgumentParser(prog="compare.py speed")
    p.add_argument("--size", default="bench")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup_steps", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--settings", nargs="+", default=["default", "best"], choices=["default", "best"])
    p.add_argument("--scenarios", nargs="+", default=["sft", "dpo", "kto", "reward", "grpo", "rloo", "online-dpo", "ppo",
                                                      "xpo", "nash-md", "bco", "prm", "cpo", "orpo", "gkd",
                                                      "sft-vlm", "ddpo", "alignprop"],
                   help=f"any of {sorted(SCENARIOS)}")
    p.add_argument("--peer", default=None, help="TRL version for every scenario (default: per scenario, see LEGACY)")
    p.add_argument("--baseline", default=None, metavar="PATH",
                   help="measure posttrain against another posttrain source tree instead of TRL (e.g. a `git worktree` of "
                        "an earlier commit): before/after figures of a change, in one session and alternating; the TRL "
                        "columns of the table then hold the baseline")
    p.add_argument("--posttrain_args", default=None, type=json.loads,
                   help='JSON of config fields for the posttrain runs only, e.g. \'{"gradient_checkpointing": true}\' '
                        "(the table then says so in its setting column)")
    p.add_argument("--length", type=int, default=None,
                   help="every sequence exactly this many tokens (SFT, DPO, Reward: rows longer than it, truncated "
                        "by max_length; compare_data.prepare_long)")
    a = p.parse_args(argv)
    paths = all_paths(a.size, a.examples, a.scenarios)
    if a.length:
        paths.update(prepare_long(a.examples, a.length))
    results: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for scenario in a.scenarios:
        for setting in a.settings:
            cfg = dict(base_config(scenario, a.size, paths, a), mode=setting)
            if a.length:
                if cfg["max_length"] is None:
                    raise SystemExit(f"--length: {scenario} has no max_length (online trainers: prompt and completion "
                                     "lengths)")
                cfg["max_length"] = a.length
            if a.posttrain_args:
                cfg["overrides"]["posttrain"] = {**cfg["overrides"].get("posttrain", {}), **a.posttrain_args}
            runs = results.setdefault((scenario, setting), {lib: [] for lib in LIBS})
            for i in range(a.repeats):
                for lib in (LIBS if i % 2 == 0 else LIBS[::-1]):
                    if a.baseline and lib == "trl":
                        r = run_worker(dict(cfg, lib="posttrain", posttrain_root=str(Path(a.baseline).resolve())))
                        r["versions"]["trl"] = f"baseline {a.baseline}"
                    else:
                        r = run_worker(dict(cfg, lib=lib))
                    runs[lib].append(r)
                    print(f"{scenario} {setting} {lib}: {r['tokens_per_s']:.0f} tok/s, {r['samples_per_s']:.2f} samples/s, "
                          f"{r['peak_rss_mb']:.0f} MB, completion lengths {r.get('completion_lengths')}, "
                          f"other procs {r['other_cpu_cores']:.2f} cores, load {r['load_start'][0]:.2f}", flush=True)
    text = speed_table(results, a)
    if a.baseline:
        text = f"Baseline: the TRL columns hold posttrain from {a.baseline}.\n\n" + text
    name = f"speed-{a.size}" + (f"-length{a.length}" if a.length else "") + ("-baseline" if a.baseline else "")
    save(name, {f"{k[0]}/{k[1]}": v for k, v in results.items()}, text)
    print(text)
    return text


def first_last_loss(runs: list[dict]) -> str:
    """The first and the last logged loss of a library's runs (medians over the runs; each run logs every step)."""
    logged = [r["losses"] for r in runs if r.get("losses")]
    if not logged:
        return "-"
    return f"{med([x[0] for x in logged]):.4g} -> {med([x[-1] for x in logged]):.4g}"


def speed_table(results, a) -> str:
    lines = ["| scenario | TRL | setting | posttrain tokens/s | TRL tokens/s | speed ratio (pt/TRL) | posttrain peak RSS MB | "
             "TRL peak RSS MB | memory ratio | posttrain samples/s | TRL samples/s | loss first -> last (posttrain; TRL) | "
             "other-process CPU (cores) | load | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (scenario, setting), runs in results.items():
        pt, tr = runs["posttrain"], runs["trl"]
        tps = [med([r["tokens_per_s"] for r in x]) for x in (pt, tr)]
        rss = [med([r["peak_rss_mb"] for r in x]) for x in (pt, tr)]
        sps = [med([r["samples_per_s"] for r in x]) for x in (pt, tr)]
        pair = [p["tokens_per_s"] / t["tokens_per_s"] for p, t in zip(pt, tr)]
        other = med([r["other_cpu_cores"] for r in pt + tr])
        load = med([r["load_start"][0] for r in pt + tr])
        label = "under load" if other > LOADED else "quiet"
        if all("tokens_per_cpu_s" in r for r in pt + tr):
            cpu = [med([r["tokens_per_cpu_s"] for r in x]) for x in (pt, tr)]
            label += f"; tokens per CPU-second ratio {cpu[0] / cpu[1]:.2f}"
        flags = f"{'bf16+' if tr[0]['bf16'] else ''}{'gc' if tr[0]['gradient_checkpointing'] else ''}".strip("+")
        setting_name = setting + (f" (TRL: {flags})" if flags else "")
        if a.posttrain_args:
            setting_name += f" (posttrain: {json.dumps(a.posttrain_args)})"
        lines.append(f"| {scenario} | {tr[0]['versions'].get('trl', '?')} | {setting_name} | {tps[0]:.0f} | {tps[1]:.0f} | {tps[0] / tps[1]:.2f} (pairs: {med(pair):.2f}) | "
                     f"{rss[0]:.0f} | {rss[1]:.0f} | {rss[0] / rss[1]:.2f} | {sps[0]:.2f} | {sps[1]:.2f} | "
                     f"{first_last_loss(pt)}; {first_last_loss(tr)} | {other:.2f} ({label}) | "
                     f"{load:.2f} | {len(pt)}+{len(tr)} |")
    v = next(iter(results.values()))
    vp = v["posttrain"][0]["versions"]
    stacks = sorted({tuple(r["trl"][0]["versions"].get(k) for k in ("trl", "torch", "transformers", "accelerate"))
                     for r in results.values()}, key=str)
    peers = "; ".join(f"TRL {t} (torch {to}, transformers {tf}, accelerate {ac})" for t, to, tf, ac in stacks)
    warmup = min(a.warmup_steps, max(a.steps - 1, 0))  # as base_config caps it
    head = (f"Model: kit qwen2 '{a.size}', batch {a.batch_size}, {a.steps} steps, tokens/s over steps {warmup + 1}-{a.steps} "
            f"(real tokens of the collated examples, same count for both), {a.threads} torch threads, {a.repeats} runs per library "
            f"alternating (A B, B A, ...), fresh process per run, medians. Versions: posttrain {vp.get('posttrain')}, "
            f"torch {vp.get('torch')}, transformers {vp.get('transformers')}; {peers}. "
            f"Machine: {os.cpu_count()} CPUs. 'speed ratio' is the ratio of medians; '(pairs: x)' the median of the per-repeat ratios. samples/s counts collated "
            f"examples: sequences (SFT; packed rows with packing), preference pairs (DPO, reward), unpaired rows (KTO, BCO), "
            f"stepwise rows (PRM) or completions (online trainers; there tokens/s = completion tokens; batch = completions "
            f"for GRPO/RLOO, prompts with 2 completions each for Online DPO/XPO/Nash-MD, prompts with 1 for PPO). sft-vlm: the "
            f"kit's tiny Llava of the size; tokens = attended tokens of the collated rows, image tokens included. DDPO, "
            f"AlignProp: the kit's tiny Stable Diffusion pipeline; one step = one epoch of batch images, timed after one "
            f"warm-up epoch; samples/s = images/s, tokens/s = denoising transitions/s (images x sample_num_steps).")
    return head + "\n\n" + "\n".join(lines) + "\n"


def save(name: str, raw, text: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"{name}-{stamp}.json").write_text(json.dumps(raw, indent=1, default=str))
    (OUT / f"{name}-latest.md").write_text(text)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("check", "speed"):
        raise SystemExit(__doc__)
    {"check": check, "speed": speed}[sys.argv[1]](sys.argv[2:])
