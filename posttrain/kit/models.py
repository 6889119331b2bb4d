"""Build tiny randomly initialised transformer models for tests, examples and benchmarks.

Models are created from a config (no hub access), with a seeded initialisation, and use the
shipped tokenizer's vocabulary and special token ids. :func:`build_tiny_vlm` builds a tiny
vision-language model (Llava: a CLIP vision tower, a projector and the tiny Qwen2 language model)
and :func:`build_tiny_processor` its processor (the kit tokenizer plus an ``<image>`` token, a CLIP
image processor and a chat template that renders image parts).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ARCHS",
    "HEADS",
    "IMAGE_TOKEN",
    "SIZES",
    "VISION_SIZES",
    "VLM_ARCHS",
    "build_tiny_config",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_vlm",
]

ARCHS: tuple[str, ...] = ("qwen2", "llama", "gpt2", "gemma3")
"""Supported architectures (``gemma3``: Gemma 3's text model, sliding-window layers with one full-attention layer
in six, as in Gemma 3; no token-classification head)."""

VLM_ARCHS: tuple[str, ...] = ("llava",)
"""Supported architectures of :func:`build_tiny_vlm`."""

HEADS: dict[str, int | None] = {"causal-lm": None, "seq-cls": 1, "token-cls": 2}
"""Supported heads and their number of labels: language modelling, sequence classification
(one score: reward models) and token classification (two labels: process reward models)."""


def _preset(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
    }


SIZES: dict[str, dict[str, int]] = {
    "tiny": _preset(64, 2, 4, 2, 128),  # fast unit tests (~0.14M parameters; gpt2 ~0.26M)
    "small": _preset(128, 4, 4, 2, 512),  # demos that must actually learn (~1.1M parameters)
    "bench": _preset(512, 8, 8, 4, 1536),  # benchmarks (~26M parameters; gpt2 ~23M)
}
"""Size presets, in Llama/Qwen2 config names (mapped to GPT-2 names for ``gpt2``, which has no
grouped-query attention)."""

MAX_POSITION_EMBEDDINGS = 2048
GEMMA3_SLIDING_WINDOW = 512
"""Sliding window of the ``gemma3`` arch's local layers (Gemma 3 1B's)."""

VISION_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "small": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
    "bench": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
}
"""Vision-tower presets of :func:`build_tiny_vlm` (CLIP config names), one per :data:`SIZES` key."""

IMAGE_TOKEN = "<image>"
"""The image token the tiny VLM's processor adds to the kit tokenizer."""
IMAGE_SIZE = 32
PATCH_SIZE = 8


def _load_tokenizer(tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None) -> PreTrainedTokenizerBase:
    if tokenizer is None:
        from posttrain.kit import load_tokenizer

        return load_tokenizer()
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return tokenizer


def build_tiny_config(
    arch: str = "qwen2",
    head: str = "causal-lm",
    size: str = "tiny",
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
    **config_overrides: Any,
) -> PreTrainedConfig:
    """Return the model config :func:`build_tiny_model` would use (see there for the arguments)."""
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(SIZES)}")
    if arch == "gemma3" and head == "token-cls":
        raise ValueError("transformers has no token-classification head for gemma3; use qwen2 or llama for PRMs")
    tok = _load_tokenizer(tokenizer)

    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    bos_id = tok.bos_token_id
    if bos_id is None:  # the kit tokenizer adds no BOS; like Qwen2, point bos at <|endoftext|> if present
        endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
        bos_id = endoftext if isinstance(endoftext, int) and endoftext != tok.unk_token_id else eos_id

    preset = dict(SIZES[size])
    kwargs: dict[str, Any] = {
        "vocab_size": len(tok),
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "bos_token_id": bos_id,
        "tie_word_embeddings": True,
    }
    if HEADS[head] is not None:
        kwargs["num_labels"] = HEADS[head]

    config_cls: type[PreTrainedConfig]
    if arch == "gpt2":
        config_cls = GPT2Config
        preset.pop("num_key_value_heads")
        kwargs.update(
            n_embd=preset["hidden_size"],
            n_layer=preset["num_hidden_layers"],
            n_head=preset["num_attention_heads"],
            n_inner=preset["intermediate_size"],
            n_positions=kwargs.pop("max_position_embeddings"),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
        )
    elif arch == "gemma3":
        config_cls = Gemma3TextConfig
        head_dim = preset["hidden_size"] // preset["num_attention_heads"]
        kwargs.update(preset, head_dim=head_dim, query_pre_attn_scalar=head_dim, hidden_activation="gelu_pytorch_tanh",
                      rms_norm_eps=1e-6, attention_dropout=0.0, sliding_window=GEMMA3_SLIDING_WINDOW)
    else:
        config_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        kwargs.update(preset, hidden_act="silu", rms_norm_eps=1e-6, attention_dropout=0.0)
    kwargs.update(config_overrides)
    return config_cls(**kwargs)


def build_tiny_model(
    arch: str = "qwen2",
    head: str = "causal-lm",
    size: str = "tiny",
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
    **config_overrides: Any,
) -> PreTrainedModel | str:
    """Build a randomly initialised model (float32) for the kit tokenizer's vocabulary.

    Args:
        arch: ``"qwen2"``, ``"llama"``, ``"gpt2"`` or ``"gemma3"``.
        head: ``"causal-lm"``, ``"seq-cls"`` (``num_labels=1``, reward models) or ``"token-cls"``
            (``num_labels=2``, process reward models).
        size: a key of :data:`SIZES`: ``"tiny"``, ``"small"`` or ``"bench"``.
        seed: initialisation seed; the same arguments give identical weights. The global torch
            RNG state is left untouched.
        output_dir: if given, save the model and the tokenizer there and return the path.
        tokenizer: tokenizer (or its path) that sets the vocabulary size and the pad/eos/bos ids;
            the shipped kit tokenizer by default.
        **config_overrides: any config field, e.g. ``num_hidden_layers=1`` (GPT-2 field names
            such as ``n_layer`` for ``gpt2``).

    Returns:
        The model (in eval mode), or the output directory as a string if ``output_dir`` is set.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    tok = _load_tokenizer(tokenizer)
    config = build_tiny_config(arch, head, size, tokenizer=tok, **config_overrides)
    auto_cls = {
        "causal-lm": AutoModelForCausalLM,
        "seq-cls": AutoModelForSequenceClassification,
        "token-cls": AutoModelForTokenClassification,
    }[head]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_cls.from_config(config)
    _finish(model, config)
    return model if output_dir is None else _save(output_dir, model, tok)


def _finish(model: PreTrainedModel, text_config: PreTrainedConfig) -> None:
    """Eval mode, and generation with the tokenizer's pad/eos/bos ids."""
    model.eval()
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = text_config.pad_token_id
        generation_config.eos_token_id = text_config.eos_token_id
        generation_config.bos_token_id = text_config.bos_token_id


def _save(output_dir: str | os.PathLike[str], *objects: Any) -> str:
    path = os.fspath(output_dir)
    os.makedirs(path, exist_ok=True)
    for obj in objects:
        obj.save_pretrained(path)
    return path


def vision_chat_template() -> str:
    """The kit's ChatML template extended to content lists with image parts (``vision_chat_template.jinja``)."""
    from pathlib import Path

    return (Path(__file__).resolve().parent / "vision_chat_template.jinja").read_text(encoding="utf-8")


def build_tiny_processor(image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE):
    """The processor of :func:`build_tiny_vlm`: a ``LlavaProcessor`` with the kit tokenizer plus the special token
    :data:`IMAGE_TOKEN` (id 1024), a CLIP image processor that resizes and crops to ``image_size`` pixels (its
    pure-PIL backend: no torchvision needed) and :func:`vision_chat_template`. Each image becomes
    ``(image_size // patch_size) ** 2`` image tokens."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from posttrain.kit import load_tokenizer

    tok = load_tokenizer()
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    template = vision_chat_template()
    tok.chat_template = template  # the tokenizer saved beside the processor renders image parts too
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    # "default" drops the vision tower's CLS feature; num_additional_image_tokens=1 counts it, so every patch
    # feature gets one image token
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template, image_token=IMAGE_TOKEN)


def build_tiny_vlm(
    size: str = "tiny",
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    **text_overrides: Any,
) -> PreTrainedModel | str:
    """Build a randomly initialised Llava vision-language model (float32) for :func:`build_tiny_processor`.

    Args:
        size: a key of :data:`SIZES`; the vision tower follows :data:`VISION_SIZES`, the language model is
            :func:`build_tiny_model`'s ``qwen2`` of that size (tiny: ~0.17M parameters in all).
        seed: initialisation seed (the global torch RNG state is left untouched).
        output_dir: if given, save the model and the processor there (loadable offline with
            ``AutoModelForImageTextToText`` / ``AutoProcessor``) and return the path.
        image_size, patch_size: the vision tower's input size and patch size.
        **text_overrides: fields of the language model's config, e.g. ``num_hidden_layers=1``.

    Returns:
        The model (in eval mode), or the output directory as a string if ``output_dir`` is set.
    """
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    if size not in VISION_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(VISION_SIZES)}")
    processor = build_tiny_processor(image_size, patch_size)
    tok = processor.tokenizer
    text_config = build_tiny_config("qwen2", size=size, tokenizer=tok, **text_overrides)  # vocabulary with <image>
    vision_config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, projection_dim=32,
                                     attention_dropout=0.0, **VISION_SIZES[size])
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # the last layer: every vision parameter is used
        pad_token_id=text_config.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    _finish(model, text_config)
    return model if output_dir is None else _save(output_dir, model, processor)
