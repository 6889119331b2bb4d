"""Models layer: loading (dtype, quantization, LoRA), output-head helpers."""

from .heads import (accepts_videos, disable_dropout, is_vision_model, output_head, packed_sequences_supported,
                    select_head_positions, varlen_attention)
from .loading import (
    ModelConfig,
    check_tokenizer,
    ensure_pad_token,
    set_pad_token,
    is_vision_checkpoint,
    is_vision_config,
    kbit_device_map,
    load_frozen,
    load_pretrained,
    load_processing_class,
    load_tokenizer,
    model_init_kwargs,
    peft_config,
    prepare_peft_model,
    quantization_config,
    resolve_dtype,
    set_chat_template,
)
from .wrappers import base_model, eval_mode, is_peft_model, unwrap
from .value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, ValueHead, ValueHeadOutput

__all__ = [
    "accepts_videos", "base_model", "disable_dropout", "eval_mode", "is_peft_model", "is_vision_model", "output_head", "packed_sequences_supported",
    "select_head_positions", "unwrap", "varlen_attention", "ModelConfig", "check_tokenizer", "ensure_pad_token", "set_pad_token", "is_vision_checkpoint",
    "is_vision_config", "kbit_device_map", "load_frozen", "load_pretrained", "load_processing_class", "load_tokenizer",
    "model_init_kwargs", "peft_config", "prepare_peft_model", "quantization_config", "resolve_dtype", "set_chat_template",
]
__all__ += ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "ValueHead", "ValueHeadOutput"]
