"""Inputs shared by posttrain and the peer (TRL) in the side-by-side benchmarks: model folders and data files.

Built once, with posttrain's venv (the kit lives in posttrain), and written to disk so that both libraries
load *the same bytes*: a saved model folder (weights + tokenizer) and a JSON-lines dataset per scenario.

* SFT data: conversations of 1-3 turns with log-normal lengths (``benchmarks.common.chat_dataset``).
* Preference data (DPO, reward modeling): a one-turn conversational prompt and two assistant answers of
  independent log-normal lengths. Lengths are capped so that no row is truncated or dropped under either
  library's default limits (prompt <= ~400 tokens, prompt + answer <= ~1000 tokens), so both see the same tokens.
* Distillation data (GKD): each preference row's prompt and chosen answer as one ``messages`` conversation.
* Vision-language SFT: the kit's tiny Llava (``build_tiny_vlm``: CLIP vision tower + the kit qwen2 of the size) and
  the kit's ``colors`` task (prompt-completion conversations with one image each) as a parquet file (images cannot
  go into JSON lines).
* Diffusion (DDPO, AlignProp): the kit's tiny Stable Diffusion pipeline folder (``build_tiny_diffusion``; one size).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "compare"


def _text(rng: random.Random, words: int) -> str:
    from posttrain.kit.corpus import plain_sentence

    out: list[str] = []
    n = 0
    while n < words:
        s = plain_sentence(rng)
        out.append(s)
        n += len(s.split())
    return " ".join(out)


def preference_rows(n: int, seed: int = 0, mean_words: float = 60.0, max_prompt_words: int = 120,
                    max_answer_words: int = 220) -> list[dict]:
    """Conversational explicit-prompt preference rows: ``prompt`` (user message), ``chosen``/``rejected`` (assistant)."""
    rng = random.Random(seed)

    def words(mean: float, sigma: float, cap: int) -> int:
        return min(cap, max(3, int(rng.lognormvariate(0, sigma) * mean)))

    rows = []
    for _ in range(n):
        prompt = [{"role": "user", "content": _text(rng, words(mean_words / 2, 0.8, max_prompt_words))}]
        chosen = [{"role": "assistant", "content": _text(rng, words(mean_words, 0.7, max_answer_words))}]
        rejected = [{"role": "assistant", "content": _text(rng, words(mean_words, 0.7, max_answer_words))}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    from benchmarks.common import chat_dataset

    return chat_dataset(n, seed=seed).to_list()


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)
    return path


def model_dir(size: str, head: str) -> Path:
    return OUT / "models" / f"qwen2-{size}-{head}"


def data_file(kind: str, n: int, suffix: str = ".jsonl") -> Path:
    return OUT / "data" / f"{kind}-{n}{suffix}"


def vlm_dir(size: str) -> Path:
    return OUT / "models" / f"llava-{size}"


def diffusion_dir() -> Path:
    return OUT / "models" / "tiny-sd"


def prepare_vision(size: str, n: int) -> dict[str, str]:
    """The tiny Llava folder (model + processor) and ``n`` rows of the kit's colors task (parquet); built when missing."""
    from posttrain.kit import make_dataset, write_dataset
    from posttrain.kit.models import build_tiny_vlm

    d = vlm_dir(size)
    if not (d / "config.json").exists():
        build_tiny_vlm(size=size, seed=0, output_dir=d)
    f = data_file("colors", n, ".parquet")
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(make_dataset("colors", "prompt_completion", n=n, seed=0, conversational=True), f)
    return {"vlm": str(d), "colors_data": str(f)}


def prepare_diffusion() -> dict[str, str]:
    """The kit's tiny Stable Diffusion pipeline folder (seed 0); built when missing."""
    from posttrain.kit.diffusion import build_tiny_diffusion

    d = diffusion_dir()
    if not (d / "model_index.json").exists():
        build_tiny_diffusion(seed=0, output_dir=d)
    return {"diffusion": str(d), "diffusion_data": ""}


TOKENS_PER_WORD = 1.46  # the kit tokenizer on _text's sentences (1464 tokens for 1002 words)


def prepare_long(n: int, length: int) -> dict[str, str]:
    """Rows longer than ``length`` tokens, for runs at a fixed sequence length (``compare.py speed --length``): SFT
    conversations of a ``length / 4``-token question and a ``length``-token answer, and preference rows of a
    ``length / 4``-token prompt with ``3 length / 4``-token answers; ``max_length = length`` then truncates every
    sequence to exactly ``length`` tokens in both libraries."""
    rng = random.Random(2)

    def text(tokens: int) -> str:
        return _text(rng, int(tokens / TOKENS_PER_WORD) + 8)

    paths = {}
    f = data_file(f"sft_long{length}", n)
    if not f.exists():
        write_jsonl([{"messages": [{"role": "user", "content": text(length / 4)},
                                   {"role": "assistant", "content": text(length)}]} for _ in range(n)], f)
    paths["sft_data"] = str(f)
    f = data_file(f"pref_long{length}", n)
    if not f.exists():
        write_jsonl([{"prompt": [{"role": "user", "content": text(length / 4)}],
                      "chosen": [{"role": "assistant", "content": text(3 * length / 4)}],
                      "rejected": [{"role": "assistant", "content": text(3 * length / 4)}]} for _ in range(n)], f)
    paths["pref_data"] = str(f)
    return paths


def prepare(size: str, sft_examples: int, pref_examples: int) -> dict[str, str]:
    """Build (if missing) the model folders (causal LM, sequence and token classification) and the data files; return
    their paths."""
    from posttrain.kit import build_tiny_model

    paths = {}
    for head in ("causal-lm", "seq-cls", "token-cls"):
        d = model_dir(size, head)
        if not (d / "config.json").exists():
            build_tiny_model("qwen2", head=head, size=size, seed=0, output_dir=d)
        paths[head] = str(d)
    f = data_file("sft", sft_examples)
    if not f.exists():
        write_jsonl(sft_rows(sft_examples, seed=0), f)
    paths["sft_data"] = str(f)
    f = data_file("pref", pref_examples)
    if not f.exists():
        write_jsonl(preference_rows(pref_examples, seed=1), f)
    paths["pref_data"] = str(f)
    # GKD: the preference rows' prompt and chosen answer as one conversation ("messages", the format TRL's GKD takes)
    f = data_file("distill", pref_examples)
    if not f.exists():
        write_jsonl([{"messages": r["prompt"] + r["chosen"]} for r in preference_rows(pref_examples, seed=1)], f)
    paths["distill_data"] = str(f)
    # KTO/BCO: the preference rows made unpaired (row i keeps its chosen answer as desirable when i is even, its
    # rejected answer as undesirable when i is odd): the same prompt and answer length spread as DPO (sequences of
    # 30-400 tokens), so the step is compute, not per-op overhead, as issue 8 asks of every scenario
    f = data_file("unpaired_long", pref_examples)
    if not f.exists():
        write_jsonl([{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"],
                      "label": i % 2 == 0} for i, r in enumerate(preference_rows(pref_examples, seed=1))], f)
    paths["unpaired_long_data"] = str(f)
    # the kit's unpaired preference rows (short, ~22 tokens: KTO's first scenario, kept as `kto-short`); online: the
    # kit's prompts
    from posttrain.kit import make_dataset

    # PRM: the kit's stepwise rows (standard text: TRL's PRM takes no conversational prompts)
    for kind, fmt, cols in (("unpaired", "unpaired_preference", ("prompt", "completion", "label")),
                            ("prompts", "prompt_only", ("prompt",)),
                            ("stepwise", "stepwise", ("prompt", "completions", "labels"))):
        f = data_file(kind, pref_examples)
        if not f.exists():
            rows = make_dataset("addition", fmt, n=pref_examples, seed=0, conversational=kind != "stepwise")
            write_jsonl([{k: r[k] for k in cols} for r in rows], f)
        paths[f"{kind}_data"] = str(f)
    return paths
