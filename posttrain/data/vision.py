"""Vision-language data: datasets whose rows carry images, and the collator that turns them into model inputs.

A **vision dataset** is an SFT dataset (language modeling or prompt-completion, standard or conversational) with
an ``images`` column (a list of images per row) or an ``image`` column (one image per row). Conversational
content is a string or a list of parts, ``{"type": "image"}`` where an image goes and
``{"type": "text", "text": ...}``; standard (plain text) rows mark each image with the processor's image token
(e.g. ``"<image>"``). The i-th image part of a row takes the row's i-th image.

Images are processed batch by batch, by :class:`DataCollatorForVisionLanguageModeling`, not when the dataset is
prepared: a prepared vision dataset keeps its raw columns. Each row is read in two steps:

1. its text is tokenized by :func:`~posttrain.data.tokenize.tokenize_sft_example`, as for text-only SFT, with
   one image token per image and the same loss masks (prompt and completion tokenized separately, assistant
   tokens found through the chat template's ``{% generation %}`` markers);
2. the processor turns the part of the text that holds the images (the rendered prompt, or the whole text of
   language-modeling rows) and the images into ``input_ids`` (each image placeholder expanded into the image's
   tokens) and ``pixel_values``; the rest of the step-1 tokens (the completion) follow. The processor's tokens are
   taken as they are: an expansion may be a run of image tokens (Llava) or hold text the processor writes around
   them (Gemma 3's ``<start_of_image>`` ... ``<end_of_image>`` between blank lines, Idefics3/SmolVLM's tiles with
   their ``<fake_token_around_image>`` and row/column tags). Runs are lined up with step 1's tokens token by token
   (:func:`carry_over`), anything else by characters (:func:`carry_over_expanded`, with the processor's
   ``text_replacement_offsets``), so the loss masks carry over to the text around the images.

``labels`` are ``-100`` on padding, on every token of an image's expansion, on the first token, and on the tokens
step 1's masks exclude. ``max_length`` cuts text only: never an expansion, nor the text between two images.

**Videos.** A row may also carry a ``videos`` column (a list of videos per row) or a ``video`` column (one video);
a video is a list of frames (PIL images or HxWx3 uint8 arrays, all of one size). ``{"type": "video"}`` parts (or
the video token, :data:`VIDEO_TOKEN` unless the processor names its own, in standard text) mark where the i-th
video goes. A processor with a video processor, for a model that takes videos, gets them as ``videos=`` and expands
each video token itself (its video tokens are masked like image tokens); otherwise every video is read as its
frames, one image each: each video part becomes one image part per frame, in order (``frame_separator`` text
between frames), and the frames go to the processor as images.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .collators import IGNORE_INDEX, label_ids, pad_sequences
from .formats import LANGUAGE_MODELING, PROMPT_COMPLETION, DatasetFormat, DatasetFormatError, detect_format
from .templates import render_messages
from .tokenize import check_truncation_mode, tokenize_sft_example

IMAGE_COLUMNS = ("images", "image")
VIDEO_COLUMNS = ("videos", "video")
MEDIA_COLUMNS = IMAGE_COLUMNS + VIDEO_COLUMNS
VIDEO_TOKEN = "<video>"
"""The video placeholder of standard (plain text) rows when the processor declares no ``video_token``."""


def image_column(columns: Iterable[str]) -> str | None:
    """The column holding a dataset's images (``images``, else ``image``), or None for a text-only dataset."""
    columns = set(columns)
    return next((c for c in IMAGE_COLUMNS if c in columns), None)


def template_kwargs(processor, conversational: bool) -> dict[str, Any]:
    """The keyword arguments that render a row's conversations with the processor's chat template (none for
    standard rows); a :class:`DatasetFormatError` when conversational rows meet a processor without a template."""
    if not conversational:
        return {}
    template = processor_chat_template(processor)
    if template is None:
        raise DatasetFormatError(
            f"The rows are conversational but the processor {type(processor).__name__} has no chat template "
            "(neither it nor its tokenizer). Set `processor.chat_template`, or pass `chat_template_path`.")
    return {"chat_template": template}


@contextmanager
def rendering(row: int, conversational: bool):
    """Turn the error of a chat template that cannot render a vision row (one written for string content only)
    into a :class:`DatasetFormatError` naming the row."""
    try:
        yield
    except (TypeError, AttributeError) as err:  # jinja: a template written for string content only
        if not conversational:
            raise
        raise DatasetFormatError(
            f"Row {row} (0-based): the chat template cannot render this row ({type(err).__name__}: {err}). Vision rows need "
            "a template that renders content lists ({'type': 'image'} / {'type': 'text'} parts).") from err


def video_column(columns: Iterable[str]) -> str | None:
    """The column holding a dataset's videos (``videos``, else ``video``), or None."""
    columns = set(columns)
    return next((c for c in VIDEO_COLUMNS if c in columns), None)


def has_media(columns: Iterable[str]) -> bool:
    """True for a dataset with an image or a video column."""
    columns = list(columns)
    return image_column(columns) is not None or video_column(columns) is not None


def has_video_processor(processing_class) -> bool:
    """True for a processor with a video processor of its own (``processor.video_processor``)."""
    return getattr(processing_class, "video_processor", None) is not None


def has_image_processor(processing_class) -> bool:
    """True for a processor that handles images (a vision-language model's ``AutoProcessor``)."""
    return getattr(processing_class, "image_processor", None) is not None


def processor_chat_template(processor) -> str | None:
    """The chat template to render conversations with: the processor's, else its tokenizer's."""
    return (getattr(processor, "chat_template", None)
            or getattr(getattr(processor, "tokenizer", processor), "chat_template", None))


def row_images(example: Mapping[str, Any]) -> list:
    """The images of one row, in order."""
    if "images" in example:
        return list(example["images"] or [])
    image = example.get("image")
    return [] if image is None else [image]


def text_rows(dataset, split: str = "train") -> Iterator[tuple[int, dict[str, Any], int, str]]:
    """``(row, text columns, number of images, image column)`` for every row of a vision dataset, for validating
    every row before training; every image is decoded once first (:func:`check_images_open`)."""
    column = image_column(dataset.column_names)
    if column is None:
        raise DatasetFormatError(f"The {split} dataset has no image column ({' or '.join(IMAGE_COLUMNS)}).")
    if len(dataset) == 0:
        raise DatasetFormatError(f"The {split} dataset is empty.")
    check_images_open(dataset, column, split)
    texts = dataset.select_columns([c for c in dataset.column_names if c not in IMAGE_COLUMNS])
    for row, (example, count) in enumerate(zip(texts, image_counts(dataset, column))):
        yield row, example, count, column


def row_videos(example: Mapping[str, Any]) -> list[list]:
    """The videos of one row, in order, each a list of frames."""
    if "videos" in example:
        return [list(v or []) for v in example["videos"] or []]
    video = example.get("video")
    return [] if video is None else [list(video)]


def _open_frame(frame: Mapping[str, Any]):
    """An undecoded image entry (``{"bytes", "path"}``) opened with PIL (lazily: only the header is read)."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(frame["bytes"]) if frame.get("bytes") else frame["path"])


def decode_frame(frame: Any) -> Any:
    """A frame as the processors take it: a PIL image or an array (an undecoded ``{"bytes", "path"}`` dict is
    opened, nested lists become a uint8 array)."""
    if isinstance(frame, Mapping):
        return _open_frame(frame).convert("RGB")
    if isinstance(frame, (list, tuple)):
        import numpy as np

        return np.asarray(frame, dtype=np.uint8)
    return frame


def frame_size(frame: Any) -> tuple[int, int]:
    """(width, height) of a frame: a PIL image, an HxWxC array or nested lists, or an undecoded ``{"bytes",
    "path"}`` dict (only the file header is read)."""
    if isinstance(frame, Mapping):
        with _open_frame(frame) as image:
            return image.size
    if isinstance(frame, (list, tuple)):
        return (len(frame[0]) if len(frame) else 0, len(frame))
    shape = getattr(frame, "shape", None)
    if shape is not None:
        return (int(shape[1]), int(shape[0]))
    return tuple(frame.size)


def _count_parts(value: Any, part_type: str, token: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return value.count(token)
    count = 0
    for message in value:
        content = message["content"]
        if isinstance(content, str):
            count += content.count(token)
        else:
            count += sum(1 for part in content if isinstance(part, Mapping) and part.get("type") == part_type)
    return count


def count_image_parts(value: Any, image_token: str) -> int:
    """Image placeholders in a text (image tokens) or a list of messages (``{"type": "image"}`` parts)."""
    return _count_parts(value, "image", image_token)


def image_counts(dataset, column: str) -> list[int]:
    """The number of images of every row of ``column``, read from the Arrow data (no image is decoded)."""
    import pyarrow.compute as pc

    counts: list[int] = []
    for table in dataset.select_columns([column]).with_format("arrow").iter(batch_size=1000):
        values = table.column(column)
        if column == "images":
            counts += [0 if n is None else n for n in pc.list_value_length(values).to_pylist()]
        else:
            counts += [int(valid) for valid in pc.is_valid(values).to_pylist()]
    return counts


def check_images_open(dataset, column: str, split: str = "train") -> None:
    """Decode every image of ``column`` once, so that a broken or truncated file is an error naming its row and
    column before training starts, not a crash in some later batch. Images held as arrays or PIL objects pass."""
    row = 0
    for table in dataset.select_columns([column]).with_format("arrow").iter(batch_size=100):
        for value in table.column(column).to_pylist():
            for index, image in enumerate((value or []) if column == "images" else [value]):
                if not isinstance(image, Mapping) or not (image.get("bytes") or image.get("path")):
                    continue
                try:
                    with _open_frame(image) as opened:
                        opened.load()
                except Exception as err:  # noqa: BLE001 - PIL raises several types for broken files
                    where = f"image {index} of " if column == "images" else ""
                    source = f" ({image['path']})" if image.get("path") else ""
                    raise DatasetFormatError(
                        f"Row {row} (0-based) of the {split} dataset, column '{column}': {where}the image{source} "
                        f"cannot be read ({type(err).__name__}: {err}). Replace or remove that row.") from None
            row += 1


def video_frame_sizes(dataset, column: str) -> list[list[list[tuple[int, int]]]]:
    """For every row of ``column`` (``videos`` or ``video``), each video's frame sizes, read from the Arrow data
    (image files' headers only: no frame is decoded)."""
    out: list[list[list[tuple[int, int]]]] = []
    for table in dataset.select_columns([column]).with_format("arrow").iter(batch_size=100):
        for value in table.column(column).to_pylist():
            videos = (value or []) if column == "videos" else ([] if value is None else [value])
            out.append([[frame_size(frame) for frame in video or []] for video in videos])
    return out


def carry_over(proc_ids: Sequence[int], text_ids: Sequence[int], values: Sequence[int],
               media_token_ids: int | Iterable[int], fill: int = IGNORE_INDEX) -> tuple[list[int], int]:
    """Carry per-token ``values`` of a text tokenized with one media token per image or video (``text_ids``) over to
    the processor's tokens of a prefix of that text (``proc_ids``), where each media token became a run of that
    token (``media_token_ids``: the image token id, and the video token id where the processor expands videos).
    Media tokens get ``fill``. Returns the values along ``proc_ids`` and how many ``text_ids`` they cover; raises
    ValueError where the two tokenizations differ other than by media runs."""
    media = {media_token_ids} if isinstance(media_token_ids, int) else set(media_token_ids)
    out: list[int] = []
    i = j = 0
    while j < len(proc_ids):
        if i >= len(text_ids) or proc_ids[j] != text_ids[i]:
            raise ValueError(f"the processor's token {j} ({proc_ids[j]}) is not the tokenizer's "
                             f"({text_ids[i] if i < len(text_ids) else 'none'})")
        token = proc_ids[j]
        if token in media:  # a run of one medium: all its tokens, however they split between images (videos)
            while j < len(proc_ids) and proc_ids[j] == token:
                out.append(fill)
                j += 1
            while i < len(text_ids) and text_ids[i] == token:
                i += 1
        else:
            out.append(values[i])
            i += 1
            j += 1
    return out, i


@dataclass
class _TextRow:
    vision_text: str  # the part of the text the processor gets with the images
    ids: list[int]  # the whole row, one image token per image
    labels: list[int]  # along ``ids``


def processor_image_token(processor, user: str) -> tuple[str, int]:
    """The processor's image token and its id (``user`` names who needs them in the errors)."""
    if not has_image_processor(processor):
        raise ValueError(f"{user} needs a processor with an image processor (the model's AutoProcessor), got "
                         f"{type(processor).__name__}.")
    token, token_id = getattr(processor, "image_token", None), getattr(processor, "image_token_id", None)
    if token is None or token_id is None:
        raise ValueError(f"{type(processor).__name__} declares no image token (`image_token`, `image_token_id`), so "
                         "posttrain cannot tell image tokens from text.")
    return token, token_id


def check_no_media(example: Mapping[str, Any], row: int, columns: Sequence[str], kind: str, token: str) -> None:
    """Raise :class:`DatasetFormatError` naming ``row`` if any of ``columns`` (completions) holds a ``kind``
    ("image" or "video") placeholder."""
    for col in columns:
        if _count_parts(example.get(col), kind, token):
            raise DatasetFormatError(f"Row {row} (0-based), column '{col}': {kind}s in the {col} are not supported; put them "
                                     "in the prompt.")


def check_media_count(example: Mapping[str, Any], row: int, count: int, *, kind: str, token: str,
                      conversational: bool, key: str, column: str) -> None:
    """Raise :class:`DatasetFormatError` naming ``row`` unless column ``key`` holds ``count`` ``kind`` placeholders
    (``{"type": kind}`` parts, or ``token`` in standard text), one for each of column ``column``'s items."""
    parts = _count_parts(example.get(key), kind, token)
    if parts != count:
        what = f"{kind} part(s) ({{'type': '{kind}'}})" if conversational else f"{kind} token(s) ('{token}')"
        raise DatasetFormatError(
            f"Row {row} (0-based): column '{key}' has {parts} {what} but column '{column}' holds {count} {kind}(s). Every "
            f"{kind} placeholder takes one {kind}, in order: add the missing "
            f"{kind + 's' if parts > count else 'placeholders'}.")


def check_image_parts(example: Mapping[str, Any], row: int, num_images: int, *, image_token: str,
                      conversational: bool, key: str, image_free: Sequence[str] = (), column: str = "images") -> None:
    """Raise :class:`DatasetFormatError` naming ``row`` unless the image placeholders of column ``key`` match the
    row's ``num_images`` and the columns ``image_free`` (completions) have none."""
    check_no_media(example, row, image_free, "image", image_token)
    check_media_count(example, row, num_images, kind="image", token=image_token, conversational=conversational,
                      key=key, column=column)


def padded_only_error(option: str, what: str, fix: str) -> ValueError:
    """The error for packing / padding-free batches asked for with images (``option``: the setting given)."""
    return ValueError(
        f"{option} is not supported with {what}: vision batches are padded (a row's image tokens must stay with "
        f"its images, and packed sequences of a vision-language model are not kept apart by position_ids). {fix}")


def expansion_offsets_supported(processor) -> bool:
    """True for a processor that can say where it expanded each image (or video) placeholder: a transformers
    processor that reports its replacements (``return_text_replacement_offsets``) and has a fast tokenizer (token
    offsets)."""
    tokenizer = getattr(processor, "tokenizer", None)
    return callable(getattr(processor, "get_text_with_replacements", None)) and bool(getattr(tokenizer, "is_fast", False))


def carry_over_expanded(proc_ids: Sequence[int], proc_offsets: Sequence[Sequence[int]],
                        replacements: Sequence[Mapping[str, Any]], text_ids: Sequence[int],
                        text_offsets: Sequence[Sequence[int]], values: Sequence[int],
                        fill: int = IGNORE_INDEX) -> tuple[list[int], list[bool]]:
    """Carry per-token ``values`` of a text (``text_ids``, tokenized with one placeholder per image or video, at the
    character spans ``text_offsets``) over to the processor's tokens of that text (``proc_ids``, at ``proc_offsets``
    in the text as the processor expanded it), where the processor replaced each placeholder with text of its own:
    ``replacements`` gives each placeholder's ``span`` in the text and its replacement's ``new_span`` in the expanded
    text (the processor's ``text_replacement_offsets`` for the row).

    A processor token that overlaps a replacement belongs to an image's (or video's) expansion: the image tokens
    and whatever the processor writes around them (begin/end-of-image tokens, tile tags, newlines). It is a media
    token and gets ``fill``. Any other token lies in the text and takes the value of the text token with the same
    characters and id, or ``fill`` where there is none (text the tokenizer splits differently beside an expansion).
    Returns the values and the media flags along ``proc_ids``. Raises ValueError where the two tokenizations differ
    away from the images."""
    spans = sorted((tuple(r["new_span"]), tuple(r["span"])) for r in replacements)
    index: dict[tuple[int, int, int], list[int]] = {}
    for j, (token, (start, end)) in enumerate(zip(text_ids, text_offsets)):
        index.setdefault((start, end, token), []).append(j)
    out: list[int] = []
    media: list[bool] = []
    proc_matched: list[bool] = []
    text_matched = [False] * len(text_ids)
    for token, (x, y) in zip(proc_ids, proc_offsets):
        shift, inside = 0, False
        for (a, b), (s, e) in spans:
            if x < b and y > a:  # overlaps the replacement (a zero-width token, e.g. an added BOS, never does)
                inside = True
                break
            if b <= x:
                shift += (b - a) - (e - s)
        candidates = None if inside else index.get((x - shift, y - shift, token))
        j = candidates.pop(0) if candidates else None
        if j is not None:
            text_matched[j] = True
        media.append(inside)
        proc_matched.append(j is not None)
        out.append(fill if j is None else values[j])
    # away from the images both tokenizations agree: a token left over on either side is in a run of left-over
    # tokens that touches an expansion (processor side) or a placeholder (text side)
    placeholder = [any(start < e and end > s for _, (s, e) in spans) for start, end in text_offsets]
    for side, ids, matched, anchor in (("processor", proc_ids, proc_matched, media),
                                       ("tokenizer", text_ids, text_matched, placeholder)):
        for run in _runs([not m for m in matched]):
            if not any(anchor[max(run.start - 1, 0):run.stop + 1]):
                raise ValueError(f"the {side}'s token {run.start} ({ids[run.start]}) has no counterpart in the "
                                 f"{'tokenizer' if side == 'processor' else 'processor'}'s tokens, away from any "
                                 "image")
    return out, media


def _runs(flags: Sequence[bool]) -> Iterator[range]:
    """The maximal runs of True in ``flags``, as ranges of positions."""
    start = None
    for k, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            yield range(start, k)
            start = None


@dataclass
class ProcessedImages:
    """What :func:`process_images` returns for a batch of texts, row by row (no padding)."""

    ids: list[list[int]]  # the processor's tokens of each text: every placeholder expanded to the image's tokens
    values: list[list[int]]  # the caller's per-token values carried over to ``ids`` (media tokens: ``fill``)
    used: list[int]  # how many of the caller's text tokens each row of ``ids`` covers
    media: list[list[bool]]  # along ``ids``: True on the tokens of an image's (video's) expansion
    per_token: dict[str, list[list[int]]]  # processor outputs with one value per token (e.g. token_type_ids)
    extras: dict[str, torch.Tensor]  # the rest, for the images (pixel_values, image_sizes, image_grid_thw, ...)


def process_images(processor, texts: Sequence[str], images: Sequence[Sequence[Any]], text_ids: Sequence[Sequence[int]],
                   values: Sequence[Sequence[int]], image_token_id: int | Iterable[int], *, add_special_tokens: bool,
                   fill: int = IGNORE_INDEX, videos: Sequence[Any] | None = None) -> ProcessedImages:
    """Run the processor on ``texts`` (each a prefix of a text tokenized with one image token per image,
    ``text_ids``) with their ``images``, and line its tokens up with ``text_ids``: ``values`` (one per text token)
    are carried over to the processor's tokens. The images are processed once per text.

    A row whose processor tokens are its text tokens with each placeholder expanded into a run of itself (Llava) is
    lined up token by token (:func:`carry_over`; ``image_token_id``: the ids of those runs). Any other is lined up by
    character, where the processor reports where it expanded each placeholder (:func:`expansion_offsets_supported`):
    its tokens are taken as they are, and an expansion may hold any tokens (Gemma 3's begin/end-of-image tokens and
    newlines, Idefics3's tile tags), all of them media tokens (:func:`carry_over_expanded`). Raises ValueError naming
    the example where the two tokenizations cannot be lined up."""
    media_inputs = {"images": list(images) if any(images) else None}
    if videos:  # (native video processors: every video token expanded by the processor, ``image_token_id`` lists it)
        media_inputs["videos"] = list(videos)
    expanded = expansion_offsets_supported(processor)
    offsets_kwargs = {"return_offsets_mapping": True, "return_text_replacement_offsets": True} if expanded else {}
    enc = processor(text=list(texts), **media_inputs, padding=True, return_tensors="pt",
                    add_special_tokens=add_special_tokens, **offsets_kwargs)
    ids, attention = enc.pop("input_ids"), enc.pop("attention_mask")
    offsets, replacements = enc.pop("offset_mapping", None), enc.pop("text_replacement_offsets", None)
    expanded = expanded and offsets is not None and replacements is not None  # else: no report of its replacements
    own = None  # the texts' tokens with their offsets, for the rows lined up by character
    media_ids = {image_token_id} if isinstance(image_token_id, int) else set(image_token_id)
    per_token_keys = [k for k, v in enc.items() if torch.is_tensor(v) and v.shape == ids.shape]
    out = ProcessedImages([], [], [], [], {k: [] for k in per_token_keys},
                          {k: v for k, v in enc.items() if k not in per_token_keys})
    for i in range(len(texts)):
        keep = attention[i].bool()
        proc_ids = ids[i][keep].tolist()
        try:
            try:
                carried, used = carry_over(proc_ids, text_ids[i], values[i], media_ids, fill)
                media = [t in media_ids for t in proc_ids]
            except ValueError:
                if not expanded:
                    raise
                if own is None:
                    own = processor.tokenizer(list(texts), add_special_tokens=add_special_tokens,
                                              return_offsets_mapping=True)
                own_ids = list(own["input_ids"][i])
                if list(text_ids[i][:len(own_ids)]) != own_ids:
                    raise ValueError("the tokenizer reads the processor's text differently from the row's tokens")
                carried, media = carry_over_expanded(proc_ids, offsets[i][keep].tolist(), replacements[i], own_ids,
                                                     own["offset_mapping"][i], values[i], fill)
                used = len(own_ids)
        except ValueError as err:
            raise ValueError(f"Example {i} of the batch: {err}. The processor must tokenize the text as its "
                             "tokenizer does, apart from expanding image (and video) placeholders.") from err
        out.ids.append(proc_ids)
        out.values.append(carried)
        out.used.append(used)
        out.media.append(media)
        for k in per_token_keys:
            out.per_token[k].append(enc[k][i][keep].tolist())
    return out


@dataclass
class DataCollatorForVisionLanguageModeling:
    """Collate raw vision-dataset rows (see the module docstring) into a padded batch: ``input_ids``,
    ``attention_mask``, ``labels`` and what the processor returns for the images (``pixel_values``, ...).

    Args:
        processor: a vision-language model's processor (``AutoProcessor``), with a chat template for
            conversational rows.
        completion_only_loss: prompt-completion rows train on the completion only.
        assistant_only_loss: conversational rows train on assistant tokens only.
        max_length: cut longer rows to this many tokens (``truncation_mode``), never through an image: a row whose
            image tokens (or the tokens its processor writes around them) would be cut is an error.
        pad_to_multiple_of: pad the batch length to a multiple of this.
        dataset_text_field: the text column of standard language-modeling rows.
        eos_token_id: appended to standard completions and texts (default: the tokenizer's EOS).
        videos_as_frames: read each video as its frames, one image each (True), or pass videos to the processor's
            video processor (False). Default: the latter where the processor has a video processor.
        frame_separator: text between consecutive frames of a video read as frames (default: none).
    """

    processor: Any
    completion_only_loss: bool = True
    assistant_only_loss: bool = False
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    dataset_text_field: str = "text"
    eos_token_id: int | None = None
    videos_as_frames: bool | None = None
    frame_separator: str | None = None
    tokenizer: Any = field(init=False, repr=False)
    image_token: str = field(init=False)
    image_token_id: int = field(init=False)
    video_token: str = field(init=False)
    video_token_id: int | None = field(init=False)  # set where the processor expands videos itself

    def __post_init__(self):
        self.image_token, self.image_token_id = processor_image_token(self.processor, type(self).__name__)
        check_truncation_mode(self.truncation_mode)
        self.tokenizer = self.processor.tokenizer
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id
        self.video_token = getattr(self.processor, "video_token", None) or VIDEO_TOKEN
        self.video_token_id = None
        if self.videos_as_frames is None:
            self.videos_as_frames = not has_video_processor(self.processor)
        if not self.videos_as_frames:
            if not has_video_processor(self.processor):
                raise ValueError(f"videos_as_frames=False needs a processor with a video processor; "
                                 f"{type(self.processor).__name__} has none. Leave videos_as_frames unset to read "
                                 "videos as frames.")
            token_id = getattr(self.processor, "video_token_id", None)
            if token_id is None:
                token_id = self.tokenizer.convert_tokens_to_ids(self.video_token)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise ValueError(f"{type(self.processor).__name__} has a video processor but its video token "
                                 f"{self.video_token!r} is not in the vocabulary, so posttrain cannot tell video "
                                 "tokens from text. Pass videos_as_frames=True.")
            self.video_token_id = token_id
        self._media_split = re.compile("(" + "|".join(
            re.escape(t) for t in sorted({self.image_token, self.video_token}, key=len, reverse=True)) + ")")

    @property
    def media_token_ids(self) -> list[int]:
        """The ids the processor expands into runs: the image token's, and the video token's for native videos."""
        return [self.image_token_id] + ([self.video_token_id] if self.video_token_id is not None else [])

    # -- rows -----------------------------------------------------------------------------------
    def format_of(self, example: Mapping[str, Any]) -> DatasetFormat:
        fmt = detect_format(example.keys(), example, text_field=self.dataset_text_field)
        if fmt.kind not in (LANGUAGE_MODELING, PROMPT_COMPLETION):
            raise DatasetFormatError(
                f"Vision SFT trains on language-modeling or prompt-completion rows, got {fmt} rows.")
        return fmt

    def text_row(self, example: Mapping[str, Any], fmt: DatasetFormat, row: int) -> _TextRow:
        """Step 1 for one row (raises :class:`DatasetFormatError` naming ``row``)."""
        kwargs = template_kwargs(self.processor, fmt.conversational)
        with rendering(row, fmt.conversational):
            out = tokenize_sft_example(
                example, row, tokenizer=self.tokenizer, fmt=fmt, text_field=self.dataset_text_field,
                eos_token_id=self.eos_token_id, max_length=None, assistant_only_loss=self.assistant_only_loss,
                completion_only_loss=self.completion_only_loss, template_kwargs=kwargs)
            if fmt.kind == PROMPT_COMPLETION:
                prompt = example["prompt"]
                text = render_messages(self.tokenizer, prompt, add_generation_prompt=True, **kwargs) \
                    if fmt.conversational else prompt
            else:
                text = render_messages(self.tokenizer, example["messages"], **kwargs) if fmt.conversational \
                    else example[self.dataset_text_field]
        return _TextRow(text, list(out["input_ids"]), label_ids(out, self.completion_only_loss))

    def _media_key(self, fmt: DatasetFormat) -> str:
        """The column whose text holds the image and video placeholders."""
        return ("prompt" if fmt.kind == PROMPT_COMPLETION else "messages" if fmt.conversational
                else self.dataset_text_field)

    def check_media(self, example: Mapping[str, Any], fmt: DatasetFormat, num_images: int, row: int,
                    column: str = "images", frames: Sequence[Sequence[tuple[int, int]]] = (),
                    video_col: str = "videos") -> None:
        """Raise :class:`DatasetFormatError` unless the row's image placeholders match its ``num_images`` and its
        video placeholders its videos (``frames``: each video's frame sizes), every video has frames, all of one
        size."""
        media = (("image", self.image_token, num_images, column), ("video", self.video_token, len(frames), video_col))
        if fmt.kind == PROMPT_COMPLETION:
            for kind, token, *_ in media:
                check_no_media(example, row, ("completion",), kind, token)
        for kind, token, count, col in media:
            check_media_count(example, row, count, kind=kind, token=token, conversational=fmt.conversational,
                              key=self._media_key(fmt), column=col)
        for k, sizes in enumerate(frames):
            if not sizes:
                raise DatasetFormatError(f"Row {row} (0-based): video {k} of column '{video_col}' has no frames; a video is a "
                                         "non-empty list of frames.")
            if len(set(sizes)) > 1:
                odd = next(f for f, size in enumerate(sizes) if size != sizes[0])
                raise DatasetFormatError(
                    f"Row {row} (0-based): the frames of video {k} in column '{video_col}' differ in size (frame 0 is "
                    f"{sizes[0][0]}x{sizes[0][1]}, frame {odd} {sizes[odd][0]}x{sizes[odd][1]}); resize them to one "
                    "size.")

    def with_frames_as_images(self, example: Mapping[str, Any], fmt: DatasetFormat, images: list,
                              videos: list[list]) -> tuple[dict[str, Any], list]:
        """The row with every video placeholder replaced by one image placeholder per frame (``frame_separator``
        between them), and its images and frames in placeholder order."""
        images_left, videos_left = iter(images), iter(videos)
        ordered: list = []
        separator = self.frame_separator or ""

        def text(value: str) -> str:
            pieces = []
            for piece in self._media_split.split(value):
                if piece == self.image_token:
                    ordered.append(next(images_left))
                elif piece == self.video_token:
                    frames = next(videos_left)
                    ordered.extend(frames)
                    piece = separator.join([self.image_token] * len(frames))
                pieces.append(piece)
            return "".join(pieces)

        def content(value):
            if isinstance(value, str):
                return text(value)
            parts = []
            for part in value:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "image":
                    ordered.append(next(images_left))
                    parts.append(part)
                elif kind == "video":
                    frames = next(videos_left)
                    ordered.extend(frames)
                    for f in range(len(frames)):
                        if f and separator:
                            parts.append({"type": "text", "text": separator})
                        parts.append({"type": "image"})
                else:
                    parts.append(part)
            return parts

        key = self._media_key(fmt)
        out = dict(example)
        out[key] = ([{**message, "content": content(message["content"])} for message in example[key]]
                    if fmt.conversational else text(example[key]))
        return out, ordered

    def validate(self, dataset, split: str = "train") -> None:
        """Check every row of ``dataset`` before training: its format, its text (tokenized as the batches will be),
        its number of images, and that every image decodes (:func:`check_images_open`). Errors name the row."""
        column, video_col = image_column(dataset.column_names), video_column(dataset.column_names)
        if column is None and video_col is None:
            raise DatasetFormatError(f"The {split} dataset has no image or video column "
                                     f"({', '.join(MEDIA_COLUMNS)}).")
        if len(dataset) == 0:
            raise DatasetFormatError(f"The {split} dataset is empty.")
        texts = dataset.select_columns([c for c in dataset.column_names if c not in MEDIA_COLUMNS])
        fmt = self.format_of(texts[0])
        if column:
            check_images_open(dataset, column, split)
        counts = image_counts(dataset, column) if column else [0] * len(dataset)
        frames = video_frame_sizes(dataset, video_col) if video_col else [[]] * len(dataset)
        for row, (example, count, sizes) in enumerate(zip(texts, counts, frames)):
            self.check_media(example, fmt, count, row, column or "images", sizes, video_col or "videos")
            if sizes and self.videos_as_frames:  # tokenized as the batches will be
                example, _ = self.with_frames_as_images(example, fmt, [None] * count, [[None] * len(v) for v in sizes])
            self.text_row(example, fmt, row)

    # -- batches --------------------------------------------------------------------------------
    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        fmt = self.format_of(examples[0])
        images, videos, rows = [], [], []
        for i, ex in enumerate(examples):
            imgs, vids = row_images(ex), [[decode_frame(f) for f in v] for v in row_videos(ex)]
            self.check_media(ex, fmt, len(imgs), i, image_column(ex) or "images",
                             [[frame_size(f) for f in v] for v in vids], video_column(ex) or "videos")
            if vids and self.videos_as_frames:
                ex, imgs = self.with_frames_as_images(ex, fmt, imgs, vids)
                vids = []
            images.append(imgs)
            videos += [_video_array(v) for v in vids]
            rows.append(self.text_row(ex, fmt, i))
        proc = process_images(self.processor, [r.vision_text for r in rows], images, [r.ids for r in rows],
                              [r.labels for r in rows], self.media_token_ids, add_special_tokens=not fmt.conversational,
                              videos=videos)
        seqs: dict[str, list[list[int]]] = {k: [] for k in ("input_ids", "labels", *proc.per_token)}
        for i, row in enumerate(rows):
            proc_ids, labels, used = proc.ids[i], proc.values[i], proc.used[i]
            tail = len(row.ids) - used
            window = self._window(proc.media[i] + [False] * tail, i)
            seqs["input_ids"].append((proc_ids + row.ids[used:])[window])
            seqs["labels"].append(self._first_ignored((labels + row.labels[used:])[window], i))
            for k, per_row in proc.per_token.items():
                seqs[k].append((per_row[i] + [0] * tail)[window])
        batch = {k: pad_sequences(v, self.tokenizer.pad_token_id if k == "input_ids" else
                                  IGNORE_INDEX if k == "labels" else 0, multiple_of=self.pad_to_multiple_of)
                 for k, v in seqs.items()}
        batch["attention_mask"] = pad_sequences([[1] * len(s) for s in seqs["input_ids"]], 0,
                                                multiple_of=self.pad_to_multiple_of)
        batch["labels"][torch.isin(batch["input_ids"], torch.tensor(self.media_token_ids))] = IGNORE_INDEX
        batch.update(proc.extras)
        return batch

    def _window(self, media: list[bool], example: int) -> slice:
        """The ``max_length`` tokens kept of a row (``truncation_mode``; ``media``: True on the tokens of the images'
        expansions); an error where they would cut an image, or the text between two images."""
        if self.max_length is None or len(media) <= self.max_length:
            return slice(0, len(media))
        start = 0 if self.truncation_mode == "keep_start" else len(media) - self.max_length
        stop = start + self.max_length
        positions = [p for p, m in enumerate(media) if m]
        if positions and (positions[0] < start or positions[-1] >= stop):
            raise ValueError(
                f"Example {example} of the batch is {len(media)} tokens, and max_length={self.max_length} "
                f"({self.truncation_mode}) would cut its image tokens (positions {positions[0]}-{positions[-1]}); "
                "images (and videos) cannot be cut. Use max_length=None, a larger max_length, or smaller/fewer "
                "images.")
        return slice(start, stop)

    def _first_ignored(self, labels: list[int], example: int) -> list[int]:
        if labels:
            labels[0] = IGNORE_INDEX  # no token before it to predict it from
        if all(t == IGNORE_INDEX for t in labels):
            raise ValueError(f"Example {example} of the batch has no token left to train on after max_length="
                             f"{self.max_length} ({self.truncation_mode}). Increase max_length or shorten the prompt.")
        return labels


def _video_array(frames: list):
    """A video as one (frames, height, width, channels) uint8 array, the form every video processor takes."""
    import numpy as np

    return np.stack([np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame, dtype=np.uint8)
                     for frame in frames])
