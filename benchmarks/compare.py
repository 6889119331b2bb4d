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

from benchmarks.compare_data import OUT, model_dir, prepare  # noqa: E402

WORKER = str(Path(__file__).with_name("compare_worker.py"))
PEER_VERSION = os.environ.get("TRL_VERSION", "1.16.0")
LIBS = ("posttrain", "trl")
TOLERANCE = 1e-4  # |a - b| <= TOLERANCE * max(1, |a|, |b|): relative for large values, absolute for small ones
LOADED = 0.25  # other processes busy on more than this many cores on average: the run is "under load"

# scenario name -> (trainer, data kind, model head, worker overrides shared by both libraries)
SCENARIOS = {
    "sft": ("sft", "sft", "causal-lm", {}),
    "sft-packing": ("sft", "sft", "causal-lm", {"packing": True}),
    "dpo": ("dpo", "pref", "causal-lm", {"loss_type": ["sigmoid"]}),
    "reward": ("reward", "pref", "seq-cls", {}),
    # KTO on the kit's unpaired data; check mode gives posttrain TRL's KL pairing (compare_worker.BatchRecorder)
    "kto": ("kto", "unpaired", "causal-lm", {}),
    # the same with each library's own KL pairing (TRL: prompt i with completion i-1; posttrain: i+1): information only
    "kto-native-pairing": ("kto", "unpaired", "causal-lm", {}),
    # online: identical cheap reward (compare_worker.length_reward), same sampling settings; min_new_tokens makes every
    # completion max_completion_length tokens long in both, so completions/s compare equal work
    "grpo": ("grpo", "prompts", "causal-lm", {"num_generations": 4, "max_completion_length": 64, "temperature": 1.0,
                                                "beta": 0.0, "generation_kwargs": {"min_new_tokens": 64}}),
    "rloo": ("rloo", "prompts", "causal-lm", {"num_generations": 4, "max_completion_length": 64, "temperature": 1.0,
                                                "beta": 0.05, "generation_kwargs": {"min_new_tokens": 64}}),
}
MAX_LENGTH = {"sft": 512, "dpo": 1024, "reward": 1024, "kto": 1024, "grpo": None, "rloo": None}
# Mismatches that are explained (NOTES.md, "KTO" and "GRPO"); the table still says FAIL, with the reason next to it.
KNOWN = {
    "kto": "logits/chosen: posttrain KTO averages per-row means, TRL per token",
    "kto-native-pairing": "KL pairs differ by design (TRL: completion i-1, posttrain: i+1)",
    "grpo-loss beta!=0": "TRL use_bias_correction_kl=True by default: same loss value, different KL gradient",
}
CHECKS = ["sft", "sft-packing", "dpo", "reward", "kto", "kto-native-pairing", "grpo-loss"]
# GRPO loss on fixed completions (compare_worker.grpo_loss_check): each loss type both libraries share, with and without KL
GRPO_LOSS_CASES = [{"loss_type": t, "beta": b} for t in ("grpo", "bnpo", "dr_grpo", "dapo") for b in (0.0, 0.04)] + [
    {"loss_type": "grpo", "beta": 0.04, "importance_sampling_level": "sequence"},
    {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7},
] + [  # TRL 1.16 multiplies the KL term by the (differentiable) importance ratio by default; posttrain has no such option
    {"loss_type": t, "beta": 0.04, "trl": {"use_bias_correction_kl": False}} for t in ("grpo", "bnpo", "dr_grpo", "dapo")
]


def python_for(lib: str) -> str:
    if lib == "posttrain":
        return str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
    py = ROOT / "benchmarks" / f".venv-trl-{PEER_VERSION}" / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} is missing: run benchmarks/peer/make_venv.sh {PEER_VERSION} (or make bench-trl).")
    return str(py)


def run_worker(cfg: dict, timeout: int = 3600) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    proc = subprocess.run([python_for(cfg["lib"]), WORKER, json.dumps(cfg)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({cfg['lib']} {cfg['scenario']} {cfg['mode']}):\n{proc.stderr[-4000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result line:\n{proc.stdout[-2000:]}")


def base_config(scenario: str, size: str, paths: dict, args) -> dict:
    trainer, kind, head, overrides = SCENARIOS[scenario]
    return dict(scenario=trainer, model=paths[head], data=paths[f"{kind}_data"], steps=args.steps,
                warmup_steps=getattr(args, "warmup_steps", 0), batch_size=args.batch_size, max_length=MAX_LENGTH[trainer],
                threads=args.threads, seed=0, overrides=dict(overrides))


# -- correctness ---------------------------------------------------------------------------------------------------


def close(a: float, b: float, tol: float = TOLERANCE) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def compare_runs(ours: dict, peer: dict, tol: float = TOLERANCE) -> dict:
    """First-step loss and every metric both libraries log, plus later-step losses and the first batch's tokens."""
    skip = {"epoch", "step", "learning_rate"}
    a, b = ours["first_log"], peer["first_log"]
    shared = sorted((set(a) & set(b)) - skip)
    rows = [(k, a[k], b[k], close(a[k], b[k], tol)) for k in shared]
    steps_ok = len(ours["losses"]) == len(peer["losses"]) and all(close(x, y, tol) for x, y in zip(ours["losses"], peer["losses"]))
    same_batch = ours["first_batch"] == peer["first_batch"]
    return {
        "loss": (a["loss"], b["loss"]),
        "loss_ok": close(a["loss"], b["loss"], tol),
        "metrics": rows,
        "only_posttrain": sorted(set(a) - set(b) - skip),
        "only_trl": sorted(set(b) - set(a) - skip),
        "all_steps_ok": steps_ok,
        "same_first_batch": same_batch,
        "passed": close(a["loss"], b["loss"], tol) and all(r[3] for r in rows) and steps_ok and same_batch,
    }


def check(argv=None) -> str:
    p = argparse.ArgumentParser(prog="compare.py check")
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=3, help="steps at learning rate 0 (every step's loss is compared)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--scenarios", nargs="+", default=CHECKS)
    a = p.parse_args(argv)
    paths = prepare(a.size, a.examples, a.examples)
    ref = model_dir(a.size, "causal-lm-ref")
    if not (ref / "config.json").exists():
        from posttrain.kit import build_tiny_model

        build_tiny_model("qwen2", size=a.size, seed=1, output_dir=ref)
    out = ["| check | posttrain first loss | TRL first loss | rel. diff | shared metrics within tol. | all steps | same first batch | result |",
           "|---|---|---|---|---|---|---|---|"]
    details, raw = [], {}
    for scenario in a.scenarios:
        if scenario == "grpo-loss":
            continue
        cfg = dict(base_config(scenario, a.size, paths, a), mode="check", dtype=a.dtype)
        if SCENARIOS[scenario][0] in ("dpo", "kto"):
            cfg["ref_model"] = str(ref)  # a reference that differs from the policy, so the loss is not log 2
        if SCENARIOS[scenario][0] == "kto":
            # policy = the seed-1 model, reference = the seed-0 one: with this order KTO's KL estimate on these batches is
            # positive (the other order gives a negative estimate, which both libraries clamp to 0, hiding the KL term)
            cfg["model"], cfg["ref_model"] = str(ref), paths["causal-lm"]
        if scenario == "kto-native-pairing":
            cfg["kto_pairing"] = "native"
        runs = {lib: run_worker(dict(cfg, lib=lib)) for lib in LIBS}
        raw[scenario] = runs
        c = compare_runs(runs["posttrain"], runs["trl"])
        x, y = c["loss"]
        n_ok = sum(r[3] for r in c["metrics"])
        out.append(f"| {scenario} | {x:.8f} | {y:.8f} | {abs(x - y) / max(abs(x), abs(y), 1e-12):.1e} | {n_ok}/{len(c['metrics'])} | "
                   f"{'yes' if c['all_steps_ok'] else 'NO'} | {'yes' if c['same_first_batch'] else 'NO'} | "
                   f"{'PASS' if c['passed'] else 'FAIL' + (f' (known: {KNOWN[scenario]})' if scenario in KNOWN else '')} |")
        lines = [f"{scenario}: " + ", ".join(f"{k} {u:.6g} vs {v:.6g}{'' if ok else ' (FAIL)'}" for k, u, v, ok in c["metrics"])]
        if c["only_posttrain"] or c["only_trl"]:
            lines.append(f"  logged only by posttrain: {c['only_posttrain']}; only by TRL: {c['only_trl']}")
        lines.append(f"  losses per step: posttrain {runs['posttrain']['losses']}, TRL {runs['trl']['losses']}")
        details += lines
    if "grpo-loss" in a.scenarios:
        for case in GRPO_LOSS_CASES:
            cfg = dict(lib=None, scenario="grpo", mode="loss_check", model=paths["causal-lm"], ref_model=str(ref),
                       data=paths["prompts_data"], batch_size=8, num_generations=4, max_completion_length=24, steps=1,
                       overrides=case)
            shared = {k: v for k, v in case.items() if k != "trl"}
            runs = {lib: run_worker(dict(cfg, lib=lib, overrides=dict(shared, **(case.get("trl", {}) if lib == "trl" else {}))))
                    for lib in LIBS}
            name = "grpo-loss " + ",".join(f"{k}={v}" for k, v in shared.items()) + "".join(
                f", TRL {k}={v}" for k, v in case.get("trl", {}).items())
            raw[name] = runs
            c = compare_runs(runs["posttrain"], runs["trl"])
            x, y = c["loss"]
            n_ok = sum(r[3] for r in c["metrics"])
            out.append(f"| {name} | {x:.8f} | {y:.8f} | {abs(x - y):.1e} (abs) | {n_ok}/{len(c['metrics'])} | - | "
                       f"{'yes' if c['same_first_batch'] else 'NO'} | {'PASS' if c['passed'] else 'FAIL'}"
                       f"{' (known: ' + KNOWN['grpo-loss beta!=0'] + ')' if not c['passed'] and case['beta'] and 'trl' not in case else ''} |")
            details.append(f"{name}: " + ", ".join(f"{k} {u:.8g} vs {v:.8g}{'' if ok else ' (FAIL)'}" for k, u, v, ok in c["metrics"]))
            if c["only_posttrain"] or c["only_trl"]:
                details.append(f"  logged only by posttrain: {c['only_posttrain']}; only by TRL: {c['only_trl']}")
    if "dpo" in raw:  # each library against an exact (float64) computation of the same first step
        from benchmarks import dpo_oracle

        exact = dpo_oracle.main(["--size", a.size, "--batch_size", str(a.batch_size), "--examples", str(a.examples)])
        details.append("dpo vs a float64 oracle (benchmarks/dpo_oracle.py), error = library - exact:")
        for k, v in exact.items():
            errs = ", ".join(f"{lib} {raw['dpo'][lib]['first_log'][k] - v:+.2e}" for lib in LIBS)
            details.append(f"  {k}: exact {v:.8g}; {errs}")
    first = next(k for k in raw)
    header = (f"Model: kit qwen2 '{a.size}', {a.dtype}, dropout off, learning rate 0, sequential data order, batch "
              f"{a.batch_size}, {a.steps} steps; tolerance |a-b| <= {TOLERANCE:g} * max(1, |a|, |b|). DPO: sigmoid loss, beta 0.1, "
              "reference = a second kit model (seed 1). TRL " + raw[first]["trl"]["versions"].get("trl", "?") + ".")
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
    p.add_argument("--scenarios", nargs="+", default=["sft", "dpo", "kto", "reward", "grpo", "rloo"])
    a = p.parse_args(argv)
    paths = prepare(a.size, a.examples, a.examples)
    results: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for scenario in a.scenarios:
        for setting in a.settings:
            cfg = dict(base_config(scenario, a.size, paths, a), mode=setting)
            runs = results.setdefault((scenario, setting), {lib: [] for lib in LIBS})
            for i in range(a.repeats):
                for lib in (LIBS if i % 2 == 0 else LIBS[::-1]):
                    r = run_worker(dict(cfg, lib=lib))
                    runs[lib].append(r)
                    print(f"{scenario} {setting} {lib}: {r['tokens_per_s']:.0f} tok/s, {r['samples_per_s']:.2f} samples/s, "
                          f"{r['peak_rss_mb']:.0f} MB, completion lengths {r.get('completion_lengths')}, "
                          f"other procs {r['other_cpu_cores']:.2f} cores, load {r['load_start'][0]:.2f}", flush=True)
    text = speed_table(results, a)
    save(f"speed-{a.size}", {f"{k[0]}/{k[1]}": v for k, v in results.items()}, text)
    print(text)
    return text


def speed_table(results, a) -> str:
    lines = ["| scenario | setting | posttrain tokens/s | TRL tokens/s | speed ratio (pt/TRL) | posttrain peak RSS MB | "
             "TRL peak RSS MB | memory ratio | posttrain samples/s | TRL samples/s | other-process CPU (cores) | load | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
        lines.append(f"| {scenario} | {setting_name} | {tps[0]:.0f} | {tps[1]:.0f} | {tps[0] / tps[1]:.2f} (pairs: {med(pair):.2f}) | "
                     f"{rss[0]:.0f} | {rss[1]:.0f} | {rss[0] / rss[1]:.2f} | {sps[0]:.2f} | {sps[1]:.2f} | {other:.2f} ({label}) | "
                     f"{load:.2f} | {len(pt)}+{len(tr)} |")
    v = next(iter(results.values()))
    vt, vp = v["trl"][0]["versions"], v["posttrain"][0]["versions"]
    head = (f"Model: kit qwen2 '{a.size}', batch {a.batch_size}, {a.steps} steps, tokens/s over steps {a.warmup_steps + 1}-{a.steps} "
            f"(real tokens of the collated examples, same count for both), {a.threads} torch threads, {a.repeats} runs per library "
            f"alternating (A B, B A, ...), fresh process per run, medians. Versions: posttrain {vp.get('posttrain')}, "
            f"TRL {vt.get('trl')}, torch {vt.get('torch')}, transformers {vt.get('transformers')}, accelerate {vt.get('accelerate')}. "
            f"Machine: {os.cpu_count()} CPUs. 'speed ratio' is the ratio of medians; '(pairs: x)' the median of the per-repeat ratios. samples/s counts collated "
            f"examples: sequences (SFT; packed rows with packing), preference pairs (DPO, reward), unpaired rows (KTO) or "
            f"completions (GRPO, RLOO; there tokens/s = completion tokens).")
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
