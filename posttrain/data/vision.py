"""Vision-language data: datasets whose rows carry images or videos, and the helpers that read them (the collator
that turns them into model inputs, :class:`~posttrain.data.vision_collator.DataCollatorForVisionLanguageModeling`,
is in :mod:`posttrain.data.vision_collator`).

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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .collators import IGNORE_INDEX
from .formats import DatasetFormatError

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
class TextRow:
    """One row of text, tokenized once with one image token per image (the collator's first step)."""

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
