"""Data layer: formats, chat templates, tokenization, packing and collators."""

from .collators import IGNORE_INDEX, DataCollatorForLanguageModeling, pad_sequences
from .formats import KINDS, DatasetFormat, DatasetFormatError, detect_format, require_kind, validate_dataset, validate_example
from .loading import load_any
from .packing import PACKING_STRATEGIES, best_fit_decreasing, pack_columns, pack_dataset, pack_stream
from .streaming import column_names, first_row, is_streaming, map_options, refuse_transform, require_sized
from .templates import apply_chat_template, extract_prompt, require_chat_template, unpair_preference
from .tokenize import chat_template_ids, tokenize_prompt_completion, tokenize_sft_example, truncate
from .vision_collator import DataCollatorForVisionLanguageModeling
from .vision import (IMAGE_COLUMNS, VIDEO_COLUMNS, has_image_processor,
                     has_media, has_video_processor, image_column, processor_chat_template, video_column)

__all__ = [
    "IGNORE_INDEX", "DataCollatorForLanguageModeling", "pad_sequences", "KINDS", "DatasetFormat",
    "DatasetFormatError", "detect_format", "require_kind", "validate_dataset", "validate_example", "load_any",
    "PACKING_STRATEGIES", "best_fit_decreasing", "pack_columns", "pack_dataset", "pack_stream", "column_names",
    "first_row", "is_streaming", "map_options", "refuse_transform", "require_sized", "apply_chat_template",
    "extract_prompt", "require_chat_template", "unpair_preference", "chat_template_ids",
    "tokenize_prompt_completion", "tokenize_sft_example", "truncate", "IMAGE_COLUMNS",
    "DataCollatorForVisionLanguageModeling", "has_image_processor", "image_column", "processor_chat_template",
    "VIDEO_COLUMNS", "has_media", "has_video_processor", "video_column",
]
