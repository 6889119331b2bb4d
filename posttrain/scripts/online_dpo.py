"""Online DPO from the command line (and the shared body of the Nash-MD and XPO scripts).

    posttrain online-dpo --model_name_or_path MODEL --dataset_name PROMPTS --reward_funcs accuracy --output_dir OUT
    posttrain online-dpo ... --reward_model_path RM              # a sequence-classification reward model
    posttrain online-dpo ... --judge openai                      # OpenAI-compatible endpoint (OPENAI_BASE_URL)
    posttrain online-dpo ... --judge JUDGE_LM                    # a local causal LM as pairwise judge
    python -m posttrain.scripts.online_dpo ...                   # the same

MODEL is a hub id or a local folder; PROMPTS a hub id, a local json/jsonl/parquet/csv file or a saved dataset
folder with a ``prompt`` column (text or messages); other columns (e.g. ``answer``) reach the reward functions.
The two completions of each prompt are ranked by exactly one of: ``--judge``, ``--reward_funcs`` (built-in names
or ``module:function`` / ``file.py:function``) and/or ``--reward_model_path`` / ``--reward_model_name_or_path``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..trainers.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from .common import parse, train
from .grpo import RewardScriptArguments, reward_functions


@dataclass
class OnlineScriptArguments(RewardScriptArguments):
    """Data and reward options of the online preference scripts (``--reward_model_path`` and ``--judge`` are
    fields of the trainer's config, as in TRL)."""


def pairwise_judge(name: str):
    """A pairwise judge by name: ``openai`` (:class:`~posttrain.rollout.OpenAIPairwiseJudge`), or a causal LM (hub
    id or local folder) asked which answer is better (:class:`~posttrain.rollout.LLMPairwiseJudge`)."""
    from ..models import load_pretrained, load_tokenizer
    from ..rollout import LLMPairwiseJudge, OpenAIPairwiseJudge

    if name == "openai":
        return OpenAIPairwiseJudge()
    if name in ("pair_rm", "hf"):
        raise SystemExit(f"error: --judge {name} (TRL's llm-blender / hub-inference judges) is not available; use "
                         "--judge openai, --judge PATH_OR_ID of a causal LM, --reward_funcs or --reward_model_path.")
    return LLMPairwiseJudge(load_pretrained(name, frozen=True), load_tokenizer(name))


def run(config_class, trainer_class, argv: list[str] | None, prog: str) -> int:
    script_args, training_args, model_args = parse(config_class, argv, prog, OnlineScriptArguments)
    kwargs = {}
    if training_args.judge:
        if script_args.reward_funcs or script_args.reward_model_name_or_path or training_args.reward_model_path:
            raise SystemExit("error: give --judge or reward functions/models, not both.")
        kwargs["judge"] = pairwise_judge(training_args.judge)
    elif script_args.reward_funcs or script_args.reward_model_name_or_path:
        kwargs["reward_funcs"] = reward_functions(script_args, training_args.max_completion_length)
    elif not training_args.reward_model_path:
        raise SystemExit("error: give --judge, --reward_funcs (e.g. accuracy) and/or --reward_model_path to rank the "
                         "two completions of each prompt.")
    train(trainer_class, script_args, training_args, model_args, **kwargs)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(OnlineDPOConfig, OnlineDPOTrainer, argv, "posttrain online-dpo")


if __name__ == "__main__":
    raise SystemExit(main())
