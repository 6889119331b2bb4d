"""Value heads: shapes, exact save/load round trips (plain and LoRA), generation delegation, seq2seq variant."""

import os

import pytest
import torch

from posttrain.models import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, ValueHeadOutput
from posttrain.models.value_head import VALUE_HEAD_FILE


def _inputs(tokenizer):
    enc = [tokenizer("What is 12+30?\n42")["input_ids"], tokenizer("Sort: 3 1\n")["input_ids"]]
    n = max(map(len, enc))
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (n - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    return ids, mask


def _perturb_head(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.v_head.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_forward_returns_logits_loss_values(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir).eval()
    ids, mask = _inputs(tokenizer)
    out = model(ids, attention_mask=mask)
    assert isinstance(out, ValueHeadOutput)
    lm_logits, loss, values = out  # TRL-style unpacking
    assert lm_logits.shape == (*ids.shape, len(tokenizer)) and loss is None
    assert values.shape == ids.shape and values.dtype == torch.float32
    # the LM part is untouched by the wrapper
    plain = model.pretrained_model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(lm_logits, plain)
    labels = ids.masked_fill(mask == 0, -100)
    assert model(ids, attention_mask=mask, labels=labels).loss is not None


def test_save_load_round_trip_is_exact(tiny_model_dir, tokenizer, tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir, summary_dropout_prob=0.0).eval()
    _perturb_head(model)
    ids, mask = _inputs(tokenizer)
    before = model(ids, attention_mask=mask)
    model.save_pretrained(tmp_path / "vh")
    assert os.path.isfile(tmp_path / "vh" / VALUE_HEAD_FILE)
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "vh").eval()
    assert loaded.summary_dropout_prob == 0.0  # read back from the file's metadata
    after = loaded(ids, attention_mask=mask)
    assert torch.equal(before.value, after.value)
    assert torch.equal(before.logits, after.logits)
    # a folder without a head file gets a fresh head (and the same LM)
    fresh = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir).eval()
    assert not torch.equal(fresh(ids, attention_mask=mask).value, after.value)


def test_lora_round_trip_is_exact(tiny_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir, peft_config=lora, summary_dropout_prob=0.0)
    assert model.is_peft_model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(n.startswith("v_head.") for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapter matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    _perturb_head(model, seed=1)
    model.eval()
    ids, mask = _inputs(tokenizer)
    before = model(ids, attention_mask=mask)
    model.save_pretrained(tmp_path / "lora-vh")
    files = set(os.listdir(tmp_path / "lora-vh"))
    assert {"adapter_config.json", VALUE_HEAD_FILE} <= files and "model.safetensors" not in files
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "lora-vh").eval()
    assert isinstance(loaded.pretrained_model, PeftModel)
    after = loaded(ids, attention_mask=mask)
    assert torch.equal(before.value, after.value) and torch.equal(before.logits, after.logits)
    # a backward pass reaches the adapter and the head
    loaded.train()
    loaded(ids, attention_mask=mask).value.sum().backward()
    assert loaded.v_head.summary.weight.grad is not None
    assert any(p.grad is not None for n, p in loaded.named_parameters() if "lora_A" in n)


def test_generate_delegates_to_the_base_model(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([tokenizer("What is 1+2?\n")["input_ids"]])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(model.generate(ids, **kwargs), model.pretrained_model.generate(ids, **kwargs))


def test_wraps_a_model_object_and_rejects_unknown_init(tokenizer):
    from posttrain.kit import build_tiny_model

    base = build_tiny_model("gpt2", size="tiny")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base, v_head_init_strategy="normal",
                                                              v_head_initializer_range=0.5)
    assert model.pretrained_model is base and model.v_head.summary.in_features == base.config.hidden_size
    assert model.v_head.summary.bias.abs().sum() == 0
    with pytest.raises(ValueError, match="v_head_init_strategy"):
        AutoModelForCausalLMWithValueHead(base, v_head_init_strategy="xavier")


def test_seq2seq_value_head_round_trip(tokenizer, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(T5ForConditionalGeneration(config),
                                                               summary_dropout_prob=0.0).eval()
    ids, mask = _inputs(tokenizer)
    dec = ids[:, :3]
    out = model(ids, attention_mask=mask, decoder_input_ids=dec)
    assert out.value.shape == dec.shape
    model.save_pretrained(tmp_path / "t5")
    loaded = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(tmp_path / "t5").eval()
    assert torch.equal(loaded(ids, attention_mask=mask, decoder_input_ids=dec).value, out.value)


def _legacy_folder(model, folder, layout):
    """Write ``model`` as the older single-file layout by hand: the LM's config plus ONE state dict holding the LM's
    weights and the head's as ``v_head.summary.weight``/``v_head.summary.bias`` (no value_head.safetensors)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir()
    model.pretrained_model.config.save_pretrained(folder)
    state = {k: v.detach().clone().contiguous() for k, v in model.pretrained_model.state_dict().items()}
    state.update({f"v_head.{k}": v.detach().clone() for k, v in model.v_head.state_dict().items()})
    assert {"v_head.summary.weight", "v_head.summary.bias"} <= set(state)
    if layout == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif layout == "safetensors":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:  # sharded safetensors: the head lives in the second shard, which the index names
        keys = sorted(state)
        head = [k for k in keys if k.startswith("v_head.")]
        first = [k for k in keys if k not in head][: len(keys) // 2]
        second = [k for k in keys if k not in first]
        names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
        for name, part in zip(names, (first, second)):
            save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map = {k: names[0] for k in first} | {k: names[1] for k in second}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert not (folder / VALUE_HEAD_FILE).exists()


@pytest.mark.parametrize("layout", ["bin", "safetensors", "sharded"])
def test_loads_a_value_head_stored_in_the_model_weights(tiny_model_dir, tokenizer, tmp_path, layout):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir, summary_dropout_prob=0.0).eval()
    _perturb_head(model, seed=2)
    ids, mask = _inputs(tokenizer)
    before = model(ids, attention_mask=mask)
    _legacy_folder(model, tmp_path / "legacy", layout)
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "legacy", summary_dropout_prob=0.0).eval()
    after = loaded(ids, attention_mask=mask)
    assert torch.equal(before.value, after.value) and torch.equal(before.logits, after.logits)
    # a fresh head would give other values: the check above can fail
    fresh = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir, summary_dropout_prob=0.0).eval()
    assert not torch.allclose(fresh(ids, attention_mask=mask).value, after.value)
    # saving again writes the current layout, which loads back exactly
    loaded.save_pretrained(tmp_path / "resaved")
    assert torch.equal(AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "resaved").eval()(
        ids, attention_mask=mask).value, before.value)


def test_a_partial_legacy_value_head_is_an_error(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir)
    folder = tmp_path / "partial"
    folder.mkdir()
    model.pretrained_model.config.save_pretrained(folder)
    state = {k: v.detach().clone().contiguous() for k, v in model.pretrained_model.state_dict().items()}
    state["v_head.summary.weight"] = model.v_head.summary.weight.detach().clone()  # the bias is missing
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"v_head\.summary\.bias missing"):
        AutoModelForCausalLMWithValueHead.from_pretrained(folder)


def test_state_dict_is_the_base_models_plus_the_head_and_loads_back(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir)
    state = model.state_dict()
    assert set(state) == set(plain.state_dict()) | {"v_head.summary.weight", "v_head.summary.bias"}  # TRL's layout
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(state[key], value)
    other = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_dir, v_head_init_strategy="normal")
    result = other.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(other.v_head.summary.weight, model.v_head.summary.weight)
    prefixed = {f"pretrained_model.{k}" if not k.startswith("v_head.") else k: v for k, v in state.items()}
    other.load_state_dict(prefixed)  # nn.Module's own layout loads too


def test_summary_dropout_prob_comes_from_the_models_config_unless_given(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.config.summary_dropout_prob = 0.5
    assert AutoModelForCausalLMWithValueHead.from_pretrained(base).v_head.dropout.p == 0.5
    assert AutoModelForCausalLMWithValueHead.from_pretrained(base, summary_dropout_prob=0.2).v_head.dropout.p == 0.2
