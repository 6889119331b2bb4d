"""Language models with a scalar value head (critics for PPO-style training), TRL-compatible names.

:class:`AutoModelForCausalLMWithValueHead` wraps any causal LM (a plain ``transformers`` model or a PEFT/LoRA
``PeftModel``) and adds :class:`ValueHead`, a dropout + ``Linear(hidden_size, 1)`` applied to the **last hidden
state** of every position. Its forward returns a :class:`ValueHeadOutput` named tuple, so both TRL-style
unpacking and attribute access work::

    model = AutoModelForCausalLMWithValueHead.from_pretrained("runs/tiny-qwen2")
    lm_logits, loss, values = model(input_ids, attention_mask=attention_mask)   # values: (B, L), float32
    out = model(input_ids); out.value

Saving writes the base model as usual (``save_pretrained``: full weights, or only the adapter for a PEFT model)
and the head beside it in ``value_head.safetensors``; ``from_pretrained`` on that folder restores both exactly
(for an adapter folder the base model is reloaded from the adapter's ``base_model_name_or_path``).
Folders in the older layout, where the head's weights (``v_head.summary.weight``, ``v_head.summary.bias``) sit
inside the model's own weight file (``model.safetensors``, ``pytorch_model.bin`` or their sharded ``*.index.json``
forms) next to the causal LM's weights, load too: the ``v_head.`` entries become the head.
``generate`` delegates to the wrapped model. :class:`AutoModelForSeq2SeqLMWithValueHead` is the same for
encoder-decoder models (the head reads the decoder's last hidden state).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
from torch import nn

from .checkpointing import enable_checkpointing

VALUE_HEAD_FILE = "value_head.safetensors"
_HEAD_KWARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")


class ValueHeadOutput(NamedTuple):
    """``(logits, loss, value)``: the LM logits ``(B, L, V)``, the LM loss (None without ``labels``) and the value
    of every position ``(B, L)`` in float32."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    value: torch.Tensor


def _hidden_size(config) -> int:
    for cfg in (config, getattr(config, "get_text_config", lambda **_: None)(decoder=True)):
        if cfg is None:
            continue
        for name in ("hidden_size", "d_model", "n_embd", "word_embed_proj_dim"):
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                return value
    raise ValueError(f"Cannot find the hidden size in the config of {type(config).__name__}.")


class ValueHead(nn.Module):
    """``value = Linear(dropout(hidden))``: one scalar per position. Kept in float32 whatever the base dtype."""

    def __init__(self, hidden_size: int, summary_dropout_prob: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(summary_dropout_prob) if summary_dropout_prob else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.to(self.summary.weight.dtype)
        return self.summary(self.dropout(hidden_states)).squeeze(-1)


class _PreTrainedModelWithValueHead(nn.Module):
    """Shared implementation; subclasses set ``transformers_parent_class`` and ``_last_hidden_state``."""

    transformers_parent_class: Any = None

    def __init__(self, pretrained_model: nn.Module, summary_dropout_prob: float = 0.1,
                 v_head_initializer_range: float = 0.2, v_head_init_strategy: str | None = None):
        super().__init__()
        self.pretrained_model = pretrained_model
        self.summary_dropout_prob = summary_dropout_prob
        self.v_head = ValueHead(_hidden_size(pretrained_model.config), summary_dropout_prob)
        if v_head_init_strategy == "normal":
            nn.init.normal_(self.v_head.summary.weight, mean=0.0, std=v_head_initializer_range)
            nn.init.zeros_(self.v_head.summary.bias)
        elif v_head_init_strategy is not None:
            raise ValueError(f"Unknown v_head_init_strategy {v_head_init_strategy!r}; use None (default init) or 'normal'.")
        device = _device_of(pretrained_model)
        if device is not None:
            self.v_head.to(device)

    # -- attributes the Trainer and users expect ----------------------------------------------------
    @property
    def config(self):
        return self.pretrained_model.config

    @property
    def is_peft_model(self) -> bool:
        try:
            from peft import PeftModel
        except ImportError:  # pragma: no cover
            return False
        return isinstance(self.pretrained_model, PeftModel)

    @property
    def device(self) -> torch.device:
        return self.v_head.summary.weight.device

    def generate(self, *args, **kwargs):
        """Generate with the wrapped model (the value head plays no part)."""
        return self.pretrained_model.generate(*args, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        enable_checkpointing(self.pretrained_model, activation_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):  # transformers 4's name
        enable_checkpointing(self.pretrained_model, gradient_checkpointing_kwargs, **kwargs)

    def get_input_embeddings(self):
        return self.pretrained_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.pretrained_model.get_output_embeddings()

    # -- forward ---------------------------------------------------------------------------------
    @staticmethod
    def _last_hidden_state(outputs) -> torch.Tensor:
        return outputs.hidden_states[-1]

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs) -> ValueHeadOutput:
        """Run the LM and the value head. Extra keyword arguments (``labels``, ``position_ids``, ...) go to the LM."""
        kwargs["output_hidden_states"] = True
        kwargs.setdefault("return_dict", True)
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        outputs = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = self._last_hidden_state(outputs)
        if hidden.device != self.device:
            hidden = hidden.to(self.device)
        value = self.v_head(hidden).float()
        return ValueHeadOutput(outputs.logits, getattr(outputs, "loss", None), value)

    # -- saving and loading ----------------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The base model's entries under its own names (as ``transformers`` saves them) and the head's as
        ``v_head.*``: TRL's layout, so a value-head model's weights load into the plain model and back."""
        out = self.pretrained_model.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        out.update(self.v_head.state_dict(prefix=f"{prefix}v_head.", keep_vars=keep_vars))
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load :meth:`state_dict`'s layout (or ``nn.Module``'s, with ``pretrained_model.`` in front)."""
        head = {k[len("v_head."):]: v for k, v in state_dict.items() if k.startswith("v_head.")}
        base = {k.removeprefix("pretrained_model."): v for k, v in state_dict.items() if not k.startswith("v_head.")}
        first = self.pretrained_model.load_state_dict(base, strict=strict, assign=assign)
        second = self.v_head.load_state_dict(head, strict=strict, assign=assign)
        return type(first)(first.missing_keys + [f"v_head.{k}" for k in second.missing_keys],
                           first.unexpected_keys + [f"v_head.{k}" for k in second.unexpected_keys])

    def value_head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.v_head.state_dict().items()}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the base model (``save_pretrained``: weights, or the adapter of a PEFT model) and ``value_head.safetensors``."""
        from safetensors.torch import save_file

        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        self.pretrained_model.save_pretrained(save_directory, **kwargs)
        metadata = {"format": "pt", "summary_dropout_prob": str(self.summary_dropout_prob),
                    "hidden_size": str(self.v_head.summary.in_features)}
        save_file(self.value_head_state_dict(), os.path.join(save_directory, VALUE_HEAD_FILE), metadata=metadata)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, peft_config=None, is_trainable: bool = True,
                        **kwargs):
        """Load (or wrap) a model and its value head.

        Args:
            pretrained_model_name_or_path: a model object (a ``transformers`` model or a ``PeftModel``), a model folder
                or hub id, or a folder written by :meth:`save_pretrained` (which may hold a PEFT adapter only).
            peft_config: wrap the base model with this LoRA config (ignored if it is already a ``PeftModel``).
            is_trainable: when loading a saved adapter, keep it trainable (``PeftModel.from_pretrained``).
            **kwargs: ``summary_dropout_prob`` (default 0.1), ``v_head_initializer_range`` (0.2) and
                ``v_head_init_strategy`` (None or ``"normal"``) configure the head; the rest go to the base
                model's ``from_pretrained``.

        The head is read from ``value_head.safetensors`` in the folder when present; else from ``v_head.*`` entries
        in the model's weight files (the older single-file layout); else it is freshly initialised.
        """
        head_kwargs = {k: kwargs.pop(k) for k in _HEAD_KWARGS if k in kwargs}
        head_file = None
        legacy_state = None
        if isinstance(pretrained_model_name_or_path, nn.Module):
            base = pretrained_model_name_or_path
        else:
            path = os.fspath(pretrained_model_name_or_path)
            if os.path.isfile(os.path.join(path, "adapter_config.json")):
                from peft import PeftConfig, PeftModel

                adapter = PeftConfig.from_pretrained(path)
                base = cls.transformers_parent_class.from_pretrained(adapter.base_model_name_or_path, *model_args, **kwargs)
                base = PeftModel.from_pretrained(base, path, is_trainable=is_trainable)
            else:
                base = cls.transformers_parent_class.from_pretrained(path, *model_args, **kwargs)
            head_file = _find_head_file(path, kwargs)
            if head_file is None:
                legacy_state = _legacy_head_state(path, kwargs)
        if peft_config is not None:
            from peft import PeftModel, get_peft_model

            if not isinstance(base, PeftModel):
                base = get_peft_model(base, peft_config)
        config_dropout = getattr(getattr(base, "config", None), "summary_dropout_prob", None)
        if head_file is None and config_dropout is not None and "summary_dropout_prob" not in head_kwargs:
            head_kwargs["summary_dropout_prob"] = float(config_dropout)  # the model's config says (TRL)
        if head_file is not None and "summary_dropout_prob" not in head_kwargs:
            from safetensors import safe_open

            with safe_open(head_file, framework="pt") as f:
                saved = (f.metadata() or {}).get("summary_dropout_prob")
            if saved is not None:
                head_kwargs["summary_dropout_prob"] = float(saved)
        model = cls(base, **head_kwargs)
        if head_file is not None:
            from safetensors.torch import load_file

            state = load_file(head_file)
            model.v_head.load_state_dict({k: v.to(model.device) for k, v in state.items()}, strict=True)
        elif legacy_state is not None:
            head_state = model.v_head.state_dict()
            missing = sorted(set(head_state) - set(legacy_state))
            if missing:
                raise ValueError(f"The weights of {pretrained_model_name_or_path} hold a partial value head: "
                                 f"v_head.{', v_head.'.join(missing)} missing (found v_head.{', v_head.'.join(sorted(legacy_state))}).")
            model.v_head.load_state_dict(
                {k: legacy_state[k].to(device=model.device, dtype=head_state[k].dtype) for k in head_state}, strict=True)
        return model


def _device_of(model: nn.Module) -> torch.device | None:
    try:
        head = model.get_output_embeddings()
        if head is not None:
            return head.weight.device
    except (AttributeError, NotImplementedError):
        pass
    try:
        return next(model.parameters()).device
    except StopIteration:
        return None


def _find_head_file(path: str, kwargs: dict) -> str | None:
    local = os.path.join(path, VALUE_HEAD_FILE)
    if os.path.isfile(local):
        return local
    if os.path.isdir(path):
        return None
    try:  # a hub id: fetch the head if the repository has one
        from huggingface_hub import hf_hub_download

        return hf_hub_download(path, VALUE_HEAD_FILE, revision=kwargs.get("revision"))
    except Exception:
        return None


_LEGACY_PREFIX = "v_head."
# The model's own weight files, in the order transformers prefers them; an index names the shard of every tensor.
_LEGACY_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")


def _resolve(path: str, filename: str, kwargs: dict) -> str | None:
    """A file of a local folder, or of a hub repository (from the cache or downloaded); None if absent."""
    if os.path.isdir(path):
        local = os.path.join(path, filename)
        return local if os.path.isfile(local) else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(path, filename, revision=kwargs.get("revision"))
    except Exception:
        return None


def _read_tensors(file: str, keys=None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.bin`` file whose names start with ``v_head.`` (or are in ``keys``)."""
    wanted = (lambda k: k in keys) if keys is not None else (lambda k: k.startswith(_LEGACY_PREFIX))
    if file.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if wanted(k)}
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if wanted(k)}


def _legacy_head_state(path: str, kwargs: dict) -> dict[str, torch.Tensor] | None:
    """The value head stored inside the model's weight files (``v_head.summary.weight``/``.bias`` next to the LM's
    weights, the older layout), with the ``v_head.`` prefix removed; None if the first weight file found has none."""
    import json

    for filename in _LEGACY_WEIGHT_FILES:
        file = _resolve(path, filename, kwargs)
        if file is None:
            continue
        if filename.endswith(".index.json"):
            with open(file, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            shards: dict[str, set[str]] = {}
            for key, shard in weight_map.items():
                if key.startswith(_LEGACY_PREFIX):
                    shards.setdefault(shard, set()).add(key)
            tensors: dict[str, torch.Tensor] = {}
            for shard, keys in shards.items():
                shard_file = _resolve(path, shard, kwargs)
                if shard_file is None:
                    raise FileNotFoundError(f"{file} names shard {shard!r} for {sorted(keys)}, but it is missing.")
                tensors.update(_read_tensors(shard_file, keys))
        else:
            tensors = _read_tensors(file)
        if not tensors:
            return None
        return {k[len(_LEGACY_PREFIX):]: v for k, v in tensors.items()}
    return None


class _LazyAutoClass:
    """Class attribute that resolves to a ``transformers`` auto class on first use (keeps imports cheap)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj, owner):
        import transformers

        return getattr(transformers, self.name)


class AutoModelForCausalLMWithValueHead(_PreTrainedModelWithValueHead):
    """A causal LM plus a scalar value head on its last hidden state; see the module docstring."""

    transformers_parent_class = _LazyAutoClass("AutoModelForCausalLM")


class AutoModelForSeq2SeqLMWithValueHead(_PreTrainedModelWithValueHead):
    """An encoder-decoder LM plus a scalar value head on the decoder's last hidden state."""

    transformers_parent_class = _LazyAutoClass("AutoModelForSeq2SeqLM")

    @staticmethod
    def _last_hidden_state(outputs) -> torch.Tensor:
        return outputs.decoder_hidden_states[-1]


__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "ValueHead", "ValueHeadOutput",
           "VALUE_HEAD_FILE"]
