"""Tests for posttrain.losses.distill (GKD) and posttrain.losses.online_preference (Nash-MD, XPO) against values
worked out with plain Python math."""

import math

import pytest
import torch

from posttrain.losses.distill import generalized_jsd_loss
from posttrain.losses.online_preference import geometric_mixture_logits, nash_md_loss, xpo_loss


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(a, b, tol=1e-10):
    a = a.item() if isinstance(a, torch.Tensor) else a
    assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), (a, b)


def softmax(zs, temp=1.0):
    ex = [math.exp(z / temp) for z in zs]
    s = sum(ex)
    return [e / s for e in ex]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def jsd(p_teacher, q_student, beta):
    m = [beta * a + (1 - beta) * b for a, b in zip(p_teacher, q_student)]
    return beta * kl(p_teacher, m) + (1 - beta) * kl(q_student, m)


# (B=1, T=2, V=3) hand-made logits
S = [[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]]
TCH = [[[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]]]


def per_token(beta, temp=1.0):
    out = []
    for j in range(2):
        p = softmax(TCH[0][j], temp)
        q = softmax(S[0][j], temp)
        if beta == 0:
            out.append(kl(p, q))  # forward KL(teacher || student)
        elif beta == 1:
            out.append(kl(q, p))  # reverse KL(student || teacher)
        else:
            out.append(jsd(p, q, beta))
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.3])
def test_generalized_jsd_against_hand_values(beta):
    got = generalized_jsd_loss(t(S), t(TCH), beta=beta)  # batchmean over B*T = 2 positions
    d = per_token(beta)
    close(got, sum(d) / 2)
    close(generalized_jsd_loss(t(S), t(TCH), beta=beta, reduction="sum"), sum(d))
    close(generalized_jsd_loss(t(S), t(TCH), beta=beta, reduction="mean"), sum(d) / (2 * 3))
    none = generalized_jsd_loss(t(S), t(TCH), beta=beta, reduction="none")
    assert none.shape == (1, 2)
    close(none[0, 0], d[0])
    close(none[0, 1], d[1])


def test_jsd_endpoints_are_the_plain_kls_and_mapping():
    p = softmax(TCH[0][0])
    q = softmax(S[0][0])
    f = generalized_jsd_loss(t(S)[:, :1], t(TCH)[:, :1], beta=0.0)
    r = generalized_jsd_loss(t(S)[:, :1], t(TCH)[:, :1], beta=1.0)
    close(f, kl(p, q))
    close(r, kl(q, p))
    assert abs(kl(p, q) - kl(q, p)) > 1e-3  # the two directions really differ here
    # beta = 0.3 weights the teacher by 0.3 in the mixture (not the student)
    close(generalized_jsd_loss(t(S)[:, :1], t(TCH)[:, :1], beta=0.3), jsd(p, q, 0.3))
    assert abs(jsd(p, q, 0.3) - jsd(q, p, 0.3)) > 1e-4
    # symmetric JSD at beta=0.5
    close(jsd(p, q, 0.5), jsd(q, p, 0.5))


def test_jsd_temperature_scaling():
    for beta in (0.0, 0.5, 1.0):
        d = per_token(beta, temp=2.0)
        close(generalized_jsd_loss(t(S), t(TCH), beta=beta, temperature=2.0), sum(d) / 2)
    # temperature is applied to logits (not probabilities): equals scaling logits by hand
    a = generalized_jsd_loss(t(S), t(TCH), beta=0.5, temperature=2.0)
    b = generalized_jsd_loss(t(S) / 2, t(TCH) / 2, beta=0.5)
    close(a, b.item())


def test_jsd_masking_labels_and_mask():
    d = per_token(0.5)
    labels = torch.tensor([[5, -100]])
    close(generalized_jsd_loss(t(S), t(TCH), labels, beta=0.5), d[0])
    close(generalized_jsd_loss(t(S), t(TCH), mask=t([[0, 1]]), beta=0.5), d[1])
    close(generalized_jsd_loss(t(S), t(TCH), labels, beta=0.5, reduction="mean"), d[0] / 3)
    none = generalized_jsd_loss(t(S), t(TCH), labels, beta=0.5, reduction="none")
    assert none[0, 1].item() == 0.0
    # padded positions may hold garbage
    s = t(S).clone()
    s[0, 1] = float("nan")
    close(generalized_jsd_loss(s, t(TCH), labels, beta=0.5), d[0])


def test_jsd_no_nan_with_zero_probabilities():
    s = t([[[0.0, 1.0, float("-inf")]]])
    te = t([[[2.0, 0.0, float("-inf")]]])
    p = softmax([2.0, 0.0])
    q = softmax([0.0, 1.0])
    for beta, expected in [(0.0, kl(p, q)), (1.0, kl(q, p)), (0.5, jsd(p, q, 0.5))]:
        v = generalized_jsd_loss(s, te, beta=beta)
        assert torch.isfinite(v)
        close(v, expected)
    for beta in (0.0, 0.5, 1.0):
        st = s.clone().requires_grad_(True)
        tt = te.clone().requires_grad_(True)
        generalized_jsd_loss(st, tt, beta=beta).backward()
        assert torch.isfinite(st.grad).all() and torch.isfinite(tt.grad).all()


def test_jsd_gradient_and_argument_checks():
    s = t(S).requires_grad_(True)
    generalized_jsd_loss(s, t(TCH), beta=0.5).backward()
    assert s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        generalized_jsd_loss(t(S), t(TCH), beta=1.5)
    with pytest.raises(ValueError):
        generalized_jsd_loss(t(S), t(TCH), reduction="avg")


def test_geometric_mixture_logits():
    pol = [1.0, 0.0, -2.0]
    ref = [0.0, 3.0, 1.0]
    c = 0.25
    p = softmax(pol)
    q = softmax(ref)
    un = [pi ** (1 - c) * qi**c for pi, qi in zip(p, q)]
    z = sum(un)
    expected = [math.log(u / z) for u in un]
    got = geometric_mixture_logits(t([pol]), t([ref]), c)
    for a, b in zip(got[0].tolist(), expected):
        close(a, b)
    close(torch.logsumexp(got, -1)[0], 0.0)  # normalised
    # endpoints
    assert torch.allclose(geometric_mixture_logits(t([pol]), t([ref]), 0.0), torch.log_softmax(t([pol]), -1))
    assert torch.allclose(geometric_mixture_logits(t([pol]), t([ref]), 1.0), torch.log_softmax(t([ref]), -1))
    # mixing raw logits gives the same normalised distribution
    raw = torch.log_softmax((1 - c) * t([pol]) + c * t([ref]), -1)
    assert torch.allclose(got, raw)


def test_nash_md_loss_sequence_level():
    logps = [-3.0, -5.0]
    refs = [-3.5, -4.0]
    probs = [0.9, 0.2]
    beta = 0.1
    x = t(logps).requires_grad_(True)
    out = nash_md_loss(x, t(refs), t(probs), beta=beta)
    scores = [(p - 0.5) * lp for p, lp in zip(probs, logps)]
    kls = [lp - r for lp, r in zip(logps, refs)]
    expected = sum(beta * k * lp - s for k, lp, s in zip(kls, logps, scores)) / 2
    close(out.loss, expected)
    close(out.metrics["loss/score"], sum(scores) / 2)
    close(out.metrics["loss/kl"], sum(kls) / 2)
    out.loss.backward()
    # REINFORCE: d/dlogp = (beta * stopgrad(kl) - (P - 0.5)) / B
    for i in range(2):
        close(x.grad[i], (beta * kls[i] - (probs[i] - 0.5)) / 2)


def test_nash_md_loss_token_level_with_mask():
    logp = [[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]]
    ref = [[-1.5, -1.0, 3.0], [-0.4, -0.7, -0.2]]
    mask = [[1, 1, 0], [1, 1, 1]]
    probs = [0.7, 0.4]
    beta = 0.2
    out = nash_md_loss(t(logp), t(ref), t(probs), beta=beta, mask=t(mask))
    losses, scores, kls = [], [], []
    for b in range(2):
        idx = [j for j in range(3) if mask[b][j]]
        s = (probs[b] - 0.5) * sum(logp[b][j] for j in idx)
        k_term = sum((logp[b][j] - ref[b][j]) * logp[b][j] for j in idx)
        kls.append(sum(logp[b][j] - ref[b][j] for j in idx))
        scores.append(s)
        losses.append(beta * k_term - s)
    close(out.loss, sum(losses) / 2)
    for b in range(2):
        close(out.score[b], scores[b])
        close(out.kl[b], kls[b])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_xpo_loss_terms(loss_type):
    ch, rj = [-2.0, -4.0], [-3.0, -1.0]
    rch, rrj = [-2.5, -3.5], [-2.0, -1.5]
    refcomp = [-6.0, -8.0]
    beta, alpha = 0.1, 1e-2
    out = xpo_loss(t(ch), t(rj), t(rch), t(rrj), t(refcomp), beta=beta, alpha=alpha, loss_type=loss_type)
    dpo = []
    for i in range(2):
        h = (ch[i] - rch[i]) - (rj[i] - rrj[i])
        if loss_type == "sigmoid":
            dpo.append(-math.log(1 / (1 + math.exp(-beta * h))))
        else:
            dpo.append((h - 1 / (2 * beta)) ** 2)
    xpo = [alpha * v for v in refcomp]
    close(out.loss, (sum(dpo) + sum(xpo)) / 2)
    close(out.metrics["loss/dpo"], sum(dpo) / 2)
    close(out.metrics["loss/xpo"], sum(xpo) / 2)
    close(out.chosen_rewards[0], beta * (ch[0] - rch[0]))
    close(out.rejected_rewards[1], beta * (rj[1] - rrj[1]))
    # exploration term sign: increasing the policy's log-prob of the reference completion raises the loss
    x = t(refcomp).requires_grad_(True)
    xpo_loss(t(ch), t(rj), t(rch), t(rrj), x, beta=beta, alpha=alpha, loss_type=loss_type).loss.backward()
    assert torch.allclose(x.grad, torch.full_like(x, alpha / 2))
    with pytest.raises(ValueError):
        xpo_loss(t(ch), t(rj), t(rch), t(rrj), x, beta=beta, alpha=alpha, loss_type="hinge")


def test_elementwise_terms_sum_to_each_positions_divergence_and_trls_static_method_reduces_like_trl():
    from posttrain.trainers.gkd import GKDTrainer

    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [3, 4, -100]])
    for beta in (0.0, 0.3, 1.0):
        terms = generalized_jsd_loss(s, t, labels, beta=beta, reduction="none", elementwise=True)
        assert terms.shape == (2, 3, 5)
        torch.testing.assert_close(terms.sum(-1), generalized_jsd_loss(s, t, labels, beta=beta, reduction="none"))
    trl_none = GKDTrainer.generalized_jsd_loss(s, t, labels, beta=0.3, reduction="none")
    assert trl_none.shape == (4, 5)  # the kept positions' rows
    total = generalized_jsd_loss(s, t, labels, beta=0.3, reduction="sum")
    torch.testing.assert_close(GKDTrainer.generalized_jsd_loss(s, t, labels, beta=0.3, num_items_in_batch=8), total / 8)
    torch.testing.assert_close(GKDTrainer.generalized_jsd_loss(s, t, labels, beta=0.3), total / 4)
