"""The vision-language collator: :class:`DataCollatorForVisionLanguageModeling` turns raw SFT rows with images or
videos into model inputs batch by batch (see :mod:`posttrain.data.vision` for the row format and the two steps each
row is read in; the helpers it uses live there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .collators import IGNORE_INDEX, label_ids, pad_sequences
from .formats import LANGUAGE_MODELING, PROMPT_COMPLETION, DatasetFormat, DatasetFormatError, detect_format
from .templates import render_messages
from .tokenize import check_truncation_mode, tokenize_sft_example, truncation_window
from .vision import (MEDIA_COLUMNS, TextRow, VIDEO_TOKEN, check_images_open, check_media_count, check_no_media,
                     decode_frame, frame_size, has_video_processor, image_column, image_counts, process_images,
                     processor_image_token, rendering, row_images, row_videos, template_kwargs, video_column,
                     video_frame_sizes)


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

    def text_row(self, example: Mapping[str, Any], fmt: DatasetFormat, row: int) -> TextRow:
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
        return TextRow(text, list(out["input_ids"]), label_ids(out, self.completion_only_loss))

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
            videos += [video_array(v) for v in vids]
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
        window = truncation_window(len(media), self.max_length, self.truncation_mode)
        if window == slice(0, len(media)):
            return window
        start, stop = window.start, window.stop
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


def video_array(frames: list):
    """A video as one (frames, height, width, channels) uint8 array, the form every video processor takes."""
    import numpy as np

    return np.stack([np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame, dtype=np.uint8)
                     for frame in frames])
