"""Online DPO: ``OnlineDPOConfig`` and ``OnlineDPOTrainer`` (TRL-compatible names), and the pairwise core that
XPO (:mod:`posttrain.trainers.xpo`) and Nash-MD (:mod:`posttrain.trainers.nash_md`) build on.

For every prompt two completions are sampled (Guo et al. 2024, 'Direct Language Model Alignment from Online AI
Feedback'): both from the current policy here; XPO samples the second from the reference policy, Nash-MD from
the geometric mixture of policy and reference (:meth:`OnlineDPOTrainer.sample_second`). A pairwise judge, reward
models or reward functions say which is better; the policy is trained with the DPO loss
(:func:`posttrain.losses.preference.dpo_loss`, ``sigmoid`` or ``ipo``) against a reference policy.

Sampling, scoring and batching are the shared online core (:mod:`posttrain.trainers.online_base`) with
``num_generations=2``: the completions of a prompt are consecutive (``2 * pair`` and ``2 * pair + 1``) and
``per_device_train_batch_size`` counts prompts (pairs), as in TRL. What the core hands to ``compute_loss`` per
completion: ``preference`` (the probability that this completion beats the other of its pair: 1 / 0 / 0.5 for a
judge's verdict or a tie, a judge's probability when it gives one, else from the scores) and ``scores``.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..losses.preference import dpo_implicit_rewards, dpo_loss
from ..models import unwrap
from ..rollout import Generations, generate
from .base import check_choice
from .online_base import OnlineConfig, OnlineTrainer

logger = logging.getLogger("posttrain")

ONLINE_DPO_LOSS_TYPES = ("sigmoid", "ipo")


def as_float_list(value, name: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    if not values:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers (one per epoch).")
    return values


@dataclass
class OnlineDPOConfig(OnlineConfig):
    """Configuration of :class:`OnlineDPOTrainer`. Field names and defaults follow TRL's ``OnlineDPOConfig``
    (``learning_rate=5e-7``, ``beta=[0.1]``, ``max_new_tokens=64``, ``temperature=0.9``, ``disable_dropout=True``).

    ``per_device_train_batch_size`` counts prompts: each gets 2 completions. ``max_new_tokens`` is the completion
    budget (it sets ``max_completion_length``); a prompt keeps its last ``max_length - max_new_tokens`` tokens unless
    ``max_prompt_length`` is given.
    """

    completions_per_row = 2

    learning_rate: float = field(default=5e-7, metadata={"help": "Initial AdamW learning rate."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum tokens generated per completion."})
    max_length: int | None = field(
        default=512, metadata={"help": "Maximum prompt + completion tokens: prompts keep their last "
                               "max_length - max_new_tokens tokens (unless max_prompt_length is set)."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Prompts longer than this keep their last tokens (default: from max_length)."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature (the training log-probs are of the raw logits)."})
    num_generations: int = field(default=2, metadata={"help": "Completions per prompt: always 2 (a pair)."})
    beta: list[float] = field(
        default_factory=lambda: [0.1],
        metadata={"help": "KL coefficient of the DPO loss; a list gives one value per epoch (the last one is kept)."})
    loss_type: str = field(default="sigmoid", metadata={"help": "'sigmoid' (DPO) or 'ipo'.",
                                                         "choices": list(ONLINE_DPO_LOSS_TYPES)})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a completion without EOS (reward models and "
                                "functions only)."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model (hub id or local folder) used when the "
                                "trainer gets no judge and no reward_funcs."})
    judge: str | None = field(
        default=None, metadata={"help": "Command line: a pairwise judge by name ('openai', or a causal LM hub id / "
                                "folder for a local LLM judge); the trainer itself takes judge= objects."})
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability of the model(s) to 0."})

    def __post_init__(self):
        self.beta = as_float_list(self.beta, "beta")
        check_choice("loss_type", self.loss_type, ONLINE_DPO_LOSS_TYPES)
        if self.num_generations != 2:
            raise ValueError(f"{type(self).__name__} samples exactly 2 completions per prompt (a pair); got "
                             f"num_generations={self.num_generations}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        self.max_completion_length = self.max_new_tokens
        if self.max_prompt_length is None and self.max_length is not None:
            if self.max_length <= self.max_new_tokens:
                raise ValueError(f"max_length={self.max_length} leaves no room for a prompt with "
                                 f"max_new_tokens={self.max_new_tokens}; raise max_length or set max_prompt_length.")
            self.max_prompt_length = self.max_length - self.max_new_tokens
        super().__post_init__()

    def _check_beta(self) -> None:
        """``beta`` is a list here, one value per epoch (TRL's Online DPO, XPO and Nash-MD)."""
        if any(b < 0 for b in self.beta):
            raise ValueError(f"beta must be >= 0, got {self.beta}.")


class OnlineDPOTrainer(OnlineTrainer):
    """Online DPO on prompt-only data (standard or conversational).

    Args:
        model: the policy (object, name or path).
        ref_model: the reference policy (object, name or path). Default: a frozen copy of the initial policy, or with
            ``peft_config`` the policy with its adapter disabled.
        reward_funcs: reward function(s) ``fn(prompts, completions, **kwargs) -> list[float]`` and/or reward models
            (object, name or path); the completion with the higher (weighted) score is chosen. ``reward_model`` is
            TRL's older spelling (one reward model) and is added to them.
        judge: a :class:`~posttrain.rollout.BasePairwiseJudge` (instead of reward functions): it returns 0 (first
            better), 1 (second better) or -1 (tie) per pair. The model of a local LM judge (``judge.model``) and
            reward models are frozen models of the trainer, placed like the reference (under ZeRO-3: partitioned).

    Pairs judged equal (a tie, equal scores) add nothing to the DPO loss. Logs TRL's names: ``objective/kl``,
    ``objective/entropy``, ``objective/non_score_reward``, ``objective/rlhf_reward``, ``objective/scores`` (the
    mean score, after ``missing_eos_penalty``) and ``objective/scores_margin`` (with scores, not with a judge),
    ``rewards/chosen|rejected|accuracies|margins``, ``logps/chosen|rejected``, ``val/contain_eos_token``, ``beta``;
    plus the core's ``completions/*`` (and ``reward`` with scores). The ``objective/*`` sums run over the
    completion tokens only (TRL's also add the log-probs of the padding after EOS: docs/differences.md).
    """

    config_class = OnlineDPOConfig
    _run_suffix = "OnlineDPO"
    requires_reward_funcs = False
    wants_probabilities = False  # Nash-MD: ask judges for P(first better) when they can give it

    def __init__(self, model, ref_model=None, reward_funcs=None, judge=None, args: OnlineDPOConfig | None = None,
                 train_dataset=None, eval_dataset=None, processing_class=None, reward_processing_classes=None,
                 callbacks=None, optimizers=(None, None), peft_config=None, reward_model=None):
        funcs = [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if reward_model is not None:
            funcs.append(reward_model)
        if not funcs and judge is None and args is not None and getattr(args, "reward_model_path", None):
            funcs.append(args.reward_model_path)
        if judge is not None and funcs:
            raise ValueError(f"{type(self).__name__}: give a judge or reward functions/models, not both.")
        if judge is None and not funcs:
            raise ValueError(f"{type(self).__name__} needs judge= (a pairwise judge) or reward_funcs= (reward "
                             "functions and/or reward models, object, name or path) to rank the two completions.")
        if judge is not None and not callable(getattr(judge, "judge", None)):
            raise TypeError(f"judge must have a judge(prompts, completions) method (a BasePairwiseJudge); got "
                            f"{type(judge).__name__}.")
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model must be a different object than model; pass ref_model=None to get a frozen "
                             "copy of the initial policy.")
        self.judge = judge
        super().__init__(model, funcs or None, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, reward_processing_classes=reward_processing_classes,
                         callbacks=callbacks, optimizers=optimizers, peft_config=peft_config, ref_model=ref_model)
        if isinstance(getattr(judge, "model", None), torch.nn.Module):  # a local LM judge's model is a frozen model
            judge.model = self.prepare_frozen_model(judge.model)  # (ZeRO-3: partitioned, an inference engine)

    # -- log-probs and reference -------------------------------------------------------------------
    def logps_temperature(self) -> float:
        """1: the DPO loss, the implicit rewards and the ``objective/*`` metrics are about the policy's (and the
        reference's) own probabilities, pi(y|x) of the raw logits; the sampling ``temperature`` only decides which
        completions are drawn, as in TRL's Online DPO, XPO and Nash-MD. (Nothing here is an importance ratio against
        the sampling distribution.)"""
        return 1.0

    def uses_reference(self) -> bool:
        return True

    def per_epoch(self, values: list[float]) -> float:
        """The value of a per-epoch list for the current epoch (the last one once the list is used up)."""
        epoch = int(self.state.epoch or 0)
        return values[min(epoch, len(values) - 1)]

    @property
    def beta(self) -> float:
        return self.per_epoch(self.args.beta)

    # -- sampling ------------------------------------------------------------------------------------
    def sample_second(self, prompt_ids: list[list[int]]) -> Generations | None:
        """Second completions of the pairs (prompts ``1, 3, 5, ...`` of the batch), or None when the policy
        samples both (one generation call). XPO: the reference; Nash-MD: the geometric mixture."""
        return None

    def sample_completions(self, prompt_ids):
        second = self.sample_second(self.members(prompt_ids, 1))
        if second is None:
            return super().sample_completions(prompt_ids)
        first = super().sample_completions(self.members(prompt_ids, 0))
        return Generations(prompt_ids=_interleave(first.prompt_ids, second.prompt_ids),
                           completion_ids=_interleave(first.completion_ids, second.completion_ids),
                           texts=_interleave(first.texts, second.texts))

    def generate_from_reference(self, prompt_ids: list[list[int]], **extra) -> Generations:
        """Sample from the reference policy (a separate model, or the policy with its adapter disabled)."""
        kwargs = dict(prompt_ids=prompt_ids, batch_size=len(prompt_ids), fast=self.args.fast_generation,
                      **self.sampling_kwargs())
        kwargs.update(extra)
        if self.ref_model is not None:
            return generate(self.ref_model, self.tokenizer_, **kwargs)
        policy = unwrap(self.model)
        with policy.disable_adapter():
            return generate(self.model, self.tokenizer_, **kwargs)

    # -- scoring -------------------------------------------------------------------------------------
    def score_completions(self, rows, prompts, completions, completion_ids) -> torch.Tensor:
        if self.judge is None:
            scores = super().score_completions(rows, prompts, completions, completion_ids)
            if self.args.missing_eos_penalty is not None:
                eos = self.tokenizer_.eos_token_id
                no_eos = torch.tensor([not (ids and ids[-1] == eos) for ids in completion_ids], dtype=torch.float32)
                scores = scores - self.args.missing_eos_penalty * self._gather(no_eos)
            return scores
        first_wins = self.judge_pairs(self.members(prompts, 0), list(zip(self.members(completions, 0),
                                                                       self.members(completions, 1))))
        return self._gather(torch.stack([first_wins, 1.0 - first_wins], dim=1).reshape(-1))

    def judge_pairs(self, prompts: list, pairs: list[tuple[Any, Any]]) -> torch.Tensor:
        """(P,) probability that the first completion of each pair is better: the judge's verdict (0 -> 1.0,
        1 -> 0.0, -1 tie -> 0.5) or, for Nash-MD with a judge that gives one (``return_scores=True``), its
        probability. Anything else is an error naming the judge."""
        judge, name = self.judge, type(self.judge).__name__
        if self.wants_probabilities and "return_scores" in inspect.signature(judge.judge).parameters:
            values = judge.judge(prompts, pairs, return_scores=True)
            _check_count(values, len(pairs), name)
            out = []
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isnan(v) or 0.0 <= v <= 1.0):
                    raise ValueError(f"The judge {name} returned {v!r} for pair {i}; with return_scores=True a pairwise "
                                     "judge returns the probability (in [0, 1]) that the first completion is better.")
                out.append(0.5 if math.isnan(v) else float(v))
            return torch.tensor(out, dtype=torch.float32)
        values = judge.judge(prompts, pairs)
        _check_count(values, len(pairs), name)
        out = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or v not in (0, 1, -1):
                raise ValueError(f"The judge {name} returned {v!r} for pair {i}; a pairwise judge returns 0 (the first "
                                 "completion is better), 1 (the second is better) or -1 (a tie).")
            out.append({0: 1.0, 1: 0.0, -1: 0.5}[int(v)])
        return torch.tensor(out, dtype=torch.float32)

    def process_rewards(self, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        pairs = self.groups(rewards)
        first = pairs[:, 0] if self.judge is not None else torch.sigmoid(pairs[:, 0] - pairs[:, 1])
        preference = torch.stack([first, 1.0 - first], dim=1).reshape(-1)
        return {"preference": preference, "scores": rewards}

    def loss_items(self, lengths, truncated):
        return torch.full_like(lengths, 0.5)  # the losses are averaged over pairs

    # -- loss --------------------------------------------------------------------------------------------
    def sequence_logps(self, model, inputs, rows: slice = slice(None)):
        """Summed completion log-probs (B,) of ``rows`` of the micro-batch under ``model`` and the reference, the
        token log-probs and mask of the policy."""
        batch = inputs if rows == slice(None) else {k: inputs[k][rows] for k in ("input_ids", "attention_mask",
                                                                                 "completion_mask")}
        logps, mask, _ = self.token_logps(model, batch)
        ref = inputs["ref_logps"][rows][:, : logps.shape[1]]
        return (logps * mask).sum(1), (ref * mask).sum(1), logps, mask

    def choose(self, inputs, seq, ref_seq):
        """Chosen/rejected of every pair by its preference: (chosen, rejected, ref_chosen, ref_rejected, decided)."""
        first_p = self.members(inputs["preference"], 0)
        second_chosen = (first_p < 0.5).long().unsqueeze(1)
        s, r = self.groups(seq), self.groups(ref_seq)
        pick = lambda x, idx: x.gather(1, idx).squeeze(1)  # noqa: E731
        return (pick(s, second_chosen), pick(s, 1 - second_chosen), pick(r, second_chosen), pick(r, 1 - second_chosen),
                first_p != 0.5)

    def finish_loss(self, loss_sum: torch.Tensor, inputs, num_pairs: int) -> torch.Tensor:
        return self.reduce_loss(loss_sum, num_pairs, inputs.get("num_items_in_batch"))

    def record_pair_metrics(self, chosen, rejected, ref_chosen, ref_rejected, decided, beta: float) -> None:
        if decided.any():
            c, r = dpo_implicit_rewards(chosen[decided].detach(), rejected[decided].detach(), ref_chosen[decided],
                                        ref_rejected[decided], beta=beta)
            self.record("rewards/chosen", c.mean())
            self.record("rewards/rejected", r.mean())
            self.record("rewards/margins", (c - r).mean())
            self.record("rewards/accuracies", (c > r).float().mean())
            self.record("logps/chosen", chosen[decided].detach().mean())
            self.record("logps/rejected", rejected[decided].detach().mean())

    def record_objective(self, kl: torch.Tensor, entropy: torch.Tensor, beta: float, scores: torch.Tensor | None):
        self.record("objective/kl", kl.mean())
        self.record("objective/entropy", entropy.mean())
        self.record("objective/non_score_reward", -beta * kl.mean())
        if scores is not None and self.judge is None:
            self.record("objective/rlhf_reward", (scores - beta * kl).mean())
        self.record("beta", beta)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, beta = self.args, self.beta
        seq, ref_seq, _, _ = self.sequence_logps(model, inputs)
        chosen, rejected, ref_chosen, ref_rejected, decided = self.choose(inputs, seq, ref_seq)
        losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, loss_type=args.loss_type).losses
        loss = self.finish_loss((losses * decided).sum(), inputs, decided.numel())
        kl = (seq - ref_seq).detach()
        self.record_objective(kl, -seq.detach(), beta, inputs["scores"])
        if self.judge is None:
            scores = self.groups(inputs["scores"])
            self.record("objective/scores", scores.mean())
            self.record("objective/scores_margin", (scores.max(1).values - scores.min(1).values).mean())
        self.record_pair_metrics(chosen, rejected, ref_chosen, ref_rejected, decided, beta)
        self.record("val/contain_eos_token", (~inputs["truncated"]).float().mean())
        return (loss, {}) if return_outputs else loss


def _check_count(values, n: int, name: str) -> None:
    if values is None or not hasattr(values, "__len__") or len(values) != n:
        got = "None" if values is None else f"{len(values)} values" if hasattr(values, "__len__") else repr(values)
        raise ValueError(f"The judge {name} returned {got} for {n} pairs; it must return one verdict per pair.")


def _interleave(a: list, b: list) -> list:
    return [x for pair in zip(a, b) for x in pair]


__all__ = ["OnlineDPOConfig", "OnlineDPOTrainer"]
