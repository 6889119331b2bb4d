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

``motion``: a video task. Each row holds one clip of ``frames`` (default 4) ``size`` x ``size`` frames: a bright square
on a noisy dark background moves left, right, up or down by the same step from frame to frame; the question "Which
way does the square move?" is answered with the direction. The square's position in any one frame has the same
distribution for every direction (both coordinates are drawn alike), so a single frame, or the frames in a random
order, say nothing about the answer: only the order of the frames does. Rows carry a ``videos`` column (a list of
videos, each a list of PIL frames) and a ``{"type": "video"}`` part (standard rows: ``"<video>"``)::

    {"videos": [[<PIL.Image>, <PIL.Image>, <PIL.Image>, <PIL.Image>]],
     "prompt": [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": "Which way does the square move?"}]}],
     "completion": [{"role": "assistant", "content": [{"type": "text", "text": "left"}]}],
     "answer": "left"}
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["COLORS", "DIRECTIONS", "VIDEO_TASKS", "VISION_FORMATS", "VISION_TASKS", "color_image",
           "make_vision_rows", "motion_clip"]

VIDEO_TASKS: tuple[str, ...] = ("motion",)
"""Vision tasks whose rows hold videos (a ``videos`` column) rather than images."""

VISION_TASKS: tuple[str, ...] = ("colors", *VIDEO_TASKS)
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

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""The ``motion`` task's answers and their (x, y) unit steps (y grows downwards)."""

QUESTION = "What color is this?"
MOTION_QUESTION = "Which way does the square move?"
IMAGE_TOKEN = "<image>"  # posttrain.kit.models.IMAGE_TOKEN (not imported: that module needs transformers)
VIDEO_TOKEN = "<video>"  # posttrain.data.vision.VIDEO_TOKEN: the video placeholder of standard rows


def color_image(color: str, rng: random.Random, size: int = 32, noise: int = 24) -> Image:
    """A ``size`` x ``size`` RGB image of ``color`` with independent uniform noise in [-noise, noise] per pixel
    and channel."""
    import numpy as np
    from PIL import Image as PILImage

    base = np.array(COLORS[color], dtype=np.int16)
    jitter = np.random.default_rng(rng.getrandbits(64)).integers(-noise, noise + 1, size=(size, size, 3))
    return PILImage.fromarray(np.clip(base + jitter, 0, 255).astype(np.uint8), mode="RGB")


def motion_clip(direction: str, rng: random.Random, size: int = 32, frames: int = 4, square: int = 8,
                noise: int = 24) -> list[Image]:
    """``frames`` ``size`` x ``size`` RGB frames of a bright ``square`` moving one step per frame in
    ``direction`` (a key of :data:`DIRECTIONS`) on a dark background with uniform noise in [-noise, noise].

    A clip's step is 1/(frames + 2) to 1/(frames - 1) of the free range (``size - square``), its start is uniform
    where the square stays inside, and the other coordinate is drawn the same way, at a random frame: each frame's
    square position has the same distribution whatever the direction."""
    import numpy as np
    from PIL import Image as PILImage

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {list(DIRECTIONS)}")
    span = size - square
    if frames < 2 or span < frames - 1:
        raise ValueError(f"a motion clip needs frames >= 2 and size - square >= frames - 1, got frames={frames}, "
                         f"size={size}, square={square}")

    def track() -> list[int]:  # positions along a moving axis, increasing
        step = rng.randint(max(1, span // (frames + 2)), span // (frames - 1))
        start = rng.randint(0, span - step * (frames - 1))
        return [start + t * step for t in range(frames)]

    along = track()
    if DIRECTIONS[direction][0] + DIRECTIONS[direction][1] < 0:  # left, up
        along.reverse()
    across = rng.choice(track())
    pixels = np.random.default_rng(rng.getrandbits(64))
    clip = []
    for t in range(frames):
        x, y = (along[t], across) if DIRECTIONS[direction][0] else (across, along[t])
        frame = 50 + pixels.integers(-noise, noise + 1, size=(size, size, 3))
        frame[y:y + square, x:x + square] = 230 + pixels.integers(-noise, noise + 1, size=(square, square, 3)) // 2
        clip.append(PILImage.fromarray(np.clip(frame, 0, 255).astype(np.uint8), mode="RGB"))
    return clip


def _prompt(conversational: bool, system: list[dict[str, Any]], task: str = "colors") -> Any:
    kind, token, question = ("video", VIDEO_TOKEN, MOTION_QUESTION) if task in VIDEO_TASKS else (
        "image", IMAGE_TOKEN, QUESTION)
    if not conversational:
        return f"{token}{question}\n"
    return [*system, {"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]


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
    frames: int = 4,
    square: int = 8,
) -> list[dict[str, Any]]:
    """Rows of a vision task (see the module docstring) as a list of dicts.

    Args:
        task: a name in :data:`VISION_TASKS`.
        format: one of :data:`VISION_FORMATS`: ``language_modeling`` (``messages``), ``prompt_only``
            (``prompt``), ``prompt_completion`` (``prompt``, ``completion``) or ``preference``
            (``prompt``, ``chosen``: the right colour, ``rejected``: a wrong one); all with ``images`` and, except
            ``language_modeling``, ``answer``. Video tasks have ``videos`` (one clip per row) instead of ``images``.
        n: number of rows, each answer (colour, direction) equally often (up to one).
        seed: sampling seed (different seeds give different images: one for training, another for held-out rows).
        conversational: message lists with image parts (default), else strings with the image token.
        system_prompt: if set, conversational prompts start with this system message.
        size, noise: image side in pixels and per-pixel noise amplitude.
        frames, square: ``motion`` only: frames per clip and the square's side in pixels.
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
    names = sorted(DIRECTIONS if task in VIDEO_TASKS else COLORS)
    answers = [names[i % len(names)] for i in range(n)]  # balanced: chance is exactly 1 in len(names)
    rng.shuffle(answers)
    rows: list[dict[str, Any]] = []
    for answer in answers:
        row: dict[str, Any] = ({"videos": [motion_clip(answer, rng, size, frames, square, noise)]}
                               if task in VIDEO_TASKS else {"images": [color_image(answer, rng, size, noise)]})
        prompt = _prompt(conversational, system, task)
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
