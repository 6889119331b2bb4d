"""Stand-in for ``vllm.engine.arg_utils``: the ``EngineArgs`` fields posttrain looks for."""

from dataclasses import dataclass


@dataclass
class EngineArgs:
    model: str = ""
    logprobs_mode: str = "raw_logprobs"
