"""Float64 oracle for the first DPO step of the side-by-side check (``compare.py check``).

Both libraries compute token log-probs in float32 (even for a float64 model), and a DPO reward is a small difference of
two sums of ~1000 such log-probs (-1200 vs -1200), so the two libraries' rewards agree only to ~1e-5 absolute. This
script computes the same batch (rows 0..B-1, the first batch under the check's sequential order) entirely in float64
with a full log-softmax, so each library's error can be measured against the exact value rather than against the other.

    .venv/bin/python benchmarks/dpo_oracle.py [--size small] [--batch_size 8]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.compare_data import data_file, model_dir

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--beta", type=float, default=0.1)
    a = p.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(model_dir(a.size, "causal-lm"))
    rows = [json.loads(line) for line in open(data_file("pref", a.examples))][: a.batch_size]
    policy = AutoModelForCausalLM.from_pretrained(model_dir(a.size, "causal-lm"), dtype=torch.float64).eval()
    ref = AutoModelForCausalLM.from_pretrained(model_dir(a.size, "causal-lm-ref"), dtype=torch.float64).eval()

    def logp(model, prompt, completion):
        p_ids = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        assert full[: len(p_ids)] == p_ids
        ids = torch.tensor([full])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double()
        lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        return lp[len(p_ids) - 1:].sum().item()

    out = {k: [] for k in ("pc", "pr", "rc", "rr")}
    for r in rows:
        out["pc"].append(logp(policy, r["prompt"], r["chosen"]))
        out["pr"].append(logp(policy, r["prompt"], r["rejected"]))
        out["rc"].append(logp(ref, r["prompt"], r["chosen"]))
        out["rr"].append(logp(ref, r["prompt"], r["rejected"]))
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
    rc, rr = a.beta * (t["pc"] - t["rc"]), a.beta * (t["pr"] - t["rr"])
    res = {
        "loss": (-torch.nn.functional.logsigmoid(rc - rr)).mean().item(),
        "rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
        "rewards/margins": (rc - rr).mean().item(), "rewards/accuracies": (rc > rr).double().mean().item(),
        "logps/chosen": t["pc"].mean().item(), "logps/rejected": t["pr"].mean().item(),
    }
    # the f-divergence variants' first-step losses (checks dpo-forward_kl, dpo-alpha_divergence): exp(-h) turns a
    # float32 error of 1e-4 in h into a relative error of 1e-4 in the loss, so these are compared with the exact value
    hw, hl = t["pc"] - t["rc"], t["pr"] - t["rr"]
    for name, score in (("forward_kl", lambda h: 1 - torch.exp(-h)),
                        ("alpha_divergence", lambda h: (torch.exp(-0.5 * h) - 1) / -0.5)):
        res[f"loss ({name})"] = (-torch.nn.functional.logsigmoid(a.beta * (score(hw) - score(hl)))).mean().item()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
