"""Models layer: loading (dtype, quantization, LoRA), output-head helpers."""

from .heads import (disable_dropout, output_head, packed_sequences_supported, select_head_positions, unwrap,
                    varlen_attention)
from .loading import (
    ModelConfig,
    ensure_pad_token,
    kbit_device_map,
    load_pretrained,
    load_tokenizer,
    model_init_kwargs,
    peft_config,
    prepare_peft_model,
    quantization_config,
    resolve_dtype,
    set_chat_template,
)
from .value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, ValueHead, ValueHeadOutput

__all__ = [
    "disable_dropout", "output_head", "packed_sequences_supported", "select_head_positions", "unwrap", "varlen_attention", "ModelConfig", "ensure_pad_token", "kbit_device_map",
    "load_pretrained", "load_tokenizer", "model_init_kwargs", "peft_config", "prepare_peft_model",
    "quantization_config", "resolve_dtype", "set_chat_template",
]
__all__ += ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "ValueHead", "ValueHeadOutput"]
