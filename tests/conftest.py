"""Shared fixtures: everything offline, two CPU threads, tiny models built once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch

# Tiny models train fastest on one thread, and one thread does not thrash a busy 2-core machine.
torch.set_num_threads(1)


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


def train_args(cls, tmp_path, **overrides):
    """Small, quiet, deterministic training arguments for tests."""
    defaults = dict(output_dir=str(tmp_path / "out"), report_to=[], save_strategy="no", disable_tqdm=True,
                    logging_steps=1, per_device_train_batch_size=8, learning_rate=1e-3, seed=0,
                    dataloader_num_workers=0)
    defaults.update(overrides)
    return cls(**defaults)
