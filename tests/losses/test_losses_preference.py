"""Tests for posttrain.losses.preference.

Expected values are worked out from the papers' formulas with plain Python
``math`` on floats, never by calling the torch code under test.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from posttrain.losses import cpo as CPO
from posttrain.losses import kto as KTO
from posttrain.losses import preference as P

# --------------------------------------------------------------------------
# plain-float reference helpers
# --------------------------------------------------------------------------


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def close(actual: torch.Tensor, expected, tol=1e-9):
    exp = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == exp.shape, (actual.shape, exp.shape)
    assert torch.allclose(actual.double(), exp, rtol=tol, atol=tol), (actual.tolist(), expected)


# A small batch of summed log-probabilities.
C = [-10.0, -12.0, -7.5]  # policy chosen
R = [-11.0, -9.0, -8.0]  # policy rejected
RC = [-10.5, -11.0, -8.0]  # reference chosen
RR = [-10.0, -10.0, -7.0]  # reference rejected
HW = [c - rc for c, rc in zip(C, RC)]  # [0.5, -1.0, 0.5]
HL = [r - rr for r, rr in zip(R, RR)]  # [-1.0, 1.0, -1.0]
H = [w - l for w, l in zip(HW, HL)]  # [1.5, -2.0, 1.5]
BETA = 0.5


def run_dpo(loss_type, beta=BETA, **kw):
    return P.dpo_loss(t(C), t(R), t(RC), t(RR), beta=beta, loss_type=loss_type, **kw)


# --------------------------------------------------------------------------
# DPO family, one test per loss type
# --------------------------------------------------------------------------


def test_sigmoid_matches_formula_and_rewards():
    out = run_dpo("sigmoid")
    close(out.losses, [-logsig(BETA * h) for h in H])
    close(out.chosen_rewards, [BETA * x for x in HW])
    close(out.rejected_rewards, [BETA * x for x in HL])
    assert not out.chosen_rewards.requires_grad


def test_sigmoid_label_smoothing_is_conservative_dpo():
    eps = 0.2
    out = run_dpo("sigmoid", label_smoothing=eps)
    close(out.losses, [-(1 - eps) * logsig(BETA * h) - eps * logsig(-BETA * h) for h in H])
    # smoothing penalises over-confident margins: for a large margin the loss grows
    big = P.dpo_loss(t([0.0]), t([-100.0]), t([0.0]), t([0.0]), beta=1.0, label_smoothing=eps)
    plain = P.dpo_loss(t([0.0]), t([-100.0]), t([0.0]), t([0.0]), beta=1.0)
    assert big.losses.item() > 10 * plain.losses.item() + 1.0


def test_hinge():
    out = run_dpo("hinge")
    close(out.losses, [max(0.0, 1 - BETA * h) for h in H])


def test_ipo():
    out = run_dpo("ipo")
    close(out.losses, [(h - 1 / (2 * BETA)) ** 2 for h in H])


def test_exo_pair_default_epsilon_and_explicit():
    def exo(eps):
        res = []
        for h in H:
            z = BETA * h
            res.append(sig(z) * (logsig(z) - math.log(1 - eps)) + sig(-z) * (logsig(-z) - math.log(eps)))
        return res

    close(run_dpo("exo_pair").losses, exo(1e-3))  # label_smoothing=0 -> 1e-3
    close(run_dpo("exo_pair", label_smoothing=0.1).losses, exo(0.1))


def test_nca_pair():
    exp = [-logsig(BETA * w) - 0.5 * logsig(-BETA * w) - 0.5 * logsig(-BETA * l) for w, l in zip(HW, HL)]
    close(run_dpo("nca_pair").losses, exp)


def test_robust():
    eps = 0.1
    exp = [(-(1 - eps) * logsig(BETA * h) + eps * logsig(-BETA * h)) / (1 - 2 * eps) for h in H]
    close(run_dpo("robust", label_smoothing=eps).losses, exp)
    with pytest.raises(ValueError, match="robust"):
        run_dpo("robust", label_smoothing=0.5)


def test_bco_pair_uses_delta():
    delta = 0.25
    exp = [-logsig(BETA * w - delta) - logsig(-(BETA * l - delta)) for w, l in zip(HW, HL)]
    close(run_dpo("bco_pair", bco_delta=delta).losses, exp)
    close(run_dpo("bco_pair", bco_delta=torch.tensor(delta)).losses, exp)
    with pytest.raises(ValueError, match="bco_delta"):
        run_dpo("bco_pair")


def test_sppo_hard():
    exp = [(w - 0.5 / BETA) ** 2 + (l + 0.5 / BETA) ** 2 for w, l in zip(HW, HL)]
    close(run_dpo("sppo_hard").losses, exp)


def test_aot_paired_sorts_margins():
    # policy margins [3, -1], reference margins [-2, 2]: unsorted deltas would be [5, -3],
    # after sorting both sides the deltas are [-1 - -2, 3 - 2] = [1, 1].
    c, r = [3.0, -1.0], [0.0, 0.0]
    rc, rr = [-2.0, 2.0], [0.0, 0.0]
    beta = 1.0
    out = P.dpo_loss(t(c), t(r), t(rc), t(rr), beta=beta, loss_type="aot")
    close(out.losses, [-logsig(1.0), -logsig(1.0)])
    unsorted = [-logsig(5.0), -logsig(-3.0)]
    assert not torch.allclose(out.losses, torch.tensor(unsorted, dtype=torch.float64))
    # label smoothing enters like cDPO
    out = P.dpo_loss(t(c), t(r), t(rc), t(rr), beta=beta, loss_type="aot", label_smoothing=0.1)
    close(out.losses, [-0.9 * logsig(1.0) - 0.1 * logsig(-1.0)] * 2)


def test_aot_pair_sorts_chosen_and_rejected_logratios():
    # chosen log-ratios [0.5, -0.5, 2], rejected [1, -2, 0]
    c, rc = [0.5, -0.5, 2.0], [0.0, 0.0, 0.0]
    r, rr = [1.0, -2.0, 0.0], [0.0, 0.0, 0.0]
    beta = 0.5
    sorted_delta = [-0.5 - -2.0, 0.5 - 0.0, 2.0 - 1.0]  # [1.5, 0.5, 1.0]
    exp = [-logsig(beta * d) for d in sorted_delta]
    for name in ("aot_pair", "aot_unpaired"):
        out = P.dpo_loss(t(c), t(r), t(rc), t(rr), beta=beta, loss_type=name)
        close(out.losses, exp)
    unsorted = [-logsig(beta * (a - b)) for a, b in zip(c, r)]
    assert not torch.allclose(out.losses, torch.tensor(unsorted, dtype=torch.float64))


def test_apo_zero_and_apo_down():
    zero = [1 - sig(BETA * w) + sig(BETA * l) for w, l in zip(HW, HL)]
    down = [sig(BETA * w) + 1 - sig(BETA * (w - l)) for w, l in zip(HW, HL)]
    close(run_dpo("apo_zero").losses, zero)
    close(run_dpo("apo_down").losses, down)


def test_discopop():
    tau = 0.05
    exp = []
    for h in H:
        z = BETA * h
        m = sig(z / tau)
        exp.append((1 - m) * -logsig(z) + m * math.exp(-z))
    close(run_dpo("discopop").losses, exp)
    tau = 2.0
    exp = []
    for h in H:
        z = BETA * h
        m = sig(z / tau)
        exp.append((1 - m) * -logsig(z) + m * math.exp(-z))
    close(run_dpo("discopop", discopop_tau=tau).losses, exp)


def test_sft_is_chosen_nll():
    close(run_dpo("sft").losses, [-c for c in C])


# --------------------------------------------------------------------------
# f-divergences
# --------------------------------------------------------------------------


def test_f_divergence_logits():
    # u = pi / pi_ref = exp(h); the margin is f'(u_w) - f'(u_l)
    fwd = [math.exp(-l) - math.exp(-w) for w, l in zip(HW, HL)]  # f'(u) = -1/u
    js = [
        math.log(2 * math.exp(w) / (1 + math.exp(w))) - math.log(2 * math.exp(l) / (1 + math.exp(l)))
        for w, l in zip(HW, HL)
    ]

    def alpha_margin(a):  # f'(u) = (u^(a-1) - 1) / (a - 1): the f-DPO paper's alpha-divergence with alpha = 1 - a
        return [(math.exp(w) ** (a - 1) - math.exp(l) ** (a - 1)) / (a - 1) for w, l in zip(HW, HL)]

    close(run_dpo("sigmoid", f_divergence_type="reverse_kl").losses, [-logsig(BETA * h) for h in H])
    close(run_dpo("sigmoid", f_divergence_type="forward_kl").losses, [-logsig(BETA * x) for x in fwd])
    close(run_dpo("sigmoid", f_divergence_type="js_divergence").losses, [-logsig(BETA * x) for x in js])
    for a in (0.5, 0.3, 2.0):
        close(run_dpo("sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=a).losses,
              [-logsig(BETA * x) for x in alpha_margin(a)])
    # the default coefficient is 0.5 (where both conventions agree); a = 1 is reverse KL, a = 0 forward KL, and the
    # f-divergence reaches the other margin losses
    close(run_dpo("sigmoid", f_divergence_type="alpha_divergence").losses, [-logsig(BETA * x) for x in alpha_margin(0.5)])
    close(run_dpo("sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0).losses,
          [-logsig(BETA * h) for h in H])
    close(run_dpo("hinge", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.0).losses,
          [max(0.0, 1 - BETA * x) for x in fwd])
    # large ratios stay finite
    out = P.dpo_loss(t([0.0]), t([-2000.0]), t([0.0]), t([0.0]), f_divergence_type="forward_kl")
    assert torch.isfinite(out.losses).all()


def test_f_divergence_is_refused_for_losses_on_the_log_ratios():
    for loss in ("nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero"):
        with pytest.raises(ValueError, match="reverse_kl"):
            run_dpo(loss, f_divergence_type="js_divergence", bco_delta=0.0)
    run_dpo(["sigmoid", "sft"], f_divergence_type="js_divergence")  # sft may come along


NW, NL = [4, 10, 2], [5, 3, 8]  # completion lengths (tokens)


def test_ipo_and_sigmoid_norm_on_per_token_scores():
    per_token = [w / nw - l / nl for w, l, nw, nl in zip(HW, HL, NW, NL)]
    lengths = dict(chosen_lengths=t(NW), rejected_lengths=t(NL))
    out = run_dpo("ipo", **lengths)
    close(out.losses, [(m - 1 / (2 * BETA)) ** 2 for m in per_token])
    close(out.chosen_rewards, [BETA * x for x in HW])  # the rewards stay the summed log-ratios
    close(run_dpo("sigmoid_norm", **lengths).losses, [-logsig(BETA * m) for m in per_token])
    # integer counts, and a zero count taken as 1
    out = run_dpo("sigmoid_norm", chosen_lengths=torch.tensor([4, 0, 2]), rejected_lengths=torch.tensor(NL))
    close(out.losses, [-logsig(BETA * (w / max(nw, 1) - l / nl)) for w, l, nw, nl in zip(HW, HL, [4, 0, 2], NL)])
    # per-side f-divergence scores, each divided by its own length: forward KL's score is 1 - 1/u
    fwd_tok = [(1 - math.exp(-w)) / nw - (1 - math.exp(-l)) / nl for w, l, nw, nl in zip(HW, HL, NW, NL)]
    close(run_dpo("ipo", f_divergence_type="forward_kl", **lengths).losses,
          [(m - 1 / (2 * BETA)) ** 2 for m in fwd_tok])
    with pytest.raises(ValueError, match="sigmoid_norm"):
        run_dpo("sigmoid_norm")
    with pytest.raises(ValueError, match="both"):
        run_dpo("ipo", chosen_lengths=t(NW))


def test_sft_with_lengths_is_the_token_mean_nll():
    nll = -sum(C) / sum(NW)
    close(run_dpo("sft", chosen_lengths=t(NW), rejected_lengths=t(NL)).losses, [nll] * 3)
    sig_l = [-logsig(BETA * h) for h in H]
    out = run_dpo(["sigmoid", "sft"], loss_weights=[1.0, 0.5], chosen_lengths=t(NW), rejected_lengths=t(NL))
    close(out.losses, [a + 0.5 * nll for a in sig_l])


# --------------------------------------------------------------------------
# options shared by all DPO types
# --------------------------------------------------------------------------


def test_reference_free_ignores_reference():
    a = P.dpo_loss(t(C), t(R), None, None, beta=BETA, reference_free=True)
    b = P.dpo_loss(t(C), t(R), t([123.0, -4.0, 9.0]), t([7.0, 7.0, -70.0]), beta=BETA, reference_free=True)
    exp = [-logsig(BETA * (c - r)) for c, r in zip(C, R)]
    for out in (a, b):
        close(out.losses, exp)
        close(out.chosen_rewards, [BETA * c for c in C])
        close(out.rejected_rewards, [BETA * r for r in R])
    # per-side losses also use the reference-free log-ratios
    out = P.dpo_loss(t(C), t(R), t(RC), t(RR), beta=BETA, loss_type="apo_zero", reference_free=True)
    close(out.losses, [1 - sig(BETA * c) + sig(BETA * r) for c, r in zip(C, R)])
    with pytest.raises(ValueError, match="reference"):
        P.dpo_loss(t(C), t(R), None, None)


def test_multiple_loss_types_are_weighted_sum():
    delta = 0.1
    sig_l = [-logsig(BETA * h) for h in H]
    bco_l = [-logsig(BETA * w - delta) - logsig(-(BETA * l - delta)) for w, l in zip(HW, HL)]
    sft_l = [-c for c in C]
    out = run_dpo(["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], bco_delta=delta)
    close(out.losses, [0.8 * a + 0.2 * b + c for a, b, c in zip(sig_l, bco_l, sft_l)])
    out = run_dpo(["sigmoid", "sft"])
    close(out.losses, [a + c for a, c in zip(sig_l, sft_l)])
    with pytest.raises(ValueError, match="loss_weights"):
        run_dpo(["sigmoid", "sft"], loss_weights=[1.0])


def test_per_pair_weights_multiply_losses():
    w = [0.5, 1.0, 0.25]
    out = run_dpo("sigmoid", weights=t(w))
    close(out.losses, [wi * -logsig(BETA * h) for wi, h in zip(w, H)])


def test_dpo_implicit_rewards():
    cr, rr = P.dpo_implicit_rewards(t(C), t(R), t(RC), t(RR), beta=BETA)
    close(cr, [BETA * x for x in HW])
    close(rr, [BETA * x for x in HL])
    cr, rr = P.dpo_implicit_rewards(t(C), t(R), None, None, beta=BETA, reference_free=True)
    close(cr, [BETA * x for x in C])


def test_unknown_names_raise_with_valid_names():
    with pytest.raises(ValueError) as e:
        run_dpo("kto_pair")
    msg = str(e.value)
    for name in P.DPO_LOSS_TYPES:
        assert name in msg
    with pytest.raises(ValueError, match="sigmoid"):
        run_dpo(["sigmoid", "nope"])
    with pytest.raises(ValueError) as e:
        run_dpo("sigmoid", f_divergence_type="hellinger")
    assert all(name in str(e.value) for name in P.F_DIVERGENCE_TYPES)
    with pytest.raises(ValueError) as e:
        CPO.cpo_loss(t(C), t(R), loss_type="dpo")
    assert all(name in str(e.value) for name in CPO.CPO_LOSS_TYPES)
    with pytest.raises(ValueError) as e:
        KTO.kto_loss(t(C), t(RC), [True, False, True], loss_type="bco")
    assert all(name in str(e.value) for name in KTO.KTO_LOSS_TYPES)


def test_shape_validation():
    with pytest.raises(ValueError, match="1-D"):
        P.dpo_loss(t([[1.0]]), t([[1.0]]), t([[1.0]]), t([[1.0]]))
    with pytest.raises(ValueError, match="shape"):
        P.dpo_loss(t([1.0, 2.0]), t([1.0]), t([1.0]), t([1.0]))


def test_dpo_gradients_flow_and_match_analytic():
    c = t(C, grad=True)
    r = t(R, grad=True)
    out = P.dpo_loss(c, r, t(RC), t(RR), beta=BETA)
    out.losses.sum().backward()
    # d/dc [-log sig(beta*h)] = -beta * sig(-beta*h); d/dr is the negative
    close(c.grad, [-BETA * sig(-BETA * h) for h in H])
    close(r.grad, [BETA * sig(-BETA * h) for h in H])
    for name in P.DPO_LOSS_TYPES:
        c = t(C, grad=True)
        out = P.dpo_loss(c, t(R), t(RC), t(RR), beta=BETA, loss_type=name, bco_delta=0.0, chosen_lengths=t(NW),
                         rejected_lengths=t(NL))
        out.losses.mean().backward()
        assert c.grad is not None and torch.isfinite(c.grad).all(), name


# --------------------------------------------------------------------------
# CPO / SimPO / AlphaPO
# --------------------------------------------------------------------------


# length-averaged log-probs for the SimPO-style losses
AC = [-0.8, -1.5, -0.3]
AR = [-1.2, -1.0, -0.9]


def test_cpo_sigmoid_hinge_ipo():
    beta = 0.1
    m = [c - r for c, r in zip(C, R)]
    close(CPO.cpo_loss(t(C), t(R), beta=beta).losses, [-logsig(beta * x) for x in m])
    close(
        CPO.cpo_loss(t(C), t(R), beta=beta, label_smoothing=0.1).losses,
        [-0.9 * logsig(beta * x) - 0.1 * logsig(-beta * x) for x in m],
    )
    close(CPO.cpo_loss(t(C), t(R), beta=beta, loss_type="hinge").losses, [max(0.0, 1 - beta * x) for x in m])
    close(CPO.cpo_loss(t(C), t(R), beta=beta, loss_type="ipo").losses, [(x - 1 / (2 * beta)) ** 2 for x in m])
    out = CPO.cpo_loss(t(C), t(R), beta=beta)
    close(out.chosen_rewards, [beta * c for c in C])
    close(out.rejected_rewards, [beta * r for r in R])


def test_simpo():
    beta, gamma = 2.0, 0.5
    out = CPO.cpo_loss(t(AC), t(AR), beta=beta, loss_type="simpo", simpo_gamma=gamma)
    close(out.losses, [-logsig(beta * (c - r) - gamma) for c, r in zip(AC, AR)])


def test_alphapo():
    beta, gamma, alpha = 2.0, 0.5, 0.25

    def reward(avg_logp):
        p = math.exp(avg_logp)
        return (1 - p ** (-alpha)) / alpha

    out = CPO.cpo_loss(t(AC), t(AR), beta=beta, loss_type="alphapo", simpo_gamma=gamma, alpha=alpha)
    close(out.losses, [-logsig(beta * (reward(c) - reward(r)) - gamma) for c, r in zip(AC, AR)])
    close(out.chosen_rewards, [beta * reward(c) for c in AC])
    # alpha -> 0 recovers SimPO
    tiny = CPO.cpo_loss(t(AC), t(AR), beta=beta, loss_type="alphapo", simpo_gamma=gamma, alpha=1e-7)
    simpo = CPO.cpo_loss(t(AC), t(AR), beta=beta, loss_type="simpo", simpo_gamma=gamma)
    assert torch.allclose(tiny.losses, simpo.losses, atol=1e-6)
    c = t(AC, grad=True)
    CPO.cpo_loss(c, t(AR), loss_type="alphapo", alpha=alpha).losses.sum().backward()
    assert torch.isfinite(c.grad).all()


# --------------------------------------------------------------------------
# ORPO
# --------------------------------------------------------------------------


def _orpo_ref(c, r, beta):
    def log1mexp(x):  # log(1 - e^x), plain math
        return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))

    lo = (c - r) - (log1mexp(c) - log1mexp(r))
    return -beta * logsig(lo), lo


def test_orpo_matches_formula_and_metrics():
    beta = 0.1
    exp = [_orpo_ref(c, r, beta) for c, r in zip(AC, AR)]
    out = CPO.orpo_loss(t(AC), t(AR), beta=beta)
    close(out.losses, [e[0] for e in exp])
    close(out.chosen_rewards, [beta * c for c in AC])
    close(out.rejected_rewards, [beta * r for r in AR])
    los = [e[1] for e in exp]
    assert out.log_odds_chosen.item() == pytest.approx(sum(los) / len(los), rel=1e-12)
    assert out.log_odds_ratio.item() == pytest.approx(sum(logsig(x) for x in los) / len(los), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_orpo_numerically_stable_near_zero_and_very_negative(dtype):
    c_vals, r_vals = [-1e-6, -50.0, -1e-6], [-50.0, -1e-6, -3.0]
    c = t(c_vals, dtype=dtype, grad=True)
    r = t(r_vals, dtype=dtype, grad=True)
    out = CPO.orpo_loss(c, r, beta=1.0)
    assert torch.isfinite(out.losses).all()
    exp_lo = [_orpo_ref(a, b, 1.0)[1] for a, b in zip(c_vals, r_vals)]
    # log odds of -1e-6: 1e-6 * (1 - ...) -> log(1 - e^-1e-6) = -13.8155..., well resolved in float32 too
    got_lo = CPO.orpo_loss(t(c_vals, dtype=dtype), t(r_vals, dtype=dtype), beta=1.0).log_odds_chosen.item()
    assert got_lo == pytest.approx(sum(exp_lo) / 3, rel=1e-5)
    close(out.losses, [_orpo_ref(a, b, 1.0)[0] for a, b in zip(c_vals, r_vals)], tol=1e-5)
    out.losses.sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    # logp == 0 exactly (p = 1) stays finite too
    z = CPO.orpo_loss(t([0.0], dtype=dtype, grad=True), t([-1.0], dtype=dtype), beta=1.0)
    assert torch.isfinite(z.losses).all()


# --------------------------------------------------------------------------
# KTO
# --------------------------------------------------------------------------


POL = [-5.0, -7.0, -4.0, -9.0]
REF = [-5.5, -6.0, -4.5, -8.0]
LAB = [True, False, True, False]


def test_kto_loss():
    beta, kl, wd, wu = 0.5, 0.3, 1.0, 1.5
    h = [p - r for p, r in zip(POL, REF)]  # [0.5, -1, 0.5, -1]
    exp = [wd * (1 - sig(beta * (x - kl))) if y else wu * (1 - sig(beta * (kl - x))) for x, y in zip(h, LAB)]
    kl_t = torch.tensor(kl, dtype=torch.float64)
    out = KTO.kto_loss(t(POL), t(REF), torch.tensor(LAB), kl_t, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    close(out.losses, exp)
    close(out.rewards, [beta * x for x in h])
    close(out.chosen_rewards, [beta * h[0], beta * h[2]])
    close(out.rejected_rewards, [beta * h[1], beta * h[3]])
    # negative KL estimates are clamped at zero; None means zero
    neg = KTO.kto_loss(t(POL), t(REF), LAB, torch.tensor(-2.0), beta=beta)
    none = KTO.kto_loss(t(POL), t(REF), LAB, None, beta=beta)
    exp0 = [1 - sig(beta * x) if y else 1 - sig(-beta * x) for x, y in zip(h, LAB)]
    close(neg.losses, exp0)
    close(none.losses, exp0)
    p = t(POL, grad=True)
    KTO.kto_loss(p, t(REF), LAB, 0.3).losses.mean().backward()
    assert torch.isfinite(p.grad).all() and (p.grad != 0).all()


def test_kto_apo_zero_unpaired():
    beta = 0.5
    h = [p - r for p, r in zip(POL, REF)]
    exp = [1 - sig(beta * x) if y else sig(beta * x) for x, y in zip(h, LAB)]
    out = KTO.kto_loss(t(POL), t(REF), LAB, torch.tensor(5.0), beta=beta, loss_type="apo_zero_unpaired")
    close(out.losses, exp)


def test_kto_kl_estimate():
    pol, ref = [-3.0, -4.0, -2.0], [-3.5, -3.0, -2.2]
    mean = sum(p - r for p, r in zip(pol, ref)) / 3  # (0.5 - 1 + 0.2)/3 < 0
    assert mean < 0
    assert KTO.kto_kl_estimate(t(pol), t(ref)).item() == 0.0
    assert KTO.kto_kl_estimate(t(pol), t(ref), clamp=False).item() == pytest.approx(mean)
    pos = KTO.kto_kl_estimate(t([-1.0, -2.0], grad=True), t([-2.0, -2.5]))
    assert pos.item() == pytest.approx(0.75)
    assert not pos.requires_grad and pos.dim() == 0


# --------------------------------------------------------------------------
# BCO
# --------------------------------------------------------------------------


def test_bco_loss_and_udm_weights():
    beta, delta = 0.5, 0.1
    r = [beta * (p - q) for p, q in zip(POL, REF)]
    exp = [-logsig(x - delta) if y else -logsig(-(x - delta)) for x, y in zip(r, LAB)]
    out = KTO.bco_loss(t(POL), t(REF), LAB, beta=beta, delta=delta)
    close(out.losses, exp)
    close(out.rewards, r)
    udm = [9.0, 2.0, 9.0, 0.5]  # ignored at desirable positions
    out = KTO.bco_loss(t(POL), t(REF), LAB, beta=beta, delta=torch.tensor(delta), udm_weights=t(udm))
    close(out.losses, [e if y else w * e for e, w, y in zip(exp, udm, LAB)])
    p = t(POL, grad=True)
    KTO.bco_loss(p, t(REF), LAB, beta=beta, delta=delta).losses.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_udm_density_ratio():
    probs = [0.5, 0.9, 0.1, 0.99]
    exp = [min(max(p / (1 - p), 0.5), 10.0) for p in probs]
    close(KTO.udm_density_ratio(t(probs)), exp)


def test_running_mean_update_rule():
    rm = KTO.RunningMean()
    assert rm.update(1.0) == pytest.approx(1.0)
    assert rm.update(torch.tensor(3.0)) == pytest.approx(2.0)
    rm.update(torch.tensor([4.0, 6.0]))
    seen = [1.0, 3.0, 4.0, 6.0]
    assert rm.mean == pytest.approx(statistics.fmean(seen))
    assert rm.count == 4
    assert rm.var == pytest.approx(statistics.pvariance(seen))
    assert rm.std == pytest.approx(statistics.stdev(seen))
    state = rm.state_dict()
    rm2 = KTO.RunningMean()
    rm2.load_state_dict(state)
    assert rm2.mean == rm.mean and rm2.count == rm.count
    # typical BCO step: update with the batch-mean reward, then use the mean as delta
    rm3 = KTO.RunningMean()
    cr, rr = P.dpo_implicit_rewards(t(C), t(R), t(RC), t(RR), beta=BETA)
    rm3.update(torch.cat([cr, rr]).mean())
    batch_mean = BETA * (sum(HW) + sum(HL)) / 6
    assert rm3.mean == pytest.approx(batch_mean)


# --------------------------------------------------------------------------
# LD-DPO and WPO helpers
# --------------------------------------------------------------------------


def test_ld_dpo_logps_downweights_tail_beyond_public_length():
    # row 0: left padded, completion of 3 tokens; row 1: right padded, 2 tokens
    ptl_c = t([[9.0, -1.0, -2.0, -3.0], [-0.5, -0.25, 9.0, 9.0]])
    mask_c = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    ptl_r = t([[-1.0, -1.0, 0.0, 0.0], [-1.0, -2.0, -3.0, -4.0]])
    mask_r = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    a = 0.5
    # public lengths: min(3, 2) = 2, min(2, 4) = 2
    exp_c = [-1.0 + -2.0 + a * -3.0, -0.5 + -0.25]
    exp_r = [-2.0, -1.0 + -2.0 + a * (-3.0 + -4.0)]
    lc, lr = P.ld_dpo_pair_logps(ptl_c, mask_c, ptl_r, mask_r, a)
    close(lc, exp_c)
    close(lr, exp_r)
    # ld_alpha = 1 is the plain masked sum
    lc1, _ = P.ld_dpo_pair_logps(ptl_c, mask_c, ptl_r, mask_r, 1.0)
    close(lc1, [-6.0, -0.75])


def test_wpo_weights_from_token_level_inputs():
    # one sequence per side, 2 completion tokens (+1 padded), vocab of 3
    logits_c = [[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]]
    tok_c = [1, 2, 0]
    mask_c = [1, 1, 0]
    logits_r = [[0.3, -1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    tok_r = [0, 1, 2]
    mask_r = [1, 1, 1]

    def seq_log_weight(logits, toks, mask):
        total, n = 0.0, 0
        for row, tok, m in zip(logits, toks, mask):
            if not m:
                continue
            zs = [math.exp(v) for v in row]
            probs = [z / sum(zs) for z in zs]
            total += math.log(probs[tok]) - math.log(sum(p * p for p in probs))
            n += 1
        return total / n

    def token_inputs(logits, toks):
        lg = t([logits])
        logp = torch.log_softmax(lg, -1).gather(-1, torch.tensor([toks]).unsqueeze(-1)).squeeze(-1)
        return logp, P.log_sum_squared_probs(lg)

    lp_c, lss_c = token_inputs(logits_c, tok_c)
    lp_r, lss_r = token_inputs(logits_r, tok_r)
    # log sum p^2 helper against plain math
    zs = [math.exp(v) for v in logits_c[0]]
    assert lss_c[0, 0].item() == pytest.approx(math.log(sum((z / sum(zs)) ** 2 for z in zs)))

    lw_c = seq_log_weight(logits_c, tok_c, mask_c)
    lw_r = seq_log_weight(logits_r, tok_r, mask_r)
    close(P.wpo_log_weights(lp_c, lss_c, torch.tensor([mask_c])), [lw_c])
    w = P.wpo_weights(lp_c, lss_c, torch.tensor([mask_c]), lp_r, lss_r, torch.tensor([mask_r]), max_weight=None)
    close(w, [math.exp(lw_c + lw_r)])
    w1 = P.wpo_weights(lp_c, lss_c, torch.tensor([mask_c]), lp_r, lss_r, torch.tensor([mask_r]))
    close(w1, [min(1.0, math.exp(lw_c + lw_r))])
    assert not w1.requires_grad


def test_public_losses_have_paper_docstrings():
    for name in (
        "dpo_loss",
        "cpo_loss",
        "orpo_loss",
        "kto_loss",
        "kto_kl_estimate",
        "bco_loss",
        "ld_dpo_logps",
        "ld_dpo_pair_logps",
        "wpo_log_weights",
        "wpo_weights",
        "udm_density_ratio",
        "dpo_implicit_rewards",
    ):
        module = next(m for m in (P, CPO, KTO) if hasattr(m, name))
        first = getattr(module, name).__doc__.strip().splitlines()[0]
        assert "20" in first and "—" in first, (name, first)
