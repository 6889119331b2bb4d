"""Fixed completions for the side-by-side checks of the online trainers (GRPO, RLOO, Online DPO, XPO, Nash-MD, PPO).

The two libraries sample differently, so a whole online step can only be compared if both train on the *same*
completions. :class:`FixedCompletions` replaces each library's sampling with a deterministic table: the completions
of a prompt are a function of its token ids (and of the sample's index within its group or pair), drawn once from a
seeded generator. What is replaced, per library (nothing else changes; rewards, KL terms, advantages, losses, metrics
and gradients are each library's own):

* posttrain: ``trainer.sample_completions`` (the online core's override point for who generates);
* TRL 1.16 (GRPO, RLOO, experimental Online DPO) and TRL 0.21 (Online DPO, XPO): ``generate`` of the policy (and of
  the reference for XPO), so each library's own prompt tokenization and padding run;
* TRL 0.21 Nash-MD: the geometric-mixture wrapper the opponent is sampled from;
* TRL 0.21 PPO: ``batch_generation`` (its rollout helper), which also returns the sampling logits: they are recomputed
  with one forward pass of the policy, divided by the sampling temperature as ``generate``'s scores are.

Imported by ``compare_worker.py`` under either venv; it never imports posttrain or TRL itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from types import SimpleNamespace

import torch

SPECIAL_IDS_BELOW = 4  # the kit tokenizer's special tokens are ids 0-3 (pad, im_start, im_end = EOS, endoftext)


class LengthJudge:
    """Pairwise judge of the XPO / Nash-MD checks and speed runs (harness code, the same in both libraries): the longer
    completion (characters of its stripped text) wins; with ``return_scores`` the probability that the first wins is
    ``sigmoid((len(first) - len(second)) / 20)``. Takes either library's completion format (text, or messages)."""

    @staticmethod
    def _len(completion) -> int:
        text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
        return len(text.strip())

    def judge(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False):
        diffs = [self._len(a) - self._len(b) for a, b in completions]
        if return_scores:
            return [1.0 / (1.0 + math.exp(-d / 20.0)) for d in diffs]
        return [0 if d > 0 else 1 if d < 0 else -1 for d in diffs]


def score_of(completion: list[int]) -> float:
    """The PPO check's reward of a completion (harness code): a deterministic value in [-1, 1]."""
    return (sum(completion) % 101) / 50.0 - 1.0


class FixedCompletions:
    """Deterministic completions: ``group(prompt_ids)`` is a list of ``n`` completions (token ids) for a prompt.

    ``full_length``: every completion is exactly ``max_new_tokens`` tokens without EOS (no padding anywhere);
    otherwise about half end with EOS after ``[min_tokens, max_new_tokens]`` tokens and the others are cut at
    ``max_new_tokens`` (as a sampler's are). Within a group the
    decoded texts differ in length by at least 3 characters (stripped or not), so length judges and length rewards
    never tie. ``used`` lists every (prompt + completion) handed out, for the first-batch fingerprint.
    """

    def __init__(self, tokenizer, n: int, max_new_tokens: int, full_length: bool = False, min_tokens: int = 4,
                 seed: int = 0):
        self.tok, self.n, self.max_new, self.full = tokenizer, n, max_new_tokens, full_length
        self.min_tokens, self.seed = min(min_tokens, max_new_tokens), seed
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.vocab = tokenizer.vocab_size
        self.groups: dict[tuple, list[list[int]]] = {}
        self.used: list[list[int]] = []
        self.by_sequence: dict[tuple, list[int]] = {}

    def text(self, ids: list[int]) -> str:
        return self.tok.decode([t for t in ids if t != self.eos], skip_special_tokens=True)

    def group(self, prompt: list[int]) -> list[list[int]]:
        key = tuple(int(t) for t in prompt)
        if key not in self.groups:
            self.groups[key] = self._make(key)
        return self.groups[key]

    def _make(self, key: tuple) -> list[list[int]]:
        digest = hashlib.sha1(json.dumps([list(key), self.seed]).encode()).hexdigest()
        rng = random.Random(int(digest[:12], 16))
        for _ in range(1000):
            comps = []
            for _ in range(self.n):
                # as from a real sampler: a completion ends with EOS, or it is cut at max_new_tokens
                eos = not self.full and rng.random() < 0.5
                length = rng.randint(self.min_tokens, self.max_new) if eos else self.max_new
                ids = [rng.randrange(SPECIAL_IDS_BELOW, self.vocab) for _ in range(length)]
                if eos:
                    ids[-1] = self.eos
                comps.append(ids)
            raw = [len(self.text(c)) for c in comps]
            stripped = [len(self.text(c).strip()) for c in comps]
            if all(abs(raw[a] - raw[b]) >= 3 and abs(stripped[a] - stripped[b]) >= 3
                   and (raw[a] > raw[b]) == (stripped[a] > stripped[b])
                   for a in range(self.n) for b in range(a + 1, self.n)):
                return comps
        raise RuntimeError("could not draw completions of distinct lengths")

    def completion(self, prompt: list[int], j: int) -> list[int]:
        c = self.group(prompt)[j]
        self.used.append(list(prompt) + c)
        self.by_sequence[tuple(list(prompt) + c)] = c
        return c

    def score_sequence(self, seq: list[int]) -> float:
        """``score_of`` the completion of a (prompt + completion) sequence handed out before."""
        return score_of(self.by_sequence[tuple(seq)])

    # -- the replacements ------------------------------------------------------------------------------------------
    def hf_generate(self, j_of_row):
        """A stand-in for ``model.generate``: left-padded prompts in, ``[prompt, completion, pad...]`` rows out."""

        def generate(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            B, P = input_ids.shape
            comps = [self.completion(input_ids[r][attention_mask[r].bool()].tolist(), j_of_row(r, B)) for r in range(B)]
            out = torch.full((B, P + max(len(c) for c in comps)), self.pad, dtype=input_ids.dtype, device=input_ids.device)
            out[:, :P] = input_ids
            for r, c in enumerate(comps):
                out[r, P:P + len(c)] = torch.tensor(c, dtype=input_ids.dtype)
            return out

        return generate

    def posttrain_sampler(self, j_of_row):
        """A stand-in for posttrain's ``OnlineTrainer.sample_completions(prompt_ids) -> Generations``."""

        def sample_completions(prompt_ids):
            from posttrain.rollout import Generations

            n = len(prompt_ids)
            comps = [self.completion(list(p), j_of_row(r, n)) for r, p in enumerate(prompt_ids)]
            return Generations(prompt_ids=[list(p) for p in prompt_ids], completion_ids=comps,
                               texts=[self.text(c) for c in comps])

        return sample_completions

    def trl_ppo_batch_generation(self):
        """A stand-in for TRL 0.21's ``batch_generation(model, queries, batch_size, pad_token_id, generation_config)``:
        ``(query_responses, logits)``, the logits of the completion positions divided by the sampling temperature (the
        processed scores ``generate`` returns with ``temperature``, ``top_k=0``, ``top_p=1``)."""
        generate = self.hf_generate(lambda r, n: 0)

        @torch.no_grad()
        def batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
            mask = queries != pad_token_id
            qr = generate(input_ids=queries, attention_mask=mask.long())
            P = queries.shape[1]
            full_mask = qr != pad_token_id
            positions = full_mask.long().cumsum(1) - full_mask.long()
            logits = model(input_ids=qr.masked_fill(~full_mask, 0), attention_mask=full_mask.long(),
                           position_ids=positions, use_cache=False).logits[:, P - 1:-1]
            return qr, logits / generation_config.temperature

        return batch_generation

    def trl_reward_model(self):
        """A module that TRL 0.21's ``get_reward`` reads like a sequence-classification model, returning
        ``score_sequence`` of each row's (non-padding) tokens at every position."""
        fixed = self

        class Backbone(torch.nn.Module):
            def forward(self, input_ids=None, attention_mask=None, **kwargs):
                B, L = input_ids.shape
                values = torch.zeros(B, L, 1)
                for r in range(B):
                    values[r] = fixed.score_sequence(input_ids[r][attention_mask[r].bool()].tolist())
                return SimpleNamespace(hidden_states=[values])

        class FixedRewardModel(torch.nn.Module):
            base_model_prefix = "backbone"

            def __init__(self):
                super().__init__()
                self.backbone = Backbone()

            def score(self, hidden):
                return hidden

        return FixedRewardModel()

    def posttrain_reward(self):
        """posttrain's reward function with the same values as ``trl_reward_model``."""

        def fixed_score(prompts=None, completions=None, completion_ids=None, **kwargs):
            return [score_of(list(c)) for c in completion_ids]

        return fixed_score

    def mixture_wrapper(self):
        """A stand-in for TRL 0.21's ``GeometricMixtureWrapper`` class: its ``generate`` gives sample 1 of each pair."""
        fixed = self

        class FixedMixture:
            def __init__(self, *args, **kwargs):
                self.generate = fixed.hf_generate(lambda r, n: 1)

        return FixedMixture


# which sample of its group / pair each generated row is, per library and trainer (r: row, n: rows in the call)
def consecutive(group: int):
    return lambda r, n: r % group


def halves(r: int, n: int) -> int:  # TRL's Online DPO: prompts repeated as [p0..pB, p0..pB]
    return 0 if r < n // 2 else 1


def install(trainer, lib: str, scenario: str, fixed: FixedCompletions, num_generations: int = 1, ref_model=None):
    """Route ``trainer``'s sampling (and, for PPO, its reward) through ``fixed``; see the module docstring.

    ``ref_model``: GRPO and RLOO take no reference model argument in either library (the reference is a copy of the
    initial policy, so at learning rate 0 the KL would be 0); for the check its weights are loaded into each library's
    own reference copy (which keeps whatever each library set up on it, e.g. TRL 1.16's log-prob head).
    """
    if ref_model is not None and scenario in ("grpo", "rloo") and getattr(trainer, "ref_model", None) is not None:
        missing, unexpected = trainer.ref_model.load_state_dict(ref_model.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise RuntimeError(f"reference weights do not fit: missing {missing}, unexpected {unexpected}")
    if lib == "posttrain":
        group = {"grpo": num_generations, "rloo": num_generations, "ppo": 1}.get(scenario, 2)
        trainer.sample_completions = fixed.posttrain_sampler(consecutive(group))
        return
    if scenario in ("grpo", "rloo"):
        trainer.model.generate = fixed.hf_generate(consecutive(num_generations))
    elif scenario == "online_dpo":
        trainer.model.generate = fixed.hf_generate(halves)
    elif scenario == "xpo":
        trainer.model.generate = fixed.hf_generate(lambda r, n: 0)
        trainer.ref_model.generate = fixed.hf_generate(lambda r, n: 1)
    elif scenario == "nash_md":
        import trl.trainer.nash_md_trainer as nash

        trainer.model.generate = fixed.hf_generate(lambda r, n: 0)
        nash.GeometricMixtureWrapper = fixed.mixture_wrapper()
    elif scenario == "ppo":
        import trl.trainer.ppo_trainer as ppo

        ppo.batch_generation = fixed.trl_ppo_batch_generation()
    else:
        raise ValueError(scenario)
