"""Policy-gradient losses and advantage estimators as pure tensor functions.

Nothing in this module touches a model: every function maps tensors to tensors (or to a small
dataclass of tensors), so trainers can compose them and tests can check them on hand-made numbers.

Conventions
-----------
* Token-level tensors are ``(B, T)``: ``B`` completions, ``T`` completion positions.
* ``mask`` is ``(B, T)``, 1.0 on completion tokens and 0.0 on padding (bool masks are accepted
  and converted). Values at padded positions never influence a result.
* Group layouts (GRPO, RLOO): the ``k`` samples drawn for one prompt are consecutive rows, i.e.
  row ``prompt * k + j`` holds sample ``j`` of prompt ``prompt``.
* Metric names returned by the loss dataclasses (``metrics``) follow TRL's logging keys
  (``kl``, ``clip_ratio/low_mean`` ...), so a trainer can log them verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from .tokens import as_weights, masked_mean, masked_sum

__all__ = [
    "GroupAdvantages",
    "decoupled_group_rewards",
    "off_policy_sequence_mask",
    "group_advantages",
    "rloo_advantages",
    "gae",
    "kl_penalty",
    "sequence_kl",
    "GRPOLossOutput",
    "grpo_loss",
    "PPOPolicyLossOutput",
    "ppo_policy_loss",
    "PPOValueLossOutput",
    "ppo_value_loss",
    "RLOOLossOutput",
    "rloo_loss",
]

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")

_STD_EPS = 1e-4  # added to the std divisor of GRPO / RLOO advantage scaling


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


class GroupAdvantages(NamedTuple):
    """Result of :func:`group_advantages`: ``advantages`` (N,) and ``group_std`` (N // G,)."""

    advantages: torch.Tensor
    group_std: torch.Tensor

    @property
    def frac_reward_zero_std(self) -> torch.Tensor:
        """Fraction of groups whose rewards all coincide (std close to 0): TRL's
        ``frac_reward_zero_std`` metric."""
        zero = torch.isclose(self.group_std, torch.zeros_like(self.group_std))
        dtype = self.group_std.dtype if self.group_std.is_floating_point() else torch.float32
        return zero.to(dtype).mean()


def off_policy_sequence_mask(advantages: torch.Tensor, logps: torch.Tensor, behaviour_logps: torch.Tensor,
                             mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Off-policy sequence masking — DeepSeek-AI 2025, 'DeepSeek-V3.2' (arXiv 2512.02556), Eq. 9: a sequence is kept
    unless its advantage is negative *and* the policy has drifted from the one that sampled it by more than
    ``threshold``, measured as the mean over its tokens of log pi_behaviour - log pi_theta (a KL estimate).

    ``advantages`` (B,), ``logps`` and ``behaviour_logps`` (B, T), ``mask`` (B, T) of the completion tokens. Returns
    (B,) bool, True = keep; no gradient flows through it."""
    m = mask.to(logps.dtype)
    drift = ((behaviour_logps - logps.detach()) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    return (advantages >= 0) | (drift <= threshold)


def decoupled_group_rewards(per_function: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Group reward-decoupled normalisation — Liu et al. 2026, 'GDPO: Group reward-Decoupled Normalization Policy
    Optimization for Multi-reward RL Optimization' (arXiv 2601.05242), its first stage: each reward function's rewards
    normalised within each prompt's group, (r_k - mean_group(r_k)) / (std_group(r_k) + 1e-4), then summed with the
    weights, sum_k w_k (...). Summing first (GRPO) lets different combinations of rewards collapse to one advantage.

    ``per_function`` is (N, F) in the group layout of :func:`group_advantages` (NaN where a function did not score a
    completion: left out of that function's statistics, adding 0); ``weights`` (F,). Returns (N,), NaN for a
    completion no function scored. The second stage, normalising the sums over the batch, is
    ``group_advantages(..., scale_rewards="batch")`` (every group of sums has mean 0 already)."""
    if per_function.dim() != 2 or per_function.shape[1] != weights.numel():
        raise ValueError(f"per_function must be (N, F) with F = len(weights) = {weights.numel()}, got "
                         f"{tuple(per_function.shape)}")
    g = int(num_generations)
    if g < 1 or per_function.shape[0] % g != 0:
        raise ValueError(f"{per_function.shape[0]} completions are not a multiple of num_generations={g}")
    grouped = per_function.view(-1, g, per_function.shape[1]).float()
    present = ~torch.isnan(grouped)
    counts = present.sum(dim=1, keepdim=True)
    filled = torch.where(present, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1, keepdim=True) / counts.clamp(min=1)
    var = (torch.where(present, grouped - mean, torch.zeros_like(grouped)) ** 2).sum(dim=1, keepdim=True)
    std = (var / (counts - 1).clamp(min=1)).sqrt() * (counts > 1)  # unbiased, as torch.std; 0 below two values
    normalised = torch.where(present, (grouped - mean) / (std + _STD_EPS), torch.zeros_like(grouped))
    total = (normalised * weights.to(normalised).view(1, 1, -1)).sum(dim=2).reshape(-1)
    return torch.where(present.any(dim=2).reshape(-1), total, torch.full_like(total, float("nan")))


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group"
) -> GroupAdvantages:
    """Group-relative advantages — Shao et al. 2024, 'DeepSeekMath' (GRPO), Sec. 4.1.2, outcome
    supervision: A_i = (r_i - mean(r_group)) / std(r_group).

    ``rewards`` is (N,) with N = num_prompts * num_generations, laid out so that the
    ``num_generations`` samples of one prompt are consecutive (row ``prompt * G + j``).

    ``scale_rewards`` picks the divisor (Liu et al. 2025, 'Understanding R1-Zero-Like Training'
    argue for dropping it):

    * ``"group"``: the std of the sample's own group;
    * ``"batch"``: the std of all N rewards;
    * ``"none"``: no division (A_i = r_i - group mean).

    Standard deviations use ``torch.std``'s default, the *unbiased* (Bessel-corrected, n - 1)
    estimator, which is TRL GRPO's convention; 1e-4 is added to the divisor. With
    ``num_generations == 1`` the group std is defined as 0 (and the advantage is 0).

    Returns ``GroupAdvantages(advantages (N,), group_std (N // G,))``; ``group_std`` is always the
    per-group std (whatever ``scale_rewards`` is) and ``.frac_reward_zero_std`` gives the share of
    groups with zero std.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    g = int(num_generations)
    if g < 1 or rewards.numel() % g != 0:
        raise ValueError(f"len(rewards)={rewards.numel()} is not a multiple of num_generations={g}")
    grouped = rewards.view(-1, g)
    group_mean = grouped.mean(dim=1)
    if g > 1:
        group_std = grouped.std(dim=1)
    else:
        group_std = torch.zeros_like(group_mean)
    advantages = rewards - group_mean.repeat_interleave(g)
    if scale_rewards == "group":
        advantages = advantages / (group_std.repeat_interleave(g) + _STD_EPS)
    elif scale_rewards == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        advantages = advantages / (batch_std + _STD_EPS)
    return GroupAdvantages(advantages, group_std)


def rloo_advantages(rewards: torch.Tensor, k: int, *, normalize: bool = False) -> torch.Tensor:
    """REINFORCE leave-one-out advantages — Ahmadian et al. 2024, 'Back to Basics: Revisiting
    REINFORCE Style Optimization for Learning from Human Feedback in LLMs', Eq. 6 (Kool et al.
    2019 baseline): a_i = r_i - 1/(k-1) * sum_{j != i} r_j.

    ``rewards`` is (N,) with the ``k`` samples of one prompt consecutive (row ``prompt * k + j``,
    the same layout as GRPO; note that TRL's legacy RLOO trainer used the transposed layout).
    Requires ``k >= 2``. With ``normalize=True`` the advantages are additionally standardised over
    the whole batch: (a - mean(a)) / (std(a) + 1e-4), unbiased std (TRL's
    ``normalize_advantages``). Returns (N,).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    k = int(k)
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt")
    if rewards.numel() % k != 0:
        raise ValueError(f"len(rewards)={rewards.numel()} is not a multiple of k={k}")
    grouped = rewards.view(-1, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    adv = (grouped - baseline).reshape(-1)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + _STD_EPS)
    return adv


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE — Schulman et al. 2016, 'High-Dimensional Continuous Control Using Generalized
    Advantage Estimation', Eq. 16: A_t = sum_l (gamma*lam)^l delta_{t+l},
    delta_t = r_t + gamma V_{t+1} - V_t.

    ``rewards``, ``values`` and ``mask`` are (B, T). Rewards and values at padded positions are
    treated as zero, so the value after the last valid token of a sequence is 0 (the episode
    ends there) and nothing flows back through padding. Returns ``(advantages, returns)``, both
    (B, T), with returns = advantages + values and both zero at padded positions. The advantages
    are *not* whitened; call :func:`masked_whiten` if wanted. Computed without gradient.
    """
    with torch.no_grad():
        w = as_weights(mask, values)
        r = torch.where(w != 0, rewards.to(values.dtype), torch.zeros_like(values))
        v = torch.where(w != 0, values, torch.zeros_like(values))
        T = v.shape[1]
        adv = torch.zeros_like(v)
        last = torch.zeros_like(v[:, 0])
        for t in range(T - 1, -1, -1):
            next_v = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
            delta = r[:, t] + gamma * next_v - v[:, t]
            last = (delta + gamma * lam * last) * (w[:, t] != 0)
            adv[:, t] = last
        returns = (adv + v) * (w != 0)
    return adv, returns


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimators — Schulman 2020, 'Approximating KL Divergence'
    (blog note): with log r = ref_logp - logp for a token sampled from pi,

    * ``"k1"``: -log r = logp - ref_logp (unbiased, high variance, can be negative);
    * ``"k2"``: (log r)^2 / 2 (biased, low variance, >= 0);
    * ``"k3"``: (r - 1) - log r = exp(ref_logp - logp) - (ref_logp - logp) - 1 (unbiased, >= 0;
      the estimator GRPO uses, Shao et al. 2024 Eq. 4).

    Elementwise: returns a tensor shaped like ``logps``. Mask it with the completion mask.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    log_r = ref_logps - logps
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return torch.exp(log_r) - log_r - 1.0


def sequence_kl(
    logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Sequence KL estimate — sum over completion tokens of a Schulman (2020) per-token estimator
    (see :func:`kl_penalty`); the KL term of the KL-shaped reward r - beta*KL in Ouyang et al.
    2022, 'Training language models to follow instructions with human feedback', Eq. 2.

    Returns (B,). RLOO/PPO-style trainers subtract ``beta * sequence_kl(...)`` from the reward.
    """
    return masked_sum(kl_penalty(logps, ref_logps, estimator), mask, dim=-1)


# ---------------------------------------------------------------------------------------------
# GRPO / DAPO / Dr. GRPO / GSPO
# ---------------------------------------------------------------------------------------------


@dataclass
class GRPOLossOutput:
    """Result of :func:`grpo_loss`.

    The loss is ``total`` (the masked per-token losses summed as the loss type says) over ``count`` items of
    this micro-batch; ``loss`` is that local mean. A trainer normalises ``total`` itself
    (``BaseTrainer.reduce_loss``): over ``count`` and the accumulation steps, or, where ``spans_batch``
    (``"dapo"``, ``"cispo"``: a token mean over the whole generation batch, Yu et al. 2025, Eq. 8), over the
    active tokens of the optimizer step on every process when it knows them. ``kl`` is the masked token mean of the k3 KL (None
    when ``beta == 0``). ``clip_ratio_*`` are fractions of active tokens (of sequences, for
    ``importance_sampling_level="sequence"``) whose ratio was clipped from below with A < 0,
    from above with A > 0, or either (None for ``cispo`` and ``sapo``, which do not clip the
    surrogate); ``cispo_clip_ratio`` the fraction of tokens with A > 0 whose CISPO weight was
    capped (``cispo`` only). ``per_token_loss`` is the (B, T) loss before normalisation (padding
    included, so mask it before use).
    """

    total: torch.Tensor
    count: torch.Tensor
    spans_batch: bool
    kl: Optional[torch.Tensor]
    clip_ratio_low: Optional[torch.Tensor]
    clip_ratio_high: Optional[torch.Tensor]
    clip_ratio_region: Optional[torch.Tensor]
    per_token_loss: torch.Tensor
    cispo_clip_ratio: Optional[torch.Tensor] = None

    @property
    def loss(self) -> torch.Tensor:
        """The loss of this micro-batch alone: ``total / count``."""
        return self.total / self.count

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached metrics keyed by TRL's GRPO logging names."""
        named = {"clip_ratio/low_mean": self.clip_ratio_low, "clip_ratio/high_mean": self.clip_ratio_high,
                 "clip_ratio/region_mean": self.clip_ratio_region, "cispo_clip_ratio": self.cispo_clip_ratio,
                 "kl": self.kl}
        return {name: value.detach() for name, value in named.items() if value is not None}


def grpo_loss(
    logps: torch.Tensor,
    old_logps: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: Optional[torch.Tensor] = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: Optional[float] = None,
    loss_type: str = "grpo",
    importance_sampling_level: str = "token",
    max_completion_length: Optional[int] = None,
    delta: Optional[float] = None,
    entropy_mask: Optional[torch.Tensor] = None,
    importance_weights: Optional[torch.Tensor] = None,
    use_bias_correction_kl: bool = False,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
) -> GRPOLossOutput:
    """GRPO clipped surrogate — Shao et al. 2024, 'DeepSeekMath: Pushing the Limits of
    Mathematical Reasoning in Open Language Models', Eq. 3 (with the loss normalisations of
    DAPO, Yu et al. 2025, Eq. 8, and Dr. GRPO, Liu et al. 2025, and GSPO's sequence ratio,
    Zheng et al. 2025, 'Group Sequence Policy Optimization', Eq. 7).

    Per token: ``L_t = -min(ratio_t * A, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A)
    + beta * KL3_t`` where ``KL3_t = exp(ref - logp) - (ref - logp) - 1`` (Eq. 4). Two loss
    types replace the clipped surrogate:

    * ``"cispo"`` -- CISPO (MiniMax-M1, arXiv 2506.13585, Eq. 4; ScaleRL's form, arXiv
      2510.13786): ``L_t = -sg(min(ratio_t, eps_high)) * A * logp_t``: the importance weight
      is capped (``epsilon_high`` is the cap itself, e.g. 5.0, not ``1 + eps``) and
      detached, so every token keeps a gradient; normalised as ``"dapo"``.
    * ``"sapo"`` -- SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347):
      ``L_t = -f(ratio_t) * A`` with the soft gate ``f(r) = sigmoid(tau (r - 1)) * 4 / tau``
      (``tau = sapo_temperature_pos`` for A > 0, ``sapo_temperature_neg`` otherwise), whose
      gradient is the policy gradient at r = 1 and fades smoothly away from it; normalised
      as ``"grpo"``.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logps: (B, T) log-probs under the sampling policy. ``None`` means on-policy: the
            detached ``logps`` are used, so the ratio is 1 but its gradient is not zero.
        advantages: (B,) per-sequence advantages (or (B, T) per-token).
        mask: (B, T) completion mask.
        ref_logps: (B, T) reference log-probs, required when ``beta != 0``.
        beta: KL coefficient.
        epsilon_low / epsilon_high: clip range ``[1 - epsilon_low, 1 + epsilon_high]``;
            ``epsilon_high=None`` means ``epsilon_low`` (symmetric).
        loss_type: the surrogate (``"cispo"``, ``"sapo"``: see above) and the normalisation of the
            masked per-token loss sum S = sum_{b,t} m_bt L_bt:

            * ``"grpo"``: mean over sequences of each sequence's token mean
              (sum_t m L / max(sum_t m, 1)), Shao et al. Eq. 3;
            * ``"bnpo"``: S / (number of active tokens in this local batch);
            * ``"dr_grpo"``: S / (B * max_completion_length) (``max_completion_length`` defaults
              to T), Liu et al. 2025;
            * ``"dapo"``: S / (number of active tokens), where the trainer counts the tokens of the whole
              generation batch over all processes and accumulation micro-batches (``spans_batch``), so
              the token-level average spans the global batch (Yu et al. 2025, Eq. 8);
            * ``"luspo"``: S / B: each sequence's mean loss weighted by its length (LUSPO, arXiv 2602.05261: GSPO
              without its length bias; meant for ``importance_sampling_level="sequence"``).

        importance_sampling_level: ``"token"`` (ratio per token) or ``"sequence"`` (GSPO: the log
            ratio is the length-normalised sequence log ratio
            (1/|y|) sum_t (logp_t - old_logp_t), broadcast over the tokens of the sequence).
        delta: optional upper bound on the unclipped ratio (two-sided clipping, Wang et al. 2025
            'INTELLECT-2'); None disables it.
        entropy_mask: optional (B, T) 0/1 mask multiplying the per-token loss (see
            :func:`top_entropy_mask`).
        importance_weights: optional (B, T) or (B, 1) weights multiplying the per-token policy
            loss (e.g. truncated importance sampling between the sampler and the trainer).
        use_bias_correction_kl: multiply the k3 KL of each token by the (unclipped, not detached)
            importance ratio, DeepSeek-V3.2 (arXiv 2512.02556) Sec. 3.1 Eq. 7: equal in value on-policy,
            but its gradient is ``(logp - ref_logp) * grad logp``, whose expectation is the gradient of
            the reverse KL(pi || pi_ref); plain k3's is ``(1 - pi_ref / pi) * grad logp``.
        sapo_temperature_pos / sapo_temperature_neg: SAPO's gate temperatures for positive and
            non-positive advantages.

    Returns:
        :class:`GRPOLossOutput`.
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("ref_logps is required when beta != 0")
    eps_low = float(epsilon_low)
    eps_high = float(epsilon_low if epsilon_high is None else epsilon_high)

    w = as_weights(mask, logps)
    if old_logps is None:
        old_logps = logps.detach()
    log_ratio = logps - old_logps
    if importance_sampling_level == "token":
        log_iw = log_ratio
    else:
        seq_len = w.sum(dim=-1).clamp(min=1.0)
        log_iw = (masked_sum(log_ratio, w, dim=-1) / seq_len).unsqueeze(-1)  # (B, 1)

    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)
    ratio = torch.exp(log_iw)
    if loss_type == "cispo":
        per_token_loss = -torch.clamp(ratio, max=eps_high).detach() * adv * logps
    elif loss_type == "sapo":
        taus = ratio.new_tensor([float(sapo_temperature_neg), float(sapo_temperature_pos)])
        tau = taus[(adv > 0).long()]
        per_token_loss = -torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * adv
    else:
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
        unclipped = ratio if delta is None else torch.clamp(ratio, max=float(delta))
        per_token_loss = -torch.min(unclipped * adv, clipped * adv)
    if entropy_mask is not None:
        per_token_loss = per_token_loss * entropy_mask.to(per_token_loss.dtype)
    if importance_weights is not None:
        per_token_loss = per_token_loss * importance_weights.to(per_token_loss.dtype)

    kl_mean = None
    if beta != 0.0:
        per_token_kl = kl_penalty(logps, ref_logps, "k3")
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * ratio
        per_token_loss = per_token_loss + beta * per_token_kl
        kl_mean = masked_mean(per_token_kl.detach(), w)
    per_token_loss = per_token_loss.expand_as(w) if per_token_loss.shape != w.shape else per_token_loss

    total = masked_sum(per_token_loss, w)
    if loss_type in ("grpo", "sapo"):  # mean over sequences of each sequence's token mean
        total = (masked_sum(per_token_loss, w, dim=-1) / w.sum(dim=-1).clamp(min=1.0)).sum()
        count = total.new_tensor(float(w.shape[0]))
    elif loss_type == "dr_grpo":
        L = int(max_completion_length) if max_completion_length is not None else w.shape[1]
        count = total.new_tensor(float(w.shape[0] * L))
    elif loss_type == "luspo":  # sum_b |y_b| * (sequence b's mean loss), over the sequences
        count = total.new_tensor(float(w.shape[0]))
    else:  # bnpo, dapo, cispo: a token mean
        count = w.sum().clamp(min=1.0).to(total.dtype)

    def share(flags: torch.Tensor) -> torch.Tensor:
        """Fraction of active tokens where ``flags`` holds; with one ratio per sequence, of sequences (as TRL)."""
        flags = flags.to(w.dtype)
        if importance_sampling_level == "sequence" and adv.shape[-1] == 1:
            return flags.mean()
        return masked_mean(flags.expand_as(w), w)

    low = high = region = capped = None
    with torch.no_grad():
        r = ratio.detach()
        if loss_type == "cispo":
            capped = share((r > eps_high) & (adv > 0))
        elif loss_type != "sapo":
            is_low, is_high = (r < 1.0 - eps_low) & (adv < 0), (r > 1.0 + eps_high) & (adv > 0)
            low, high, region = share(is_low), share(is_high), share(is_low | is_high)

    return GRPOLossOutput(total=total, count=count, spans_batch=loss_type in ("dapo", "cispo"), kl=kl_mean,
                          clip_ratio_low=low, clip_ratio_high=high, clip_ratio_region=region,
                          per_token_loss=per_token_loss, cispo_clip_ratio=capped)


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


@dataclass
class PPOPolicyLossOutput:
    """Result of :func:`ppo_policy_loss`: the loss as ``total`` over ``count`` active tokens (``loss``: their
    mean); ``clipfrac`` = fraction of active tokens
    where the clipped term was selected (strictly larger loss); ``approxkl`` =
    0.5 * masked mean of (logp - old_logp)^2; ``ratio_mean`` = masked mean of the ratio."""

    total: torch.Tensor
    count: torch.Tensor
    clipfrac: torch.Tensor
    approxkl: torch.Tensor
    ratio_mean: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The loss of this micro-batch alone: ``total / count``."""
        return self.total / self.count


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> PPOPolicyLossOutput:
    """PPO clipped surrogate — Schulman et al. 2017, 'Proximal Policy Optimization Algorithms',
    Eq. 7: L = -E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)], r_t = exp(logp_t - old_t).

    All inputs (B, T); ``advantages`` per token (e.g. from :func:`gae`, whitened). The expectation
    is the masked mean over active tokens. See :class:`PPOPolicyLossOutput` for the metrics.
    """
    w = as_weights(mask, logps)
    diff = logps - old_logps
    ratio = torch.exp(diff)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    total, count = masked_sum(torch.max(loss_unclipped, loss_clipped), w), w.sum().clamp(min=1.0)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).to(w.dtype), w)
        approxkl = 0.5 * masked_mean(diff.detach() ** 2, w)
        ratio_mean = masked_mean(ratio.detach(), w)
    return PPOPolicyLossOutput(total=total, count=count, clipfrac=clipfrac, approxkl=approxkl, ratio_mean=ratio_mean)


@dataclass
class PPOValueLossOutput:
    """Result of :func:`ppo_value_loss`: the loss as ``total`` over ``count`` active tokens (``loss``: their
    mean) and ``vf_clipfrac`` (fraction of active tokens where the clipped squared error was the larger one)."""

    total: torch.Tensor
    count: torch.Tensor
    vf_clipfrac: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The loss of this micro-batch alone: ``total / count``."""
        return self.total / self.count


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> PPOValueLossOutput:
    """Clipped value loss — Schulman et al. 2017, 'Proximal Policy Optimization Algorithms',
    Eq. 9 value term, in the clipped form of the PPO reference implementation (OpenAI baselines
    ppo2): L_V = 0.5 * E_t[max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2)].

    All inputs (B, T); the expectation is the masked mean over active tokens.
    """
    w = as_weights(mask, values)
    v_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    total, count = 0.5 * masked_sum(torch.max(err_unclipped, err_clipped), w), w.sum().clamp(min=1.0)
    with torch.no_grad():
        vf_clipfrac = masked_mean((err_clipped > err_unclipped).to(w.dtype), w)
    return PPOValueLossOutput(total=total, count=count, vf_clipfrac=vf_clipfrac)


# ---------------------------------------------------------------------------------------------
# RLOO
# ---------------------------------------------------------------------------------------------


@dataclass
class RLOOLossOutput:
    """Result of :func:`rloo_loss`: the loss as ``total`` over ``count`` sequences (``loss``: their mean); clip
    fractions over *sequences* (low: ratio
    below 1 - eps_low with A < 0; high: above 1 + eps_high with A > 0; region: either);
    ``ratio_mean`` = mean sequence ratio."""

    total: torch.Tensor
    count: torch.Tensor
    clip_ratio_low: torch.Tensor
    clip_ratio_high: torch.Tensor
    clip_ratio_region: torch.Tensor
    ratio_mean: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The loss of this micro-batch alone: ``total / count``."""
        return self.total / self.count

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached metrics keyed by TRL's logging names."""
        return {
            "clip_ratio/low_mean": self.clip_ratio_low.detach(),
            "clip_ratio/high_mean": self.clip_ratio_high.detach(),
            "clip_ratio/region_mean": self.clip_ratio_region.detach(),
        }


def rloo_loss(
    logps: torch.Tensor,
    old_logps: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: Optional[float] = None,
) -> RLOOLossOutput:
    """RLOO policy loss — Ahmadian et al. 2024, 'Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs', Eq. 6 (the whole completion is one
    action), with an optional PPO-style clipped ratio (Schulman et al. 2017, Eq. 7).

    With s_i = sum_t m_it (logp_it - old_logp_it) the *summed* (not length-normalised) sequence
    log ratio and rho_i = exp(s_i):
    ``L = mean_i[-min(rho_i A_i, clip(rho_i, 1 - eps_low, 1 + eps_high) A_i)]``.
    On-policy (``old_logps=None`` or equal to ``logps``) rho = 1 and the gradient is the plain
    REINFORCE-with-baseline gradient -mean_i A_i grad sum_t logp_it.

    Args:
        logps, old_logps, mask: (B, T); ``old_logps=None`` uses the detached ``logps``.
        advantages: (B,) leave-one-out advantages (:func:`rloo_advantages`), computed from
            rewards already shaped by the KL penalty (r - beta * :func:`sequence_kl`) if wanted.
        epsilon_low / epsilon_high: clip range; ``epsilon_high=None`` means symmetric.
    """
    eps_low = float(epsilon_low)
    eps_high = float(epsilon_low if epsilon_high is None else epsilon_high)
    w = as_weights(mask, logps)
    if old_logps is None:
        old_logps = logps.detach()
    seq_log_ratio = masked_sum(logps - old_logps, w, dim=-1)
    ratio = torch.exp(seq_log_ratio)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    total = (-torch.min(ratio * advantages, clipped * advantages)).sum()
    with torch.no_grad():
        r = ratio.detach()
        low = ((r < 1.0 - eps_low) & (advantages < 0)).to(r.dtype)
        high = ((r > 1.0 + eps_high) & (advantages > 0)).to(r.dtype)
        region = torch.clamp(low + high, max=1.0)
    return RLOOLossOutput(
        total=total,
        count=total.new_tensor(float(ratio.shape[0])),
        clip_ratio_low=low.mean(),
        clip_ratio_high=high.mean(),
        clip_ratio_region=region.mean(),
        ratio_mean=r.mean(),
    )
