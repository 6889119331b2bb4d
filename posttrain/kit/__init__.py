"""Offline kit: a shipped tokenizer, tiny model builders and synthetic task datasets.

Everything here works without network access, so tests, examples and demos can run on tiny
models the project builds itself::

    from posttrain.kit import build_tiny_model, load_tokenizer, make_dataset

    tokenizer = load_tokenizer()
    model = build_tiny_model("qwen2", size="tiny")
    train = make_dataset("addition", "prompt_completion", n=1000, seed=0)
    test = make_dataset("addition", "prompt_only", n=100, seed=1, exclude=train)

    vlm, processor = build_tiny_vlm(), build_tiny_processor()   # a tiny Llava and its processor
    gemma3 = build_tiny_vlm(arch="gemma3-vlm")                  # also "smolvlm" (Idefics3); processors alike
    colors = make_dataset("colors", "prompt_completion", n=300, conversational=True)  # rows with images
    motion = make_dataset("motion", "prompt_completion", n=400, conversational=True)  # rows with 4-frame videos

Importing this package is cheap: torch, transformers and datasets are only imported when a
function that needs them is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.kit.tasks import TASKS, Task, get_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from posttrain.kit.datasets import FORMATS, make_dataset, read_dataset, write_dataset
    from posttrain.kit.models import SIZES, build_tiny_model, build_tiny_processor, build_tiny_vlm

__all__ = [
    "FORMATS",
    "SIZES",
    "TASKS",
    "Task",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_vlm",
    "get_task",
    "load_tokenizer",
    "make_dataset",
    "read_dataset",
    "tokenizer_path",
    "write_dataset",
]

_LAZY = {
    "build_tiny_model": "posttrain.kit.models",
    "build_tiny_vlm": "posttrain.kit.models",
    "build_tiny_processor": "posttrain.kit.models",
    "SIZES": "posttrain.kit.models",
    "make_dataset": "posttrain.kit.datasets",
    "write_dataset": "posttrain.kit.datasets",
    "read_dataset": "posttrain.kit.datasets",
    "FORMATS": "posttrain.kit.datasets",
}


def tokenizer_path() -> str:
    """Path of the shipped tokenizer folder (loadable with ``AutoTokenizer.from_pretrained``)."""
    return str(Path(__file__).resolve().parent / "tokenizer")


def load_tokenizer() -> PreTrainedTokenizerBase:
    """Load the shipped byte-level BPE tokenizer (1024 tokens, ChatML chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_path())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
