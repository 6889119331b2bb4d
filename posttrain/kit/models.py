"""Build tiny randomly initialised transformer models for tests, examples and benchmarks.

Models are created from a config (no hub access), with a seeded initialisation, and use the
shipped tokenizer's vocabulary and special token ids. :func:`build_tiny_vlm` builds a tiny
vision-language model and :func:`build_tiny_processor` its processor (the kit tokenizer plus the
family's image tokens, an image processor for 32x32 images and a chat template that renders image
parts), in three families (:data:`VLM_ARCHS`):

* ``llava``: Llava, a CLIP vision tower, a projector and the tiny Qwen2 language model; each image
  becomes a run of ``<image>`` tokens;
* ``gemma3-vlm``: Gemma 3 (``Gemma3ForConditionalGeneration``), a SigLIP vision tower and the tiny
  ``gemma3`` language model; ``Gemma3Processor`` writes each image as ``<start_of_image>``, its
  image tokens and ``<end_of_image>``, between blank lines;
* ``smolvlm``: SmolVLM's architecture, Idefics3 (``Idefics3ForConditionalGeneration``), a SigLIP
  vision tower and the tiny ``llama`` language model; ``Idefics3Processor`` splits each image into
  tiles (2x2 here) plus the whole image, each written as ``<fake_token_around_image>``, a tag
  (``<row_1_col_1>`` ... or ``<global-img>``) and its image tokens.
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

VLM_ARCHS: tuple[str, ...] = ("llava", "gemma3-vlm", "smolvlm")
"""Supported architectures of :func:`build_tiny_vlm` (see the module docstring)."""

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
    # real shapes, few layers: Qwen2.5-0.5B's widths and vocabulary (158M parameters, 136M of them the tied
    # embedding), and Gemma 3 1B's widths and vocabulary (332M, 302M the embedding); token ids past the kit
    # tokenizer's 1024 are never in the data, but the head scores every one of them
    "real": dict(_preset(896, 2, 14, 2, 4864), vocab_size=151_936),
    "real-262k": dict(_preset(1152, 2, 4, 1, 6912), vocab_size=262_144),
}
"""Size presets, in Llama/Qwen2 config names (mapped to GPT-2 names for ``gpt2``, which has no
grouped-query attention); ``vocab_size``, where given, replaces the tokenizer's (the real-shape presets)."""

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

GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
"""The tokens the ``gemma3-vlm`` processor adds to the kit tokenizer (ids 1024, 1025, 1026; Gemma3Processor finds
them by these names), then its turn tokens ``<start_of_turn>`` and ``<end_of_turn>`` (1027, 1028; the latter is its
EOS, as in Gemma 3's chat models)."""
GEMMA3_IMAGE_TOKENS = 4
"""Image tokens per image of the ``gemma3-vlm`` model: the (32 / 8) ** 2 = 16 patch features average-pooled 2x2, as
Gemma 3 pools its 64x64 patches to 256 tokens."""
SMOLVLM_TOKENS = ("<fake_token_around_image>", IMAGE_TOKEN, "<end_of_utterance>", "<global-img>",
                  *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))
"""The tokens the ``smolvlm`` processor adds to the kit tokenizer (ids 1024-1063), as SmolVLM's vocabulary has them;
``<end_of_utterance>`` is its EOS."""
SMOLVLM_SCALE_FACTOR = 2
"""Idefics3's pixel shuffle: each image (or tile) of (32 / 8) ** 2 = 16 patch features becomes 16 / 2 ** 2 = 4 image
tokens."""
SMOLVLM_GRID = 2
"""The ``smolvlm`` processor resizes an image's longest edge to ``SMOLVLM_GRID * image_size`` and splits it into
tiles of ``image_size`` (2x2 for 32x32 images), plus the whole image: 5 sub-images, as SmolVLM splits its inputs
into 384-pixel tiles. Set ``processor.image_processor.do_image_splitting = False`` for the whole image only."""


def _load_tokenizer(tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None) -> PreTrainedTokenizerBase:
    if tokenizer is None:
        from posttrain.kit import load_tokenizer

        return load_tokenizer()
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return tokenizer


def extend_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` with placeholder tokens ``<|extra_N|>`` up to ``vocab_size``, so a real-shape model's
    tokenizer covers its embedding rows as a real checkpoint's does (posttrain refuses a tokenizer much smaller than
    its model: ``models.check_tokenizer``). Text encodes to the same ids as before."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    if vocab_size > len(tokenizer):
        tokenizer.add_tokens([f"<|extra_{i}|>" for i in range(len(tokenizer), vocab_size)])
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
        "vocab_size": preset.pop("vocab_size", len(tok)),
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
    if output_dir is None:
        return model
    if "vocab_size" in SIZES[size]:  # the real-shape presets: the tokenizer covers the embedding, as a checkpoint's
        tok = extend_vocabulary(tok, config.vocab_size)
    return _save(output_dir, model, tok)


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


def vision_chat_template(arch: str = "llava") -> str:
    """The chat template of the ``arch`` family's tiny processor: for ``llava`` the kit's ChatML template extended to
    content lists with image parts (``vision_chat_template.jinja``); Gemma's turns for ``gemma3-vlm``
    (``gemma3_vision_chat_template.jinja``); SmolVLM's layout for ``smolvlm`` (``smolvlm_chat_template.jinja``)."""
    from pathlib import Path

    name = {"llava": "vision_chat_template", "gemma3-vlm": "gemma3_vision_chat_template",
            "smolvlm": "smolvlm_chat_template"}[_vlm_arch(arch)]
    return (Path(__file__).resolve().parent / f"{name}.jinja").read_text(encoding="utf-8")


def _vlm_arch(arch: str) -> str:
    if arch not in VLM_ARCHS:
        raise ValueError(f"unknown vision-language arch {arch!r}; choose one of {list(VLM_ARCHS)}")
    return arch


def build_tiny_processor(image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE, *, arch: str = "llava"):
    """The processor of :func:`build_tiny_vlm` for the ``arch`` family (:data:`VLM_ARCHS`), built offline from the kit
    tokenizer, with a pure-PIL image processor (no torchvision needed) for ``image_size`` pixels and
    :func:`vision_chat_template`:

    * ``llava``: a ``LlavaProcessor``, the kit tokenizer plus the special token :data:`IMAGE_TOKEN` (id 1024), a CLIP
      image processor that resizes and crops to ``image_size``; each image becomes ``(image_size // patch_size) ** 2``
      image tokens;
    * ``gemma3-vlm``: a ``Gemma3Processor``, the kit tokenizer plus :data:`GEMMA3_TOKENS` and Gemma's turn tokens
      (EOS ``<end_of_turn>``); each image (resized to ``image_size`` square) becomes ``\n\n<start_of_image>``,
      ``(image_size // patch_size // 2) ** 2`` image tokens and ``<end_of_image>\n\n``;
    * ``smolvlm``: an ``Idefics3Processor``, the kit tokenizer plus :data:`SMOLVLM_TOKENS` (EOS
      ``<end_of_utterance>``); each image is split into :data:`SMOLVLM_GRID` x :data:`SMOLVLM_GRID` tiles of
      ``image_size`` plus the whole image, each written as ``<fake_token_around_image>``, its tag and
      ``(image_size // patch_size // 2) ** 2`` image tokens."""
    arch = _vlm_arch(arch)
    if arch == "gemma3-vlm":
        return _gemma3_processor(image_size, patch_size)
    if arch == "smolvlm":
        return _smolvlm_processor(image_size, patch_size)
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


def _kit_tokenizer(**kwargs):
    from transformers import AutoTokenizer

    from posttrain.kit import tokenizer_path

    return AutoTokenizer.from_pretrained(tokenizer_path(), **kwargs)


def _gemma3_processor(image_size: int, patch_size: int):
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    patches = image_size // patch_size
    if patches % 2:
        raise ValueError(f"gemma3-vlm pools 2x2 patches: image_size // patch_size must be even, got {patches}")
    tok = _kit_tokenizer(extra_special_tokens=dict(GEMMA3_TOKENS))  # named: tok.boi_token, tok.image_token_id, ...
    tok.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    tok.eos_token = "<end_of_turn>"
    template = vision_chat_template("gemma3-vlm")
    tok.chat_template = template
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    return Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                           image_seq_length=(patches // 2) ** 2)


def _smolvlm_processor(image_size: int, patch_size: int):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    patches = image_size // patch_size
    if patches % SMOLVLM_SCALE_FACTOR:
        raise ValueError(f"smolvlm's pixel shuffle needs image_size // patch_size divisible by "
                         f"{SMOLVLM_SCALE_FACTOR}, got {patches}")
    tok = _kit_tokenizer()
    tok.add_tokens(list(SMOLVLM_TOKENS), special_tokens=True)
    tok.eos_token = "<end_of_utterance>"
    template = vision_chat_template("smolvlm")
    tok.chat_template = template
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": SMOLVLM_GRID * image_size},
                                                max_image_size={"longest_edge": image_size}, do_image_splitting=True)
    return Idefics3Processor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                             image_seq_len=(patches // SMOLVLM_SCALE_FACTOR) ** 2)


def build_tiny_vlm(
    size: str = "tiny",
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    arch: str = "llava",
    **text_overrides: Any,
) -> PreTrainedModel | str:
    """Build a randomly initialised vision-language model (float32) for :func:`build_tiny_processor`.

    Args:
        size: a key of :data:`SIZES`; the vision tower follows :data:`VISION_SIZES`, the language model is
            :func:`build_tiny_model`'s of that size: ``qwen2`` for ``llava`` (tiny: ~0.17M parameters in all),
            ``gemma3`` for ``gemma3-vlm`` (~0.17M), ``llama`` for ``smolvlm`` (~0.17M).
        seed: initialisation seed (the global torch RNG state is left untouched).
        output_dir: if given, save the model and the processor there (loadable offline with
            ``AutoModelForImageTextToText`` / ``AutoProcessor``) and return the path.
        image_size, patch_size: the vision tower's input size and patch size.
        arch: the family, one of :data:`VLM_ARCHS`: ``llava`` (``LlavaForConditionalGeneration``), ``gemma3-vlm``
            (``Gemma3ForConditionalGeneration``) or ``smolvlm`` (``Idefics3ForConditionalGeneration``).
        **text_overrides: fields of the language model's config, e.g. ``num_hidden_layers=1``.

    Returns:
        The model (in eval mode), or the output directory as a string if ``output_dir`` is set.
    """
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    if size not in VISION_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(VISION_SIZES)}")
    processor = build_tiny_processor(image_size, patch_size, arch=arch)
    tok = processor.tokenizer
    if arch != "llava":
        build = _gemma3_vlm if arch == "gemma3-vlm" else _smolvlm
        config, model_cls = build(tok, size, image_size, patch_size, text_overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(config)
        _finish(model, config.text_config)
        return model if output_dir is None else _save(output_dir, model, processor)
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


def _gemma3_vlm(tok, size: str, image_size: int, patch_size: int, text_overrides: dict[str, Any]):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    text_config = build_tiny_config("gemma3", size=size, tokenizer=tok, **text_overrides)
    vision_config = SiglipVisionConfig(image_size=image_size, patch_size=patch_size, attention_dropout=0.0,
                                       vision_use_head=False, **VISION_SIZES[size])
    config = Gemma3Config(
        text_config=text_config, vision_config=vision_config,
        mm_tokens_per_image=(image_size // patch_size // 2) ** 2,
        boi_token_index=tok.boi_token_id, eoi_token_index=tok.convert_tokens_to_ids(GEMMA3_TOKENS["eoi_token"]),
        image_token_index=tok.image_token_id, pad_token_id=text_config.pad_token_id,
        tie_word_embeddings=True,
    )
    return config, Gemma3ForConditionalGeneration


def _smolvlm(tok, size: str, image_size: int, patch_size: int, text_overrides: dict[str, Any]):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    text_config = build_tiny_config("llama", size=size, tokenizer=tok, **text_overrides)
    vision_config = Idefics3VisionConfig(image_size=image_size, patch_size=patch_size, attention_dropout=0.0,
                                         **VISION_SIZES[size])
    config = Idefics3Config(
        vision_config=vision_config, text_config=text_config, scale_factor=SMOLVLM_SCALE_FACTOR,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), pad_token_id=text_config.pad_token_id,
        tie_word_embeddings=True,
    )
    return config, Idefics3ForConditionalGeneration
