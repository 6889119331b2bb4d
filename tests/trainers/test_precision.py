"""The default precision: bf16 where the hardware runs it natively (a bf16 GPU, or a CPU with bf16 instructions),
fp32 elsewhere; the launcher's mixed_precision wins; generation under mixed precision casts the weights once."""

import builtins
import io
from types import SimpleNamespace

import pytest
import torch

from posttrain import SFTConfig
from posttrain.trainers import base, speed
from tests.conftest import train_args


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(base, "has_accelerator", lambda: False)  # use_cpu
    monkeypatch.setattr(speed, "has_accelerator", lambda: False)  # bf16_supported
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_default_is_bf16_only_with_native_bf16(native, no_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: native)
    args = train_args(SFTConfig, tmp_path)
    assert args.bf16 is native and not args.fp16
    assert args.use_cpu


@pytest.mark.parametrize(("launcher", "bf16", "fp16"), [("no", False, False), ("bf16", True, False),
                                                       ("fp16", False, True)])
def test_launcher_mixed_precision_wins(launcher, bf16, fp16, no_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    if fp16:  # fp16 mixed precision needs a GPU to start; only the resolution of the flags is checked here
        monkeypatch.setattr(base.TrainingArguments, "__post_init__", lambda self: None)
    args = train_args(SFTConfig, tmp_path)
    assert (args.bf16, args.fp16) == (bf16, fp16)


def test_explicit_bf16_false_is_kept(no_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert train_args(SFTConfig, tmp_path, bf16=False).bf16 is False


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    ("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n", True),   # x86 AVX512-BF16 (e.g. AMD Zen 4, Cooper Lake)
    ("flags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n", True),         # Intel AMX
    ("Features\t: fp asimd sve bf16 i8mm\n", True),                    # Arm (e.g. Neoverse V1)
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n", False),         # AVX-512 without bf16
])
def test_cpu_bf16_detection_falls_back_to_cpu_flags(cpuinfo, expected, monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: (_ for _ in ()).throw(RuntimeError("private API gone")),
                            raising=False)
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO("processor\t: 0\n" + cpuinfo)
                        if path == "/proc/cpuinfo" else real_open(path, *a, **k))
    assert base.cpu_has_native_bf16() is expected


def test_generation_under_one_autocast_region_casts_weights_once(tiny_model_dir, tokenizer):
    """BaseTrainer.generation_precision encloses a generation in one autocast region: the weights are cast to bf16
    once per call instead of once per generated token."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    from posttrain.rollout import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    ids = [[5, 6, 7, 8], [9, 10]]
    num_matrices = sum(1 for p in model.parameters() if p.dim() == 2)
    casts = {}
    for outer in (False, True):
        forward = model.forward

        def autocast_forward(*a, _f=forward, **k):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _f(*a, **k)

        model.forward = autocast_forward  # what accelerate does to a model under bf16 mixed precision
        args = SimpleNamespace(bf16=outer, fp16=False, device=torch.device("cpu"))
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            with base.BaseTrainer.generation_precision(SimpleNamespace(args=args)):
                generate(model, tokenizer, prompt_ids=ids, max_new_tokens=6,
                         generation_kwargs={"min_new_tokens": 6})
        model.forward = forward
        casts[outer] = sum(e.count for e in prof.key_averages(group_by_input_shape=True)
                           if e.key == "aten::_to_copy" and e.input_shapes and tuple(e.input_shapes[0]) in shapes)
    # per-forward regions: every matrix is cast at each of the 6 forwards; one enclosing region: once
    assert casts[False] >= 6 * (num_matrices - 1), casts
    assert casts[True] <= num_matrices, casts


@pytest.mark.parametrize("given, expected", [({}, True), ({"gradient_checkpointing": False}, False),
                                             ({"activation_checkpointing": False}, False)])
def test_checkpointing_field_carries_to_transformers_name_without_warning(given, expected, tmp_path):
    """TRL's field name (`gradient_checkpointing`, default True as in TRL 1.x) reaches transformers 5's
    `activation_checkpointing`, which the Trainer reads, without transformers' deprecation warning."""
    import warnings

    from posttrain import PPOConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = SFTConfig(output_dir=str(tmp_path), **given)
    assert args.activation_checkpointing is expected and args.gradient_checkpointing is expected
    assert PPOConfig(output_dir=str(tmp_path)).activation_checkpointing is False  # TRL 0.21's default for PPO
