"""Loading models and tokenizers: hub ids or local folders, dtype, 4/8-bit quantization, LoRA."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class ModelConfig:
    """Model arguments of every script (TRL's names): what to load, in which dtype, quantized or with LoRA."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local folder of the model."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a hub model."})
    dtype: str | None = field(
        default="float32",
        metadata={"help": "Weights dtype. Default float32: master weights in full precision, with bf16/fp16 mixed "
                  "precision (--bf16) doing the compute, as TRL does. 'auto' (as saved: most hub checkpoints are "
                  "bf16), 'bfloat16' or 'float16' train low-precision weights (with a warning: updates below "
                  "their resolution are lost).",
                  "choices": ["auto", "float32", "bfloat16", "float16"]},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of the tokenizer/processor (default: the model's)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. 'sdpa', 'eager', 'flash_attention_2'."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "Modules to adapt ('all-linear' for all)."})
    lora_modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra modules to train and save fully."})
    lora_task_type: str = field(default="CAUSAL_LM", metadata={"help": "'SEQ_CLS' for reward models."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling alpha/sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base model 8-bit quantized (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model 4-bit quantized (bitsandbytes)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "'nf4' or 'fp4'.", "choices": ["nf4", "fp4"]})
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Double quantization of the 4-bit constants."})
    bnb_4bit_quant_storage: str | None = field(default=None, metadata={"help": "Storage dtype of 4-bit weights (FSDP: bfloat16)."})

    def __post_init__(self):
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("Choose one of load_in_8bit and load_in_4bit, not both.")
        if isinstance(self.lora_target_modules, list) and len(self.lora_target_modules) == 1 and self.lora_target_modules[0] == "all-linear":
            self.lora_target_modules = "all-linear"


def resolve_dtype(dtype: Any):
    """'auto'/None stay as they are; names map to torch dtypes; torch dtypes pass through."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"Unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'.")


def quantization_config(model_args: ModelConfig):
    """A ``BitsAndBytesConfig`` for ``load_in_4bit``/``load_in_8bit``, or None."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "4-bit/8-bit loading needs bitsandbytes: pip install 'posttrain[quantization]'."
        ) from err
    from transformers import BitsAndBytesConfig

    compute = resolve_dtype(model_args.dtype)
    compute = compute if isinstance(compute, torch.dtype) else torch.float32
    if model_args.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
            bnb_4bit_quant_storage=resolve_dtype(model_args.bnb_4bit_quant_storage) or compute,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def kbit_device_map() -> dict[str, Any] | None:
    """Quantized models are placed whole on this process's device."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return None


def model_init_kwargs(model_args: ModelConfig) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments implied by a :class:`ModelConfig`."""
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        "dtype": model_args.dtype,
    }
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    qconfig = quantization_config(model_args)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = kbit_device_map()
    return kwargs


def peft_config(model_args: ModelConfig):
    """A LoRA ``peft.LoraConfig`` when ``use_peft`` is set, else None."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


def is_vision_config(config) -> bool:
    """True for the config of a vision-language model (one with a vision tower: Llava, Qwen2-VL, Gemma 3, ...)."""
    return getattr(config, "vision_config", None) is not None


def is_vision_checkpoint(name_or_path: str, **kwargs) -> bool:
    """True when the model at ``name_or_path`` is a vision-language model (False when its config cannot be read:
    loading it then reports the problem)."""
    from transformers import AutoConfig

    kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code") and v != "main"}
    try:
        return is_vision_config(AutoConfig.from_pretrained(name_or_path, **kwargs))
    except (OSError, ValueError):
        return False


LOW_PRECISION = (torch.bfloat16, torch.float16)


def load_pretrained(name_or_path: str, auto_class=None, *, frozen: bool = False, **kwargs):
    """``auto_class.from_pretrained`` with dtype names resolved and a clear error when nothing is found. Without an
    ``auto_class``: ``AutoModelForImageTextToText`` for a vision-language model, else ``AutoModelForCausalLM``.

    Without a ``dtype`` the weights are float32 whatever the checkpoint stores (transformers 5 would keep a bf16
    checkpoint in bf16, where an optimizer step smaller than bf16's resolution leaves a weight unchanged); mixed
    precision does the compute. A model to be trained that ends up in bf16/fp16 anyway, because ``dtype`` asked for
    it, gets a warning saying so; ``frozen=True`` (a reference, reward model, teacher or judge) skips the warning."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from ..data.loading import looks_local

    if not os.path.exists(os.path.expanduser(name_or_path)) and looks_local(name_or_path):
        raise FileNotFoundError(
            f"Model '{name_or_path}' does not exist: it looks like a local path, so it is not looked up on the Hub. "
            f"Check the path (relative paths start from the current folder, {os.getcwd()}); `posttrain kit "
            "build-model` writes a tiny model folder.")
    if auto_class is None:
        vision = is_vision_checkpoint(name_or_path, **kwargs)
        auto_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    kwargs = dict(kwargs)
    if "torch_dtype" in kwargs and "dtype" not in kwargs:
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    kwargs["dtype"] = resolve_dtype(kwargs["dtype"]) if kwargs.get("dtype") is not None else torch.float32
    if kwargs.get("revision") == "main":
        kwargs.pop("revision")
    try:
        model = auto_class.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        if os.path.isdir(name_or_path):
            raise
        raise OSError(
            f"Could not load model '{name_or_path}': it is not a local folder and could not be fetched from the "
            f"Hub ({str(err)[:200]}). Pass a local model folder; `posttrain kit build-model` writes a tiny one."
        ) from err
    if not frozen and "quantization_config" not in kwargs:
        warn_low_precision_weights(model, name_or_path)
    return model


def load_frozen(model, init_kwargs: dict | None = None, *, kwargs_field: str | None = None):
    """A model that is only evaluated (a reference, teacher, reward model or judge), given as a name/path or an object:
    ``(model, owned)``. A name or path is loaded with ``init_kwargs`` (float32 unless they set a ``dtype``), and
    ``owned`` is True: the trainer made it, so it may store it in the training precision
    (:meth:`posttrain.trainers.base.BaseTrainer.prepare_frozen_model`). An object is returned as it is (``owned``
    False: the user may still use it); when ``init_kwargs`` are this model's own config field (``kwargs_field``, e.g.
    ``ref_model_init_kwargs``), giving them with an object is an error naming the field. ``None`` stays None (the
    trainer copies the policy, which it then owns)."""
    if isinstance(model, str):
        return load_pretrained(model, None, frozen=True, **(init_kwargs or {})), True
    if model is not None and init_kwargs and kwargs_field:
        raise ValueError(f"{kwargs_field} only applies when the model is given as a name or path, not as an object.")
    return model, model is None


def warn_low_precision_weights(model, name: str) -> None:
    """Warn when the trainable floating-point weights of ``model`` are bf16/fp16 (pure low-precision training)."""
    import warnings

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    low = sorted(str(d).replace("torch.", "") for d in dtypes & set(LOW_PRECISION))
    if low:
        warnings.warn(
            f"Model '{name}' is loaded with {'/'.join(low)} weights, so it trains them in {'/'.join(low)}: optimizer "
            "updates smaller than that precision's resolution are lost (with small learning rates, many weights "
            "never change). For float32 master weights with mixed-precision compute, leave dtype unset "
            "(model_init_kwargs / --dtype float32) and use --bf16.", UserWarning, stacklevel=3)


def load_tokenizer(name_or_path: str, **kwargs):
    """Load a tokenizer (or processor); give it a pad token when it has none."""
    from transformers import AutoTokenizer

    kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}
    if kwargs.get("revision") == "main":
        kwargs.pop("revision")
    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    check_tokenizer(tok, name_or_path)
    ensure_pad_token(tok)
    return tok


TOKENIZER_PROBE = "The quick brown fox jumps over the lazy dog 0123456789."


def check_tokenizer(tokenizer, source: str, model=None) -> None:
    """Refuse a tokenizer that cannot encode text, or whose vocabulary is a small fraction of ``model``'s embedding
    rows: what transformers builds from a model folder without tokenizer files (an empty tokenizer that encodes
    everything to no tokens, so training would run on empty sequences and report a loss of 0)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    try:
        ids = tok(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode at all fails the same check
        ids = []
    rows = None
    if model is not None and hasattr(model, "get_input_embeddings") and model.get_input_embeddings() is not None:
        rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    tiny = rows is not None and len(tok) * 10 < rows
    if ids and not tiny:
        return
    what = (f"encodes {TOKENIZER_PROBE!r} to no tokens" if not ids else
            f"has {len(tok)} tokens for a model with {rows} embedding rows")
    raise ValueError(
        f"The tokenizer loaded from '{source}' ({type(tok).__name__}) {what}: the folder most likely has no tokenizer "
        "files (tokenizer.json / tokenizer_config.json / vocab files). Training on it would see empty sequences. Put "
        "the tokenizer's files in the model folder, or name where they are: --tokenizer_name_or_path PATH (scripts) "
        "or processing_class=AutoTokenizer.from_pretrained(PATH) (Python).")


def load_processing_class(name_or_path: str, **kwargs):
    """What a trainer needs to turn rows into model inputs: the processor (``AutoProcessor``: tokenizer plus image
    processor and its chat template) of a vision-language model, else the tokenizer (:func:`load_tokenizer`)."""
    if not is_vision_checkpoint(name_or_path, **kwargs):
        return load_tokenizer(name_or_path, **kwargs)
    from transformers import AutoProcessor

    kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code") and v != "main"}
    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    ensure_pad_token(getattr(processor, "tokenizer", processor))
    return processor


def set_pad_token(tokenizer, token: str) -> None:
    """Pad with ``token`` (a config's ``pad_token``); it must be a token of the vocabulary, not a new one."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"pad_token={token!r} is not a token of the tokenizer's vocabulary; give one that is (e.g. "
                         f"its EOS token {tokenizer.eos_token!r}), or leave pad_token unset.")
    tokenizer.pad_token = token


def ensure_pad_token(tokenizer) -> None:
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token


def prepare_peft_model(model, peft_config_obj, gradient_checkpointing: bool = False):
    """Wrap ``model`` with a LoRA adapter (k-bit models are prepared for training first)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if isinstance(model, PeftModel):
        return model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        keep_4bit_layout_trainable(model)
    return get_peft_model(model, peft_config_obj)


def keep_4bit_layout_trainable(model) -> None:
    """Stop bitsandbytes' CPU inference repacking of 4-bit weights in a model that is being trained.

    On CPUs with AVX512-BF16, bitsandbytes (seen in 0.50.2) repacks a ``Linear4bit``'s weights into an inference-only layout
    the first time the layer runs in eval mode without gradients (generation, evaluation, a reference pass with the
    adapter disabled) and never converts them back, so the next training forward fails ("a view of a leaf Variable
    that requires grad is being used in an in-place operation"). Online trainers generate between training steps,
    so a trained 4-bit model keeps the ordinary layout (no effect on GPUs)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def store_linears_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the weights and biases of ``model``'s plain ``nn.Linear`` layers in ``dtype``; returns how many.

    For a frozen model that only ever runs inside an autocast region of ``dtype``: autocast casts a linear layer's
    float32 weight and bias to ``dtype`` at every forward, so storing them in ``dtype`` gives the same outputs while
    holding half the memory and skipping the casts. Layers sharing a parameter with another module (an output head
    tied to the input embedding, which runs outside autocast) keep theirs; quantized and adapter layers (subclasses
    and wrappers of ``nn.Linear``) are left alone."""
    others = {id(p) for m in model.modules() if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False)}
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32 and id(module.weight) not in others:
            module.to(dtype)
            count += 1
    return count


def set_chat_template(processing_class, path: str) -> None:
    """Use the chat template of a tokenizer folder / hub id, or of a ``.jinja`` file."""
    tok = getattr(processing_class, "tokenizer", processing_class)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tok.chat_template = f.read()
    else:
        from transformers import AutoTokenizer

        tok.chat_template = AutoTokenizer.from_pretrained(path).chat_template
    if processing_class is not tok and hasattr(processing_class, "chat_template"):
        processing_class.chat_template = tok.chat_template
