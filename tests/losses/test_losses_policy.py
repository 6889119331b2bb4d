"""Tests for posttrain.losses.policy against values worked out with plain Python math/loops."""

import math

import pytest
import torch

from posttrain.losses.policy import (
    gae,
    grpo_loss,
    group_advantages,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    sequence_kl,
)
from posttrain.losses.tokens import (
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    selective_log_softmax,
    top_entropy_mask,
)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(a, b, tol=1e-9):
    a = a.item() if isinstance(a, torch.Tensor) else a
    assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), (a, b)


def py_std(xs):  # unbiased
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ------------------------------------------------------------------------------------- masked


def test_masked_reductions():
    x = t([[1.0, 2.0, 100.0], [4.0, float("nan"), float("inf")]])
    m = t([[1, 1, 0], [1, 0, 0]])
    close(masked_sum(x, m), 1 + 2 + 4)
    close(masked_mean(x, m), 7 / 3)
    assert torch.allclose(masked_mean(x, m, dim=1), t([1.5, 4.0]))
    assert torch.allclose(masked_sum(x, m, dim=0), t([5.0, 2.0, 0.0]))
    # empty mask row -> 0 rather than NaN
    assert masked_mean(x, t([[0, 0, 0], [1, 0, 0]]), dim=1).tolist() == [0.0, 4.0]
    # bool mask accepted
    close(masked_mean(x, m.bool()), 7 / 3)


def test_masked_var_and_whiten():
    x = t([[1.0, 3.0, 9.0], [5.0, -7.0, 0.0]])
    m = t([[1, 1, 0], [1, 0, 0]])
    vals = [1.0, 3.0, 5.0]
    mean = 3.0
    var_unb = sum((v - mean) ** 2 for v in vals) / 2  # = 4
    close(masked_var(x, m), var_unb)
    close(masked_var(x, m, unbiased=False), var_unb * 2 / 3)
    w = masked_whiten(x, m)
    for (i, j), v in zip([(0, 0), (0, 1), (1, 0)], vals):
        close(w[i, j], (v - mean) / math.sqrt(var_unb + 1e-8))
    w2 = masked_whiten(x, m, shift_mean=False)
    close(w2[0, 0], (1.0 - mean) / math.sqrt(var_unb + 1e-8) + mean)
    with pytest.raises(ValueError):
        masked_var(x, t([[1, 0, 0], [0, 0, 0]]))


# --------------------------------------------------------------------------------- advantages


REWARDS = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5, 3.0, -1.0, 0.0]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages(scale):
    G = 4
    out = group_advantages(t(REWARDS), G, scale_rewards=scale)
    groups = [REWARDS[i : i + G] for i in range(0, len(REWARDS), G)]
    batch_std = py_std(REWARDS)
    expected = []
    for g in groups:
        mu = sum(g) / G
        for r in g:
            if scale == "group":
                expected.append((r - mu) / (py_std(g) + 1e-4))
            elif scale == "batch":
                expected.append((r - mu) / (batch_std + 1e-4))
            else:
                expected.append(r - mu)
    for a, e in zip(out.advantages.tolist(), expected):
        close(a, e)
    for s, g in zip(out.group_std.tolist(), groups):
        close(s, py_std(g))
    close(out.frac_reward_zero_std, 1 / 3)  # the all-2.0 group
    adv, std = out  # tuple-unpackable
    assert adv.shape == (12,) and std.shape == (3,)


def test_group_advantages_bad_layout():
    with pytest.raises(ValueError):
        group_advantages(t([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError):
        group_advantages(t([1.0, 2.0]), 2, scale_rewards="max")


def test_rloo_advantages():
    rewards = [1.0, 2.0, 4.0, 0.0, 3.0, 3.0]
    k = 3
    adv = rloo_advantages(t(rewards), k)
    expected = []
    for p in range(2):
        g = rewards[p * k : (p + 1) * k]
        for i in range(k):
            others = [g[j] for j in range(k) if j != i]
            expected.append(g[i] - sum(others) / len(others))
    for a, e in zip(adv.tolist(), expected):
        close(a, e)
    # prompt 0, sample 0: 1 - (2 + 4) / 2 = -2
    close(adv[0], -2.0)
    norm = rloo_advantages(t(rewards), k, normalize=True)
    mu = sum(expected) / len(expected)
    sd = py_std(expected)
    for a, e in zip(norm.tolist(), expected):
        close(a, (e - mu) / (sd + 1e-4))
    with pytest.raises(ValueError):
        rloo_advantages(t([1.0, 2.0]), 1)


def test_gae_two_sequences_with_mask():
    gamma, lam = 0.9, 0.8
    rewards = t([[0.0, 0.5, 1.0], [0.2, 2.0, 99.0]])
    values = t([[0.1, 0.3, 0.6], [0.4, 0.7, 55.0]])  # junk beyond mask must be ignored
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)

    def ref(r, v):
        n = len(r)
        deltas = [r[i] + gamma * (v[i + 1] if i + 1 < n else 0.0) - v[i] for i in range(n)]
        a = [sum((gamma * lam) ** l * deltas[i + l] for l in range(n - i)) for i in range(n)]
        return a, [a[i] + v[i] for i in range(n)]

    a0, r0 = ref([0.0, 0.5, 1.0], [0.1, 0.3, 0.6])
    a1, r1 = ref([0.2, 2.0], [0.4, 0.7])
    for j in range(3):
        close(adv[0, j], a0[j])
        close(ret[0, j], r0[j])
    for j in range(2):
        close(adv[1, j], a1[j])
        close(ret[1, j], r1[j])
    assert adv[1, 2].item() == 0.0 and ret[1, 2].item() == 0.0
    # explicit numbers for the short sequence: delta1 = 2 - 0.7 = 1.3,
    # delta0 = 0.2 + 0.9*0.7 - 0.4 = 0.43, A0 = 0.43 + 0.72*1.3 = 1.366
    close(adv[1, 1], 1.3)
    close(adv[1, 0], 1.366)


def test_kl_estimators():
    logp = t([[-1.0, -2.0]])
    ref = t([[-1.5, -1.0]])
    k1 = kl_penalty(logp, ref, "k1")
    k2 = kl_penalty(logp, ref, "k2")
    k3 = kl_penalty(logp, ref, "k3")
    for j, (lp, rp) in enumerate([(-1.0, -1.5), (-2.0, -1.0)]):
        close(k1[0, j], lp - rp)
        close(k2[0, j], 0.5 * (lp - rp) ** 2)
        close(k3[0, j], math.exp(rp - lp) - (rp - lp) - 1)
    close(k1[0, 0], 0.5)
    assert (k3 >= 0).all()
    seq = sequence_kl(logp, ref, t([[1, 0]]))
    close(seq[0], 0.5)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


# ---------------------------------------------------------------------------------------- GRPO

# Two sequences, T = 3; the second has 2 completion tokens.
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [0.5, -1.5]
LOGP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -4.0]]
OLD = [[-1.1, -0.2, -2.05], [-0.6, -1.0, -0.1]]
REF = [[-0.9, -0.7, -1.8], [-0.4, -1.0, -3.0]]


def hand_token_losses(eps_low, eps_high, beta, seq_level=False):
    """Per-token GRPO losses [[...], [...]] for active tokens only."""
    out = []
    for b in range(2):
        n = sum(MASK[b])
        a = ADV[b]
        if seq_level:
            lr = sum(LOGP[b][j] - OLD[b][j] for j in range(n)) / n
        row = []
        for j in range(n):
            r = math.exp(lr if seq_level else LOGP[b][j] - OLD[b][j])
            rc = min(max(r, 1 - eps_low), 1 + eps_high)
            loss = -min(r * a, rc * a)
            if beta:
                d = REF[b][j] - LOGP[b][j]
                loss += beta * (math.exp(d) - d - 1)
            row.append(loss)
        out.append(row)
    return out


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_normalizations(loss_type, beta):
    rows = hand_token_losses(0.2, 0.28, beta)
    flat = [x for r in rows for x in r]
    if loss_type == "grpo":
        expected = sum(sum(r) / len(r) for r in rows) / 2
    elif loss_type == "bnpo":
        expected = sum(flat) / 5
    elif loss_type == "dr_grpo":
        expected = sum(flat) / (2 * 8)
    else:
        expected = sum(flat) / 5  # a token mean; the trainer spans the batch (spans_batch, reduce_loss)
    out = grpo_loss(
        t(LOGP),
        t(OLD),
        t(ADV),
        t(MASK),
        ref_logps=t(REF),
        beta=beta,
        epsilon_low=0.2,
        epsilon_high=0.28,
        loss_type=loss_type,
        max_completion_length=8,
    )
    close(out.loss, expected)
    close(out.total / out.count, expected)
    assert out.spans_batch == (loss_type == "dapo")
    assert float(out.count) == {"grpo": 2, "bnpo": 5, "dr_grpo": 16, "dapo": 5}[loss_type]
    if beta:
        kls = [math.exp(REF[b][j] - LOGP[b][j]) - (REF[b][j] - LOGP[b][j]) - 1 for b in range(2) for j in range(sum(MASK[b]))]
        close(out.kl, sum(kls) / 5)
        assert "kl" in out.metrics
    else:
        assert out.kl is None and "kl" not in out.metrics


def test_cispo_caps_detached_weights_and_keeps_every_token_gradient():
    """CISPO: L_t = -sg(min(r_t, cap)) * A * logp_t, normalised over the tokens (as dapo)."""
    cap = 1.1
    ratios = [[math.exp(LOGP[b][j] - OLD[b][j]) for j in range(3)] for b in range(2)]
    toks = [(b, j) for b in range(2) for j in range(sum(MASK[b]))]
    expected = sum(-min(ratios[b][j], cap) * ADV[b] * LOGP[b][j] for b, j in toks) / 5
    logp = t(LOGP).requires_grad_(True)
    out = grpo_loss(logp, t(OLD), t(ADV), t(MASK), loss_type="cispo", epsilon_high=cap)
    close(out.loss, expected)
    out.loss.backward()
    for b, j in toks:  # d/dlogp_t = -min(r_t, cap) * A / N: nonzero even where the weight is capped
        close(logp.grad[b, j], -min(ratios[b][j], cap) * ADV[b] / 5)
    assert logp.grad[1, 2].item() == 0  # padding
    capped = [1.0 if ratios[b][j] > cap and ADV[b] > 0 else 0.0 for b, j in toks]
    assert sum(capped) == 1  # exercised: token (0, 0) has r = e^0.1 > 1.1 and A > 0
    close(out.cispo_clip_ratio, sum(capped) / 5)
    assert set(out.metrics) == {"cispo_clip_ratio"}
    assert out.spans_batch  # normalised over the tokens of the step, as dapo


@pytest.mark.parametrize("taus", [(1.0, 1.05), (2.0, 0.5)])
def test_sapo_soft_gate(taus):
    """SAPO: L_t = -sigmoid(tau (r_t - 1)) * 4 / tau * A, tau by the advantage's sign; per-sequence mean (as grpo)."""
    tau_pos, tau_neg = taus
    rows, grads = [], []
    for b in range(2):
        tau = tau_pos if ADV[b] > 0 else tau_neg
        row, grow = [], []
        for j in range(sum(MASK[b])):
            r = math.exp(LOGP[b][j] - OLD[b][j])
            s = 1 / (1 + math.exp(-tau * (r - 1)))
            row.append(-s * 4 / tau * ADV[b])
            grow.append(-4 * s * (1 - s) * r * ADV[b])  # d/dlogp of -sigmoid(tau (r - 1)) 4/tau A, r = e^(logp - old)
        rows.append(row)
        grads.append(grow)
    expected = sum(sum(r) / len(r) for r in rows) / 2
    logp = t(LOGP).requires_grad_(True)
    out = grpo_loss(logp, t(OLD), t(ADV), t(MASK), loss_type="sapo", sapo_temperature_pos=tau_pos,
                    sapo_temperature_neg=tau_neg)
    close(out.loss, expected)
    out.loss.backward()
    for b in range(2):
        for j, g in enumerate(grads[b]):
            close(logp.grad[b, j], g / (len(grads[b]) * 2))
    assert out.metrics == {}
    # on-policy (r = 1) the gate's gradient is the policy gradient: sigmoid'(0) * 4 = 1
    logp = t(LOGP).requires_grad_(True)
    grpo_loss(logp, None, t(ADV), t(MASK), loss_type="sapo").loss.backward()
    close(logp.grad[0, 0], -ADV[0] / (3 * 2))
    close(logp.grad[1, 0], -ADV[1] / (2 * 2))


def test_grpo_dapo_without_global_count_equals_bnpo():
    a = grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), loss_type="dapo").loss
    b = grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), loss_type="bnpo").loss
    close(a, b.item())


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_ratio_one_is_minus_mean_advantage(loss_type):
    lens = [3, 2]
    if loss_type == "grpo":
        expected = -(ADV[0] + ADV[1]) / 2
    elif loss_type == "bnpo":
        expected = -(3 * ADV[0] + 2 * ADV[1]) / 5
    elif loss_type == "dr_grpo":
        expected = -(3 * ADV[0] + 2 * ADV[1]) / (2 * 3)  # max_completion_length defaults to T=3
    else:  # a token mean over the step's tokens, here 10 (the trainer's normaliser: BaseTrainer.reduce_loss)
        expected = -(3 * ADV[0] + 2 * ADV[1]) / 5
    logp = t(LOGP).requires_grad_(True)
    out = grpo_loss(logp, None, t(ADV), t(MASK), loss_type=loss_type)
    if loss_type == "dapo":
        close(out.total / 10, -(3 * ADV[0] + 2 * ADV[1]) / 10)
        out.total.div(10).backward(retain_graph=True)
        close(logp.grad[0, 0], -ADV[0] / 10)
        logp.grad = None
    close(out.loss, expected)
    assert out.clip_ratio_low.item() == 0 and out.clip_ratio_high.item() == 0
    assert out.clip_ratio_region.item() == 0
    # same with explicit old == new
    out2 = grpo_loss(t(LOGP), t(LOGP), t(ADV), t(MASK), loss_type=loss_type)
    close(out2.loss, expected)
    # gradient is the REINFORCE gradient: d/dlogp = -A * (normaliser weight)
    out.loss.backward()
    if loss_type == "grpo":
        close(logp.grad[0, 0], -ADV[0] / (lens[0] * 2))
        close(logp.grad[1, 1], -ADV[1] / (lens[1] * 2))
    elif loss_type == "bnpo":
        close(logp.grad[1, 0], -ADV[1] / 5)
    assert logp.grad[1, 2].item() == 0.0


def test_grpo_clip_ratio_counts():
    # ratios: row0 (A>0): 0.7 (not counted: A>0), 1.3 (high), 1.1 (inside), padded 5.0 (ignored)
    #         row1 (A<0): 0.7 (low), 1.3 (not counted: A<0), 0.75 (low), 0.9 (inside)
    ratios = [[0.7, 1.3, 1.1, 5.0], [0.7, 1.3, 0.75, 0.9]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1]]
    old = torch.zeros(2, 4, dtype=torch.float64)
    logp = torch.log(t(ratios))
    out = grpo_loss(logp, old, t([1.0, -1.0]), t(mask), epsilon_low=0.2, epsilon_high=0.2)
    close(out.clip_ratio_high, 1 / 7)
    close(out.clip_ratio_low, 2 / 7)
    close(out.clip_ratio_region, 3 / 7)
    m = out.metrics
    assert set(m) == {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"}
    # hand loss (grpo): per sequence token means of -min(r A, clip(r) A)
    seq0 = [-min(r * 1.0, min(max(r, 0.8), 1.2) * 1.0) for r in ratios[0][:3]]
    seq1 = [-min(r * -1.0, min(max(r, 0.8), 1.2) * -1.0) for r in ratios[1]]
    close(out.loss, (sum(seq0) / 3 + sum(seq1) / 4) / 2)


def test_grpo_asymmetric_clip_and_delta():
    # ratio 1.25 with A>0: clipped at 1.2 with symmetric eps, untouched with eps_high=0.28
    logp = torch.log(t([[1.25]]))
    old = t([[0.0]])
    sym = grpo_loss(logp, old, t([1.0]), t([[1]]), epsilon_low=0.2)
    asym = grpo_loss(logp, old, t([1.0]), t([[1]]), epsilon_low=0.2, epsilon_high=0.28)
    close(sym.loss, -1.2)
    close(asym.loss, -1.25)
    close(sym.clip_ratio_high, 1.0)
    close(asym.clip_ratio_high, 0.0)
    # two-sided clipping: ratio 3 with A<0 normally gives -3*A; delta caps it at 2
    logp3 = torch.log(t([[3.0]]))
    plain = grpo_loss(logp3, old, t([-1.0]), t([[1]]))
    capped = grpo_loss(logp3, old, t([-1.0]), t([[1]]), delta=2.0)
    close(plain.loss, 3.0)
    close(capped.loss, 2.0)


def test_gspo_sequence_level_ratio():
    rows = hand_token_losses(0.2, 0.2, 0.0, seq_level=True)
    out = grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), importance_sampling_level="sequence", loss_type="grpo")
    close(out.loss, sum(sum(r) / len(r) for r in rows) / 2)
    # every token of a sequence carries the same loss
    for b in range(2):
        vals = out.per_token_loss[b, : sum(MASK[b])].tolist()
        assert max(vals) - min(vals) < 1e-12
    # sequence ratios: row0 = exp(mean(0.1, -0.3, 0.05)), row1 = exp(mean(0.3, -0.2))
    r0 = math.exp((0.1 - 0.3 + 0.05) / 3)
    close(out.per_token_loss[0, 0], -min(r0 * 0.5, min(max(r0, 0.8), 1.2) * 0.5))
    # clip fractions are over sequences: make row1 ratio exp(1.5) with A<0 -> not counted; A>0 counted
    logp = t([[0.0, 0.0], [1.5, 1.5]])
    old = torch.zeros(2, 2, dtype=torch.float64)
    o = grpo_loss(logp, old, t([0.0, 1.0]), t([[1, 1], [1, 1]]), importance_sampling_level="sequence")
    close(o.clip_ratio_high, 0.5)
    close(o.clip_ratio_low, 0.0)
    # with KL: loss = seq policy term + beta * token k3, bnpo normalisation
    o2 = grpo_loss(
        t(LOGP), t(OLD), t(ADV), t(MASK), ref_logps=t(REF), beta=0.1,
        importance_sampling_level="sequence", loss_type="bnpo",
    )
    rows_kl = hand_token_losses(0.2, 0.2, 0.1, seq_level=True)
    close(o2.loss, sum(x for r in rows_kl for x in r) / 5)


def test_grpo_entropy_mask_and_weights():
    em = t([[1, 0, 1], [0, 1, 0]])
    iw = t([[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]])
    rows = hand_token_losses(0.2, 0.2, 0.0)
    out = grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), loss_type="bnpo", entropy_mask=em, importance_weights=iw)
    expected = (rows[0][0] * 0.5 + rows[0][2] * 2.0 + rows[1][1]) / 5
    close(out.loss, expected)


def test_grpo_requires_ref_for_kl():
    with pytest.raises(ValueError):
        grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), beta=0.1)
    with pytest.raises(ValueError):
        grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), loss_type="xyz")


# ----------------------------------------------------------------------------------------- PPO


def test_ppo_policy_loss_with_clipping():
    ratios = [[1.5, 0.6, 1.0], [1.1, 0.5, 3.0]]
    adv = [[1.0, -2.0, 0.5], [-1.0, 1.0, 7.0]]
    mask = [[1, 1, 1], [1, 1, 0]]
    eps = 0.2
    old = t([[-1.0, -2.0, -0.5], [-0.1, -0.7, -1.0]])
    logp = old + torch.log(t(ratios))
    out = ppo_policy_loss(logp, old, t(adv), t(mask), cliprange=eps)
    losses, clipped, sq = [], [], []
    for b in range(2):
        for j in range(3):
            if not mask[b][j]:
                continue
            r, a = ratios[b][j], adv[b][j]
            l1 = -a * r
            l2 = -a * min(max(r, 1 - eps), 1 + eps)
            losses.append(max(l1, l2))
            clipped.append(1.0 if l2 > l1 else 0.0)
            sq.append(math.log(r) ** 2)
    close(out.loss, sum(losses) / 5, 1e-12)
    close(out.clipfrac, sum(clipped) / 5)
    close(out.approxkl, 0.5 * sum(sq) / 5, 1e-12)
    # clipping active: token (0,0) r=1.5,A=1 -> -1.2 ; token (0,1) r=0.6,A=-2 -> 1.6 (clip at 0.8)
    assert sum(clipped) == 2.0
    close(out.ratio_mean, (1.5 + 0.6 + 1.0 + 1.1 + 0.5) / 5, 1e-12)


def test_ppo_value_loss_with_clipping():
    values = [[1.0, 0.0, 2.0], [0.5, 3.0, 9.0]]
    old = [[0.5, 0.1, 2.5], [0.5, 2.0, 0.0]]
    ret = [[2.0, -1.0, 2.2], [0.0, 1.0, 0.0]]
    mask = [[1, 1, 1], [1, 1, 0]]
    c = 0.2
    out = ppo_value_loss(t(values), t(old), t(ret), t(mask), cliprange_value=c)
    terms, fr = [], []
    for b in range(2):
        for j in range(3):
            if not mask[b][j]:
                continue
            v, vo, r = values[b][j], old[b][j], ret[b][j]
            vc = min(max(v, vo - c), vo + c)
            e1, e2 = (v - r) ** 2, (vc - r) ** 2
            terms.append(max(e1, e2))
            fr.append(1.0 if e2 > e1 else 0.0)
    close(out.loss, 0.5 * sum(terms) / 5, 1e-12)
    close(out.vf_clipfrac, sum(fr) / 5)
    assert 0 < sum(fr) < 5  # clipping active on some tokens only


# ---------------------------------------------------------------------------------------- RLOO


def test_rloo_loss_sequence_ratio_and_clip():
    logp = t([[-1.0, -0.5, -3.0], [-0.2, -0.4, -0.1], [-1.0, -1.0, -1.0]])
    old = t([[-1.1, -0.6, 0.0], [-0.2, -0.4, -0.1], [-0.5, -0.9, -1.0]])
    mask = t([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    adv = t([1.0, -0.5, -2.0])
    out = rloo_loss(logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2)
    s = [0.1 + 0.1, 0.0, -0.5 - 0.1]  # summed, not averaged
    losses, low, high = [], 0, 0
    for si, a in zip(s, adv.tolist()):
        r = math.exp(si)
        rc = min(max(r, 0.8), 1.2)
        losses.append(-min(r * a, rc * a))
        low += r < 0.8 and a < 0
        high += r > 1.2 and a > 0
    close(out.loss, sum(losses) / 3, 1e-12)
    close(out.clip_ratio_low, low / 3)
    close(out.clip_ratio_high, high / 3)
    # row0: exp(0.2)=1.221 > 1.2 with A>0 (high); row2: exp(-0.6)=0.549 < 0.8 with A<0 (low)
    assert low == 1 and high == 1
    close(out.clip_ratio_region, 2 / 3)


def test_rloo_loss_on_policy_gradient():
    logp = t([[-1.0, -0.5], [-0.2, -0.4]]).requires_grad_(True)
    mask = t([[1, 1], [1, 0]])
    adv = t([2.0, -1.0])
    out = rloo_loss(logp, None, adv, mask)
    close(out.loss, -(2.0 - 1.0) / 2)
    out.loss.backward()
    assert torch.allclose(logp.grad, t([[-1.0, -1.0], [0.5, 0.0]]))


# ------------------------------------------------------------------------------ logit utilities


def test_selective_log_softmax_matches_full():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 11, (3, 5), generator=g)
    got = selective_log_softmax(logits, idx, chunk_size=4)
    ref = torch.log_softmax(logits, -1).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, ref, atol=1e-12)
    # hand value for one row
    row = logits[1, 2].tolist()
    lse = math.log(sum(math.exp(z) for z in row))
    close(got[1, 2], row[idx[1, 2]] - lse, 1e-12)
    # gradients agree
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    selective_log_softmax(a, idx, chunk_size=2).sum().backward()
    torch.log_softmax(b, -1).gather(-1, idx.unsqueeze(-1)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    # low precision: computed in float32
    bf = selective_log_softmax(logits.to(torch.bfloat16), idx)
    assert bf.dtype == torch.float32
    assert torch.allclose(bf.double(), ref, atol=0.1)


def test_entropy_from_logits_direct_formula():
    logits = t([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[5.0, -1.0, float("-inf")], [2.0, 2.0, -3.0]]])
    got = entropy_from_logits(logits, chunk_size=3)
    assert got.shape == (2, 2)
    for b in range(2):
        for tt in range(2):
            zs = logits[b, tt].tolist()
            ex = [math.exp(z) for z in zs]
            ps = [e / sum(ex) for e in ex]
            h = -sum(p * math.log(p) for p in ps if p > 0)
            close(got[b, tt], h, 1e-12)
    close(got[0, 1], math.log(3), 1e-12)
    x = logits.clone().requires_grad_(True)
    entropy_from_logits(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert entropy_from_logits(logits.float().to(torch.bfloat16)).dtype == torch.float32


def test_top_entropy_mask():
    ent = t([[0.1, 0.9, 0.5, 7.0], [0.3, 0.7, 0.2, 8.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 1, 0]])  # the large values are padding
    # active sorted: .1 .2 .3 .5 .7 .9 ; q=0.5 -> pos 2.5 -> .3 + .5*(.5-.3) = 0.4
    out = top_entropy_mask(ent, mask, 0.5)
    assert out.tolist() == [[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert out.dtype == mask.dtype
    # q=0.8 -> pos 4 -> 0.7 (kept, >=)
    assert top_entropy_mask(ent, mask, 0.8).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    # q=0 keeps all active tokens; q=1 keeps the max only
    assert torch.equal(top_entropy_mask(ent, mask, 0.0), mask)
    assert top_entropy_mask(ent, mask, 1.0).sum().item() == 1
    # threshold agrees with torch.quantile over active tokens
    active = ent[mask.bool()]
    for q in [0.2, 0.33, 0.9]:
        tau = torch.quantile(active, q)
        assert torch.equal(top_entropy_mask(ent, mask, q).bool(), (ent >= tau) & mask.bool())
    # bool mask in, bool out; empty mask -> nothing kept
    assert top_entropy_mask(ent, mask.bool(), 0.5).dtype == torch.bool
    assert top_entropy_mask(ent, torch.zeros_like(mask), 0.5).sum().item() == 0
    # external population for the quantile (e.g. gathered from all ranks)
    out = top_entropy_mask(ent, mask, 0.5, reference_entropies=t([0.0, 1.0]))  # tau = 0.5
    assert out.tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_grpo_bias_corrected_kl_gradient_is_the_reverse_kl_score_function(level):
    """DeepSeek-V3.2 Eq. 7 (TRL's use_bias_correction_kl): on-policy the KL term keeps its value, but its gradient
    per token becomes beta * (logp - ref_logp) * grad logp (the uncorrected k3 gives beta * (1 - pi_ref/pi) *
    grad logp); with GSPO's sequence ratio every token also gets the row's mean k3. Checked with zero advantages,
    so only the KL term has a gradient; bnpo divides by the 5 tokens."""
    logps = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -9.0]], requires_grad=True)
    ref = torch.tensor([[-0.9, -0.4, -2.5], [-0.3, -1.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    beta, n = 0.1, 5.0
    lp = logps.detach()
    k3 = (torch.exp(ref - lp) - (ref - lp) - 1.0) * mask
    plain = beta * (1.0 - torch.exp(ref - lp)) * mask / n
    if level == "token":  # d(r_t k3_t) = k3_t d(logp_t) + (1 - pi_ref/pi) d(logp_t) = (logp - ref_logp) d(logp_t)
        corrected = beta * (lp - ref) * mask / n
    else:  # one ratio per sequence, exp(mean log ratio): each token also gets (sum of the row's k3) / row length
        corrected = plain + beta * (k3.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)) * mask / n
    expected = {True: corrected, False: plain}
    values = {}
    for use in (True, False):
        logps.grad = None
        out = grpo_loss(logps, None, torch.zeros(2), mask, ref_logps=ref, beta=beta, loss_type="bnpo",
                        importance_sampling_level=level, use_bias_correction_kl=use)
        out.loss.backward()
        torch.testing.assert_close(logps.grad, expected[use], rtol=1e-5, atol=1e-7)
        values[use] = out.loss.item()
    assert values[True] == pytest.approx(values[False]) == pytest.approx(beta * k3.sum().item() / n)


def test_decoupled_group_rewards_keep_apart_what_a_summed_reward_collapses():
    """GDPO's motivating case: two groups of two rollouts, two binary rewards. Summed first (GRPO), the groups (0, 1)
    and (0, 2) get the same advantages (-0.707, 0.707); normalised per reward first, they do not."""
    from posttrain.losses.policy import decoupled_group_rewards

    per_function = torch.tensor([[0.0, 0.0], [1.0, 0.0],    # group A: sums 0, 1
                                 [0.0, 0.0], [1.0, 1.0]])   # group B: sums 0, 2
    weights = torch.tensor([1.0, 1.0])
    z = 0.5 / (math.sqrt(0.5) + 1e-4)  # (x - mean) / (unbiased std + eps) of the pair (0, 1)
    got = decoupled_group_rewards(per_function, weights, 2)
    torch.testing.assert_close(got, torch.tensor([-z, z, -2 * z, 2 * z]))  # function 2 is constant in group A: 0
    summed = group_advantages(per_function.sum(1), 2, "group").advantages
    torch.testing.assert_close(summed[:2], summed[2:], atol=1e-3, rtol=0)  # GRPO: the same for both groups (eps aside)
    final = group_advantages(got, 2, "batch").advantages  # the second stage: over the batch
    assert final[3] > final[1] > 0 > final[0] > final[2]
    # weights scale each function's share; a NaN (not scored) stays out of its function's statistics and adds 0
    torch.testing.assert_close(decoupled_group_rewards(per_function, torch.tensor([2.0, 0.0]), 2),
                               torch.tensor([-2 * z, 2 * z, -2 * z, 2 * z]))
    holes = per_function.clone()
    holes[3, 1] = float("nan")
    got = decoupled_group_rewards(holes, weights, 2)
    torch.testing.assert_close(got, torch.tensor([-z, z, -z, z]))  # group B, function 2: one value, std 0
    holes[2] = float("nan")
    assert torch.isnan(decoupled_group_rewards(holes, weights, 2)[2])


def test_off_policy_sequence_mask_drops_only_drifted_sequences_with_negative_advantage():
    """DeepSeek-V3.2, Eq. 9: keep unless A < 0 and mean_t(log pi_old - log pi_theta) > delta."""
    from posttrain.losses.policy import off_policy_sequence_mask

    logps = torch.log(torch.tensor([[0.5, 0.5, 1.0], [0.5, 0.5, 1.0], [0.5, 0.5, 1.0], [0.5, 0.5, 1.0]]))
    old = torch.log(torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1], [0.5, 0.5, 0.1], [0.9, 0.9, 0.1]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
    drift = math.log(0.9 / 0.5)  # the mean over the two completion tokens; the masked third does not count
    advantages = torch.tensor([-1.0, 1.0, -1.0, -1.0])
    keep = off_policy_sequence_mask(advantages, logps, old, mask, threshold=drift - 1e-3)
    assert keep.tolist() == [False, True, True, False]  # rows 0, 3 drifted and negative; 1 positive; 2 no drift
    assert off_policy_sequence_mask(advantages, logps, old, mask, threshold=drift + 1e-3).all()


def test_luspo_weights_each_sequences_mean_by_its_length():
    """LUSPO: sum over tokens of the per-token loss, divided by the number of sequences. On-policy (ratio 1) the
    per-token loss is -A, so the loss is -(sum_b A_b |y_b|) / B."""
    logps = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    advantages = torch.tensor([1.0, -2.0])
    out = grpo_loss(logps, None, advantages, mask, loss_type="luspo", importance_sampling_level="sequence")
    torch.testing.assert_close(out.total / out.count, torch.tensor(-(1.0 * 3 + (-2.0) * 1) / 2))
    grpo = grpo_loss(logps, None, advantages, mask, loss_type="grpo", importance_sampling_level="sequence")
    torch.testing.assert_close(grpo.total / grpo.count, torch.tensor(-(1.0 - 2.0) / 2))  # GSPO: lengths ignored
