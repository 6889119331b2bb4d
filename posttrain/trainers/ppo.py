"""Proximal Policy Optimization for language models: ``PPOConfig`` and ``PPOTrainer`` (TRL-compatible names).

The policy samples one completion per prompt; a reward model (or reward functions) scores it. Each completion
token gets the reward ``-kl_coef * KL_t`` (per-token KL to the reference policy, estimator ``kl_estimator``) and
the last token also gets the score (Ouyang et al. 2022, Eq. 2; Ziegler et al. 2019). A value model estimates
each state's value; GAE (``gamma``, ``lam``) gives advantages and returns; the policy takes
``num_ppo_epochs`` passes of ``num_mini_batches`` optimizer steps over the rollout with the clipped surrogate,
and the value model with the clipped value loss (Schulman et al. 2017, Eq. 7 and 9). Losses and GAE are the pure
functions of :mod:`posttrain.losses.policy`; sampling, scoring, batching and reference log-probs are the online
core's (:mod:`posttrain.trainers.online_base`).

Layout: the generation batch of one process is ``per_device_train_batch_size * gradient_accumulation_steps *
num_mini_batches`` completions; each mini-batch is ``gradient_accumulation_steps`` micro-batches, i.e. one
optimizer step; the rollout is reused ``num_ppo_epochs`` times (the micro-batch order is the same each epoch).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ..losses.policy import gae, kl_penalty, ppo_policy_loss, ppo_value_loss
from ..losses.tokens import masked_mean, masked_whiten
from ..models import prepare_peft_model, unwrap
from ..models.loading import load_pretrained, load_tokenizer
from ..models.policy_value import PolicyAndValue, token_values
from .base import check_choice, checkpointing_field
from .logprobs import completion_layout
from .online_base import OnlineConfig, OnlineTrainer
from ..models import eval_mode

@dataclass
class PPOConfig(OnlineConfig):
    """Configuration of :class:`PPOTrainer`; field names and defaults follow TRL's ``PPOConfig``.
    ``generation_batch_size`` / ``steps_per_generation`` / ``num_iterations`` are derived from
    ``num_mini_batches`` and ``num_ppo_epochs`` (setting them is an error)."""

    gradient_checkpointing: bool = checkpointing_field(False, "as in TRL 0.21, the last TRL with this trainer")

    learning_rate: float = field(default=3e-6, metadata={"help": "Initial AdamW learning rate (policy and value model)."})
    num_generations: int = field(default=1, metadata={"help": "Completions per prompt (PPO: 1)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (also applied to the training log-probs)."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout."})
    num_mini_batches: int = field(default=1, metadata={"help": "Optimizer steps per pass over a rollout."})
    kl_coef: float = field(default=0.05, metadata={"help": "Coefficient of the per-token KL penalty in the reward."})
    kl_estimator: str = field(default="k1", metadata={"help": "KL estimator: 'k1' (log ratio) or 'k3' (unbiased, >= 0).",
                                                      "choices": ["k1", "k3"]})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards before GAE."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of completions that end without EOS (None: off)."})
    response_length: int | None = field(
        default=None, metadata={"help": "TRL's name for max_completion_length (tokens generated per completion)."})
    stop_token: str | None = field(default=None, metadata={"help": "'eos': completions stop at EOS (always the case here)."})
    stop_token_id: int | None = field(default=None, metadata={"help": "Stop generating at this token id (default: EOS)."})
    total_episodes: int | None = field(
        default=None, metadata={"help": "Completions to train on in total; sets max_steps when max_steps is not given."})

    def __post_init__(self):
        if self.use_vllm:
            raise ValueError("PPOTrainer generates with transformers; use_vllm=True is not supported for PPO (GRPO, "
                             "RLOO, Online DPO, XPO and Nash-MD support it, docs/vllm.md).")
        check_choice("kl_estimator", self.kl_estimator, ("k1", "k3"))
        if self.ddp_find_unused_parameters is None:
            # every training forward runs the policy and the value model, but the values leave the forward beside its
            # output; DDP looking for unused parameters from the output alone would mark the value model unused, then
            # ready a second time in backward ("Expected to mark a variable ready only once")
            self.ddp_find_unused_parameters = False
        if self.stop_token not in (None, "eos"):
            raise ValueError(f"stop_token must be None or 'eos', got {self.stop_token!r} (use stop_token_id for another "
                             "token).")
        for name in ("num_ppo_epochs", "num_mini_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.generation_batch_size is not None or self.steps_per_generation is not None or self.num_iterations != 1:
            raise ValueError("PPO derives generation_batch_size, steps_per_generation and num_iterations from "
                             "num_mini_batches and num_ppo_epochs; set those instead.")
        if self.response_length is not None:
            self.max_completion_length = self.response_length
        if self.stop_token_id is not None:
            self.generation_kwargs = {**(self.generation_kwargs or {}), "eos_token_id": self.stop_token_id}
        self.steps_per_generation = self.gradient_accumulation_steps * self.num_mini_batches
        self.num_iterations = self.num_ppo_epochs
        self.beta = self.kl_coef  # the online core keeps a reference (and its log-probs) when beta != 0
        super().__post_init__()
        if self.total_episodes is not None and self.max_steps <= 0:
            rollouts = math.ceil(self.total_episodes / self.generation_batch_size)
            self.max_steps = rollouts * self.num_ppo_epochs * self.num_mini_batches


class PPOTrainer(OnlineTrainer):
    """PPO with a policy, a reference policy (default: a frozen copy of the policy), a reward model and/or reward
    functions, and a value model (a one-output sequence-classification model, object or path; default: loaded
    from ``reward_model`` when that is a path). Arguments are TRL's, by keyword.

    Logs TRL's names: ``objective/kl``, ``objective/entropy``, ``objective/non_score_reward``,
    ``objective/rlhf_reward``, ``objective/scores``, ``policy/approxkl_avg``, ``policy/clipfrac_avg``,
    ``loss/policy_avg``, ``loss/value_avg``, ``val/clipfrac_avg``, ``policy/entropy_avg``, ``val/ratio``,
    ``val/num_eos_tokens``, plus the online core's ``reward``, ``rewards/<name>/mean`` and ``completions/*``.
    """

    config_class = PPOConfig
    _run_suffix = "PPO"

    def __init__(self, args: PPOConfig | None = None, processing_class=None, model=None, ref_model=None,
                 reward_model=None, train_dataset=None, value_model=None, data_collator=None, eval_dataset=None,
                 optimizers=(None, None), callbacks=None, peft_config=None, reward_funcs=None):
        if model is None:
            raise ValueError("PPOTrainer needs model= (the policy: a causal LM object, name or path).")
        if data_collator is not None:
            raise ValueError("PPOTrainer builds its own batches from generations; data_collator must be None.")
        funcs = ([reward_model] if reward_model is not None else []) + list(
            reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs] if reward_funcs else [])
        if not funcs:
            raise ValueError("PPOTrainer needs reward_model= (a sequence-classification reward model) and/or reward_funcs=.")
        init_kwargs = (args.model_init_kwargs if args is not None else None) or {}
        policy = load_pretrained(model, None, **init_kwargs) if isinstance(model, str) else model
        if peft_config is not None:  # LoRA on the policy only; the value model trains whole (as TRL's PPO)
            policy = prepare_peft_model(policy, peft_config, bool(args is not None and args.gradient_checkpointing))
        if value_model is None:
            if not isinstance(reward_model, str):
                raise ValueError("PPOTrainer needs value_model= (a sequence-classification model with one output, object "
                                 "or path, e.g. the reward model's checkpoint).")
            value_model = reward_model
        if isinstance(value_model, (str, os.PathLike)):
            from transformers import AutoModelForSequenceClassification

            value_model = load_pretrained(str(value_model), AutoModelForSequenceClassification, num_labels=1,
                                          **init_kwargs)
        # TRL's PPO takes a reward model object with no tokenizer of its own: it shares the policy's
        reward_tokenizer = None
        if isinstance(reward_model, torch.nn.Module):
            reward_tokenizer = processing_class if processing_class is not None else load_tokenizer(
                policy.config._name_or_path)
        super().__init__(PolicyAndValue(policy, value_model), funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers, reward_processing_classes=[reward_tokenizer] + [None] * (len(funcs) - 1),
                         ref_model=ref_model)

    # -- reference: the policy alone, never the value model -------------------------------------------------------
    def reference_source(self) -> torch.nn.Module:
        return unwrap(self.model).policy

    # -- rollout: per-token rewards, values, GAE ---------------------------------------------------------------
    def _needs_old_logps_for_rewards(self) -> bool:
        return True  # the KL penalty and the ratio both use the sampling policy's log-probs

    @staticmethod
    def _compact(full: torch.Tensor, batch) -> torch.Tensor:
        """(B, L) per-position values -> (B, T) at the positions that predict completion tokens (the layout of
        ``token_logps``)."""
        nxt = batch["completion_mask"].bool()[:, 1:]
        return completion_layout(full[:, :-1][nxt], nxt)[0]

    @torch.no_grad()
    def add_token_signals(self, rewards, batches):
        args = self.args
        value_model = unwrap(self.model).value_model
        scores = rewards.clone()
        truncated = torch.cat([b["truncated"] for b in batches]).to(scores.device)
        if args.missing_eos_penalty is not None:
            scores[truncated] -= args.missing_eos_penalty
        start, per_seq = 0, {"kl": [], "non_score": [], "entropy": []}
        all_adv = []
        for b in batches:
            n = b["input_ids"].shape[0]
            mask = self.completion_token_mask(b)
            # in the training precision: the value loss clips the training forward's values (bf16 under bf16 mixed
            # precision, inside accelerate's region) around these; the unwrapped value model alone ran in float32
            with eval_mode(value_model), self.autocast_region():
                values = self._compact(token_values(value_model, b["input_ids"], b["attention_mask"]), b).float()
            if "ref_logps" in b:
                kl = kl_penalty(b["old_logps"], b["ref_logps"], args.kl_estimator) * mask
            else:
                kl = torch.zeros_like(b["old_logps"])
            token_rewards = -args.kl_coef * kl
            last = (mask.sum(dim=1) - 1).clamp(min=0)
            rows = torch.arange(n, device=mask.device)
            token_rewards[rows, last] += scores[start : start + n].to(token_rewards.dtype)
            if args.whiten_rewards:
                token_rewards = masked_whiten(token_rewards, mask, shift_mean=False) * mask
            adv, returns = gae(token_rewards, values, mask, args.gamma, args.lam)
            b.update(old_values=values, returns=returns, advantages=adv, loss_mask=mask)
            per_seq["kl"].append(kl.sum(dim=1))
            per_seq["non_score"].append((-args.kl_coef * kl).sum(dim=1))
            per_seq["entropy"].append((-b["old_logps"] * mask).sum(dim=1))
            all_adv.append(adv[mask])
            start += n
        # whiten the advantages over this process's whole rollout (all its micro-batches' completion tokens)
        flat = torch.cat(all_adv)
        flat = masked_whiten(flat, torch.ones_like(flat, dtype=torch.bool)) if flat.numel() > 1 else flat - flat.mean()
        for b, part in zip(batches, flat.split([int(a.numel()) for a in all_adv])):
            advantages = torch.zeros_like(b["advantages"])
            advantages[b["loss_mask"].bool()] = part
            b["advantages"] = advantages
        kl_seq, non_score = torch.cat(per_seq["kl"]), torch.cat(per_seq["non_score"])
        self.record("objective/kl", self._gather(kl_seq).mean())
        self.record("objective/entropy", self._gather(torch.cat(per_seq["entropy"])).mean())
        self.record("objective/non_score_reward", self._gather(non_score).mean())
        self.record("objective/rlhf_reward", self._gather(scores + non_score.to(scores.device)).mean())
        self.record("objective/scores", self._gather(scores).mean())
        self.record("val/num_eos_tokens", self._gather((~truncated).float().sum().reshape(1)).sum())

    def process_rewards(self, rewards):
        return {}  # PPO's signals are per token (add_token_signals)

    # -- loss ----------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        pv = unwrap(model)
        pv.with_values = True
        try:
            logps, mask, entropies = self.token_logps(model, inputs, with_entropy=True)
            values = self._compact(pv.last_values, inputs)
        finally:
            pv.with_values, pv.last_values = False, None
        pg = ppo_policy_loss(logps, inputs["old_logps"], inputs["advantages"], mask, args.cliprange)
        vf = ppo_value_loss(values, inputs["old_values"], inputs["returns"], mask, args.cliprange_value)
        loss = self.reduce_loss(pg.total + args.vf_coef * vf.total, pg.count)  # both over the same active tokens
        self.record("policy/approxkl_avg", pg.approxkl)
        self.record("policy/clipfrac_avg", pg.clipfrac)
        self.record("loss/policy_avg", pg.loss.detach())
        self.record("loss/value_avg", vf.loss.detach())
        self.record("val/clipfrac_avg", vf.vf_clipfrac)
        self.record("policy/entropy_avg", masked_mean(entropies, mask))
        self.record("val/ratio", pg.ratio_mean)
        return (loss, {}) if return_outputs else loss

    # -- saving: the policy as an ordinary model folder, the value model beside it ---------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        pv = unwrap(self.model)
        policy_state = value_state = None
        if state_dict is not None:  # gathered by the Trainer (e.g. ZeRO-3's consolidated 16-bit weights)
            policy_state = {k[len("policy."):]: v for k, v in state_dict.items() if k.startswith("policy.")}
            value_state = {k[len("value_model."):]: v for k, v in state_dict.items() if k.startswith("value_model.")}
        pv.policy.save_pretrained(output_dir, state_dict=policy_state)
        pv.value_model.save_pretrained(os.path.join(output_dir, "value_model"), state_dict=value_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))


__all__ = ["PPOConfig", "PPOTrainer"]
