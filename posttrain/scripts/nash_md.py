"""Nash-MD from the command line: the options of ``posttrain online-dpo`` plus ``--mixture_coef`` (one value
per epoch allowed).

    posttrain nash-md --model_name_or_path MODEL --dataset_name PROMPTS --reward_funcs accuracy --output_dir OUT
    posttrain nash-md ... --judge JUDGE_LM --mixture_coef 0.5
    python -m posttrain.scripts.nash_md ...          # the same
"""

from __future__ import annotations

from ..trainers.nash_md import NashMDConfig, NashMDTrainer
from .online_dpo import run


def main(argv: list[str] | None = None) -> int:
    return run(NashMDConfig, NashMDTrainer, argv, "posttrain nash-md")


if __name__ == "__main__":
    raise SystemExit(main())
