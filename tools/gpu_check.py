"""`make gpu-check`: posttrain's CUDA paths on a machine with one CUDA GPU, in a few minutes, as a PASS/FAIL table and a
JSON report (issue 20). Every check runs in its own process with a time limit, so one failure or hang does not stop
the others.

    .venv/bin/python tools/gpu_check.py [--only NAME ...] [--report outputs/gpu-check.json]

Checks: the fused head against the unfused path on CUDA (fp32 to 1e-5, bf16 to bf16 rounding) and its peak memory at
a 151,936-token vocabulary; SFT, DPO and GRPO for a few steps in bf16 and fp16 on a kit model and on a real-shape
model (Qwen2.5-0.5B's widths and vocabulary, 2 layers; a finite loss that falls on repeated data); DeepSpeed ZeRO-2
and ZeRO-3 on one GPU; Liger where liger-kernel is installed; vLLM generation in colocate and server mode where vllm
is installed; the tests marked `gpu`. Without a CUDA GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 150  # per check


# -- the checks: each runs in a fresh process (``python tools/gpu_check.py --run NAME``) and returns a detail string ----
def _data(kind: str, n: int = 64):
    from posttrain.kit import make_dataset

    return {"sft": lambda: make_dataset("reverse", "prompt_completion", n=n, seed=0),
            "dpo": lambda: make_dataset("sort", "preference", n=n, seed=0),
            "grpo": lambda: make_dataset("reverse", "prompt_only", n=n, seed=0, min_len=3, max_len=5)}[kind]()


def _model(size: str, out: str) -> str:
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", size=size, seed=0, output_dir=os.path.join(out, f"model-{size}"))


def _train(trainer: str, size: str, precision: str, extra: dict | None = None) -> str:
    """A few steps of ``trainer`` on the same rows again and again: the loss must be finite and fall."""
    import torch

    import posttrain

    out = tempfile.mkdtemp(prefix=f"gpu-check-{trainer}-")
    model = _model(size, out)
    config_cls, trainer_cls = {"sft": (posttrain.SFTConfig, posttrain.SFTTrainer),
                               "dpo": (posttrain.DPOConfig, posttrain.DPOTrainer),
                               "grpo": (posttrain.GRPOConfig, posttrain.GRPOTrainer)}[trainer]
    kwargs = dict(output_dir=out, report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1, max_steps=6,
                  per_device_train_batch_size=4, learning_rate=1e-4 if size == "real" else 3e-3,
                  bf16=precision == "bf16", fp16=precision == "fp16", seed=0)
    data = _data(trainer, n=4)  # one batch, repeated: the loss falls
    trainer_kwargs = {}
    if trainer == "grpo":
        kwargs.update(num_generations=4, max_completion_length=16)
        trainer_kwargs["reward_funcs"] = lambda completions, **kw: [-abs(len(c) - 10) / 10.0 for c in completions]
    kwargs.update(extra or {})
    t = trainer_cls(model, args=config_cls(**kwargs), train_dataset=data, **trainer_kwargs)
    t.train()
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)):
        raise AssertionError(f"non-finite loss: {losses}")
    if trainer != "grpo" and not losses[-1] < losses[0]:
        raise AssertionError(f"the loss did not fall: {losses}")
    mem = torch.cuda.max_memory_allocated() / 2**20
    return f"losses {losses[0]:.4g} -> {losses[-1]:.4g}, peak {mem:.0f} MiB, device {t.args.device}"


def check_fused_head() -> str:
    import torch

    from posttrain.data.preference import build_rows
    from posttrain.kit import build_tiny_model
    from posttrain.trainers.logprobs import completion_logps

    torch.manual_seed(0)
    model = build_tiny_model("qwen2", size="small", seed=0).cuda()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 1000, (int(n),), generator=gen).tolist() for n in (5, 9, 4)]
    completions = [torch.randint(3, 1000, (int(n),), generator=gen).tolist() for n in (7, 3, 12)]
    rows = {k: v.cuda() for k, v in build_rows(prompts, completions, pad_token_id=0).items()}
    details = []
    for dtype, tol in ((None, 1e-5), (torch.bfloat16, 3e-2)):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            a = completion_logps(model, rows, fused=True, with_token_stats=True)
            b = completion_logps(model, rows, fused=False, with_token_stats=True)
        diff = (a.token_logps - b.token_logps).abs().max().item()
        if diff > tol:
            raise AssertionError(f"{dtype or 'fp32'}: fused and unfused log-probs differ by {diff}")
        details.append(f"{dtype or 'fp32'} max diff {diff:.1e}")
    # peak memory of one forward + backward at a real vocabulary, 4096 tokens
    from posttrain.models.fused_head import fused_head_logps

    v, h, n = 151_936, 896, 4096
    weight = torch.randn(v, h, device="cuda", requires_grad=True)
    hidden = torch.randn(n, h, device="cuda", requires_grad=True)
    targets = torch.randint(0, v, (n,), device="cuda")
    peaks = {}
    for fused in (True, False):
        weight.grad = hidden.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        if fused:
            logps = fused_head_logps(hidden, weight, None, targets)[0]
        else:
            logps = torch.log_softmax((hidden @ weight.t()).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
        logps.sum().backward()
        torch.cuda.synchronize()
        peaks[fused] = (torch.cuda.max_memory_allocated() - base) / 2**20
    if not peaks[True] < 0.5 * peaks[False]:
        raise AssertionError(f"fused peak {peaks[True]:.0f} MiB not below half the unfused {peaks[False]:.0f} MiB")
    details.append(f"4096 tokens x 151,936: peak above inputs fused {peaks[True]:.0f} MiB, unfused {peaks[False]:.0f} MiB")
    return "; ".join(details)


def check_zero(stage: int) -> str:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return "SKIP: deepspeed is not installed"
    out = tempfile.mkdtemp(prefix=f"gpu-check-zero{stage}-")
    model = _model("small", out)
    cfg = ROOT / "posttrain" / "accelerate_configs" / f"deepspeed_zero{stage}.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes", "1",
           "--mixed_precision", "bf16", str(ROOT / "tests" / "distributed" / "matrix_run.py"), "dpo", model,
           os.path.join(out, "run"), "4", json.dumps({"bf16": True})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S - 10, cwd=str(ROOT),
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        raise AssertionError(proc.stderr[-2000:])
    log = json.loads(Path(out, "run", "log.json").read_text())
    losses = [h["loss"] for h in log["log"] if "loss" in h]
    return f"ZeRO-{log['setup']['zero_stage']} on {log['setup']['device']}: losses {losses[0]:.4g} -> {losses[-1]:.4g}"


def check_liger() -> str:
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return "SKIP: liger-kernel is not installed"
    return _train("sft", "small", "bf16", {"use_liger_kernel": True})


def _vllm_missing() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("vllm") is not None else "SKIP: vllm is not installed"


def check_vllm_colocate() -> str:
    return _vllm_missing() or _train("grpo", "small", "bf16", {"use_vllm": True, "vllm_mode": "colocate",
                                                              "vllm_gpu_memory_utilization": 0.2})


def check_vllm_server() -> str:
    missing = _vllm_missing()
    if missing:
        return missing
    out = tempfile.mkdtemp(prefix="gpu-check-vllm-")
    model = _model("small", out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "vllm-serve", "--model", model, "--host",
                               "127.0.0.1", "--port", str(port), "--gpu_memory_utilization", "0.3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
    try:
        return _train("grpo", "small", "bf16", {"use_vllm": True, "vllm_mode": "server",
                                                "vllm_server_base_url": f"http://127.0.0.1:{port}",
                                                "vllm_server_timeout": 120})
    finally:
        server.terminate()
        server.wait(timeout=30)


def check_gpu_tests() -> str:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=LIMIT_S - 10, cwd=str(ROOT))
    if proc.returncode != 0:
        raise AssertionError(proc.stdout[-2000:])
    return proc.stdout.strip().splitlines()[-1]


CHECKS = {"fused-head": check_fused_head}
for _trainer in ("sft", "dpo", "grpo"):
    for _precision in ("bf16", "fp16"):
        for _size in ("small", "real"):
            CHECKS[f"{_trainer}-{_precision}-{'kit' if _size == 'small' else 'real'}"] = (
                lambda t=_trainer, p=_precision, s=_size: _train(t, s, p))
CHECKS.update({"zero2": lambda: check_zero(2), "zero3": lambda: check_zero(3), "liger": check_liger,
               "vllm-colocate": check_vllm_colocate, "vllm-server": check_vllm_server, "gpu-tests": check_gpu_tests})


def run_one(name: str) -> None:
    start = time.perf_counter()
    try:
        detail, status = CHECKS[name](), "PASS"
        if detail.startswith("SKIP"):
            status, detail = "SKIP", detail[6:]
    except Exception as err:  # noqa: BLE001: every failure is a row of the table
        status, detail = "FAIL", f"{type(err).__name__}: {err}"
    print(json.dumps({"check": name, "status": status, "detail": detail, "seconds": time.perf_counter() - start}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py")
    p.add_argument("--only", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    p.add_argument("--report", default=str(ROOT / "outputs" / "gpu-check.json"))
    p.add_argument("--run", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.run:
        run_one(a.run)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing was checked.")
        return 2
    device = torch.cuda.get_device_name(0)
    rows = []
    for name in a.only:
        try:
            proc = subprocess.run([sys.executable, __file__, "--run", name], capture_output=True, text=True,
                                  timeout=LIMIT_S, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
            lines = [line for line in proc.stdout.splitlines() if line.startswith('{"check"')]
            row = json.loads(lines[-1]) if lines else {"check": name, "status": "FAIL", "seconds": None,
                                                       "detail": (proc.stderr or proc.stdout)[-1500:]}
        except subprocess.TimeoutExpired:
            row = {"check": name, "status": "FAIL", "detail": f"over the {LIMIT_S} s limit", "seconds": LIMIT_S}
        rows.append(row)
        print(f"{row['status']:4}  {name:22} {row['detail'][:160]}", flush=True)
    versions = {}
    for package in ("torch", "transformers", "accelerate", "deepspeed", "vllm", "liger_kernel"):
        try:
            versions[package] = __import__("importlib.metadata").metadata.version(package.replace("_", "-"))
        except Exception:  # noqa: BLE001
            versions[package] = None
    Path(a.report).parent.mkdir(parents=True, exist_ok=True)
    Path(a.report).write_text(json.dumps({"device": device, "versions": versions, "checks": rows}, indent=1))
    print("\n| check | result | seconds | detail |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['check']} | {row['status']} | {row['seconds'] or 0:.0f} | {row['detail'][:200]} |")
    print(f"\n{device}; report: {a.report}")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
