"""Shared fixtures: everything offline, two CPU threads, tiny models built once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# The suite's numerical checks (equal losses, ratios of exactly 1) and learning thresholds were set in fp32. On a
# CPU with native bf16 posttrain's default is bf16 mixed precision; the suite pins fp32 the way
# `accelerate launch --mixed_precision no` does, and the tests of the bf16 default (tests/trainers/test_precision.py) lift it.
os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "no")

import pytest
import torch

SEED = int(os.environ.get("POSTTRAIN_TEST_SEED", "0"))
"""The training seed of the learning tests (train_args, the shared SFT'd model). `make test-seeds` runs them with
seeds 0, 1 and 2; each learning test's docstring records its three margins, and its asserted margin is one all
three clear (docs/reliability.md, "Learning tests")."""

# Tiny models train fastest on one thread, and one thread does not thrash a busy 2-core machine.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """A test whose name says it learns ("learns" in it) is a learning test: `-m learning` selects them all. A test
    that runs a shipped notebook or example script end to end ("notebook" or "example_script" in its name) is an
    example test (`-m example`). `make test` runs both; `make test-fast` leaves both out."""
    for item in items:
        if "learns" in item.name:
            item.add_marker(pytest.mark.learning)
        if "notebook" in item.name or "example_script" in item.name:
            item.add_marker(pytest.mark.example)


@pytest.fixture(scope="session")
def tokenizer():
    from posttrain.kit import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2-style causal LM saved as an ordinary model folder (with the kit tokenizer)."""
    from posttrain.kit import build_tiny_model

    return build_tiny_model("qwen2", size="tiny", output_dir=tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    from posttrain.kit import build_tiny_model

    return build_tiny_model("gpt2", size="tiny", output_dir=tmp_path_factory.mktemp("tiny-gpt2"))


PRECISIONS = ["fp32", "default"]
"""Learning tests that also run in posttrain's default precision (bf16 on a CPU with native bf16, else fp32)."""


def use_precision(monkeypatch, precision: str) -> None:
    """``"default"``: lift the suite's fp32 pin so configs take posttrain's own default; ``"fp32"``: keep it."""
    if precision == "default":
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def train_args(cls, tmp_path, **overrides):
    """Small, quiet, deterministic training arguments for tests."""
    defaults = dict(output_dir=str(tmp_path / "out"), report_to=[], save_strategy="no", disable_tqdm=True,
                    logging_steps=1, per_device_train_batch_size=8, learning_rate=1e-3, seed=SEED,
                    dataloader_num_workers=0)
    defaults.update(overrides)
    return cls(**defaults)


@pytest.fixture(scope="session")
def sft_reverse_dir(tmp_path_factory):
    """A small Qwen2-style model SFT'd on 'reverse 3-5 letters' where 40% of the training answers are wrong:
    its greedy answer is almost always right (about 0.97 held out) but its samples (temperature 1) are right only
    about 40% of the time, so online methods have a clear, well-conditioned signal to learn from (sharpening
    the right mode). Built once per session (about 30 s); shared by the online-trainer learning tests."""
    import random

    from datasets import Dataset

    from posttrain import SFTConfig, SFTTrainer
    from posttrain.kit import build_tiny_model, get_task, load_tokenizer

    out = tmp_path_factory.mktemp("sft-reverse")
    tok = load_tokenizer()
    task = get_task("reverse", min_len=3, max_len=5)
    rng = random.Random(0)
    sft = reverse_sft_data()
    rows = [{"prompt": p, "completion": task.wrong_answer(rng, p) if rng.random() < 0.4 else c}
            for p, c in zip(sft["prompt"], sft["completion"])]
    model = build_tiny_model("qwen2", size="small", seed=SEED)
    args = train_args(SFTConfig, out, max_steps=300, per_device_train_batch_size=32, learning_rate=2e-3,
                      lr_scheduler_type="cosine", warmup_steps=20, logging_steps=50, padding_free=True)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


def reverse_sft_data():
    from posttrain.kit import make_dataset

    return make_dataset("reverse", "prompt_completion", n=4000, seed=0, min_len=3, max_len=5)


def reverse_prompts(n: int, seed: int, exclude=None, **kwargs):
    """Prompt-only 'reverse 3-5 letters' rows (``prompt``, ``answer``) disjoint from the SFT data of
    :func:`sft_reverse_dir` (and from ``exclude``)."""
    from posttrain.kit import make_dataset

    avoid = [reverse_sft_data()] if exclude is None else [reverse_sft_data(), exclude]
    return make_dataset("reverse", "prompt_only", n=n, seed=seed, exclude=avoid, min_len=3, max_len=5, **kwargs)


def run_notebook(name: str, tmp_path, timeout: int = 300):
    """Execute ``examples/notebooks/<name>`` headless in ``tmp_path`` (figures become PNG outputs); return the
    executed notebook and its code cells' text outputs joined."""
    import os
    import pathlib

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    env_backup = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_backup is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_backup
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    return nb, outputs


def has_figure(nb) -> bool:
    return any("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for o in cell.get("outputs", []))


def run_example_script(script: str, *args: str, timeout: int = 300):
    """Run ``examples/scripts/<script>`` with ``args`` in a fresh, offline, one-thread process; the completed process."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "examples" / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


@pytest.fixture(scope="session")
def processor():
    """The kit's tiny vision-language processor (Llava: kit tokenizer + <image>, CLIP image processor)."""
    from posttrain.kit.models import build_tiny_processor

    return build_tiny_processor()


@pytest.fixture(scope="session")
def vlm_dir(tmp_path_factory):
    """The kit's tiny Llava, saved with its processor."""
    from posttrain.kit.models import build_tiny_vlm

    return build_tiny_vlm(output_dir=tmp_path_factory.mktemp("tiny-llava"))
