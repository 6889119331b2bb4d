"""Synthetic vision tasks: rows whose answer can only be read off the image.

``colors``: a small RGB image filled with one of :data:`COLORS` (plus a little per-pixel noise, so no two images
are equal), the question "What color is this?" and the colour's name as the answer. Every row asks the same
question, so a model that answers better than chance (1 in ``len(COLORS)``) must be looking at the image.

Rows follow TRL's vision dataset layout: an ``images`` column (a list of PIL images) beside the text columns, and
conversational messages whose content is a list of parts, ``{"type": "image"}`` where an image goes::

    {"images": [<PIL.Image>],
     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is this?"}]}],
     "completion": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
     "answer": "red"}

Standard (plain text) rows mark the image with the kit VLM's image token instead:
``{"images": [...], "prompt": "<image>What color is this?\\n", "completion": "red"}``.

The ``preference`` format (TRL's vision preference layout, for DPO) has ``chosen`` = the image's colour and
``rejected`` = another colour, drawn uniformly from the other five:
``{"images": [...], "prompt": [...], "chosen": [<assistant message "red">], "rejected": [<assistant message
"blue">], "answer": "red"}`` (standard rows: ``"chosen": "red", "rejected": "blue"``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["COLORS", "VISION_FORMATS", "VISION_TASKS", "color_image", "make_vision_rows"]

VISION_TASKS: tuple[str, ...] = ("colors",)
"""Task names of :func:`make_vision_rows` (also accepted by :func:`posttrain.kit.make_dataset`)."""

VISION_FORMATS: tuple[str, ...] = ("language_modeling", "prompt_only", "prompt_completion", "preference")
"""Dataset formats of the vision tasks."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 40),
    "purple": (130, 40, 160),
    "white": (245, 245, 245),
}
"""Colour names and their RGB values: far apart, and each name starts with a different kit token."""

QUESTION = "What color is this?"
IMAGE_TOKEN = "<image>"  # posttrain.kit.models.IMAGE_TOKEN (not imported: that module needs transformers)


def color_image(color: str, rng: random.Random, size: int = 32, noise: int = 24) -> Image:
    """A ``size`` x ``size`` RGB image of ``color`` with independent uniform noise in [-noise, noise] per pixel
    and channel."""
    import numpy as np
    from PIL import Image as PILImage

    base = np.array(COLORS[color], dtype=np.int16)
    jitter = np.random.default_rng(rng.getrandbits(64)).integers(-noise, noise + 1, size=(size, size, 3))
    return PILImage.fromarray(np.clip(base + jitter, 0, 255).astype(np.uint8), mode="RGB")


def _prompt(conversational: bool, system: list[dict[str, Any]]) -> Any:
    if not conversational:
        return f"{IMAGE_TOKEN}{QUESTION}\n"
    return [*system, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def _completion(answer: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": [{"type": "text", "text": answer}]}] if conversational else answer


def make_vision_rows(
    task: str = "colors",
    format: str = "prompt_completion",
    n: int = 1000,
    seed: int = 0,
    conversational: bool = True,
    *,
    system_prompt: str | None = None,
    size: int = 32,
    noise: int = 24,
) -> list[dict[str, Any]]:
    """Rows of a vision task (see the module docstring) as a list of dicts.

    Args:
        task: a name in :data:`VISION_TASKS`.
        format: one of :data:`VISION_FORMATS`: ``language_modeling`` (``messages``), ``prompt_only``
            (``prompt``), ``prompt_completion`` (``prompt``, ``completion``) or ``preference`` (``prompt``,
            ``chosen``: the right colour, ``rejected``: a wrong one); all with ``images`` and, except
            ``language_modeling``, ``answer``.
        n: number of rows, each colour equally often (up to one).
        seed: sampling seed (different seeds give different images: one for training, another for held-out rows).
        conversational: message lists with image parts (default), else strings with the image token.
        system_prompt: if set, conversational prompts start with this system message.
        size, noise: image side in pixels and per-pixel noise amplitude.
    """
    if task not in VISION_TASKS:
        raise ValueError(f"unknown vision task {task!r}; choose one of {list(VISION_TASKS)}")
    if format not in VISION_FORMATS:
        raise ValueError(f"the {task} task has the formats {list(VISION_FORMATS)}, not {format!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"posttrain.kit/{task}/{seed}")
    rejected_rng = random.Random(f"posttrain.kit/{task}/{seed}/rejected")
    system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    names = sorted(COLORS)
    answers = [names[i % len(names)] for i in range(n)]  # balanced: chance is exactly 1 in len(COLORS)
    rng.shuffle(answers)
    rows: list[dict[str, Any]] = []
    for answer in answers:
        row: dict[str, Any] = {"images": [color_image(answer, rng, size, noise)]}
        prompt = _prompt(conversational, system)
        if format == "language_modeling":
            row["messages" if conversational else "text"] = (
                prompt + _completion(answer, True) if conversational else prompt + answer)
        else:
            row["prompt"] = prompt
            if format == "prompt_completion":
                row["completion"] = _completion(answer, conversational)
            elif format == "preference":  # a stream of its own: the images are the other formats' of this seed
                wrong = rejected_rng.choice([name for name in names if name != answer])
                row["chosen"] = _completion(answer, conversational)
                row["rejected"] = _completion(wrong, conversational)
            row["answer"] = answer
        rows.append(row)
    return rows
