"""A vLLM generation server for the online trainers' server mode (``use_vllm=True, vllm_mode="server"``).

    CUDA_VISIBLE_DEVICES=1 posttrain vllm-serve --model Qwen/Qwen2.5-0.5B --port 8000
    CUDA_VISIBLE_DEVICES=0 posttrain grpo --model_name_or_path Qwen/Qwen2.5-0.5B ... --use_vllm --vllm_mode server

Needs vLLM (``pip install 'posttrain[vllm]'``) and a CUDA GPU. The endpoints are listed in
:mod:`posttrain.rollout.vllm_server`; docs/vllm.md has the whole set-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..rollout.vllm_server import VLLMServer, build_llm, check_exposure, read_token


@dataclass
class VLLMServeArguments:
    """Options of ``posttrain vllm-serve`` (TRL's ``trl vllm-serve`` names)."""

    model: str | None = field(default=None, metadata={"help": "Hub id or local folder of the model to serve (the "
                              "policy's starting point; the trainer sends its weights)."})
    revision: str | None = field(default=None, metadata={"help": "Model revision (branch, tag or commit)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs the model is split across."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on. Default: this machine only. "
                      "Any other address needs a shared token ($POSTTRAIN_VLLM_TOKEN or --token_file; docs/vllm.md)."})
    token_file: str | None = field(default=None, metadata={"help": "File holding the shared token every request "
                                   "must carry (default: $POSTTRAIN_VLLM_TOKEN)."})
    max_weights_mb: int = field(default=65536, metadata={"help": "Largest /update_weights/ request body in MiB."})
    port: int = field(default=8000, metadata={"help": "HTTP port."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "Fraction of each GPU's memory vLLM may "
                                          "use (weights, activations, KV cache)."})
    dtype: str = field(default="auto", metadata={"help": "Weight dtype ('auto': the model config's)."})
    max_model_len: int | None = field(default=None, metadata={"help": "Longest prompt + completion in tokens "
                                      "(default: the model's context; smaller saves KV-cache memory)."})
    enable_prefix_caching: bool | None = field(default=None, metadata={"help": "Reuse the KV cache of shared "
                                               "prompt prefixes (vLLM's default when unset)."})
    enforce_eager: bool | None = field(default=None, metadata={"help": "Disable CUDA graphs."})
    kv_cache_dtype: str = field(default="auto", metadata={"help": "KV-cache dtype ('auto': the weights')."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repository's own code."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "'vllm' or 'transformers' model implementation.",
                                                           "choices": ["vllm", "transformers"]})
    log_level: str = field(default="info", metadata={"help": "Logging level.",
                                                     "choices": ["critical", "error", "warning", "info", "debug"]})


def main(argv: list[str] | None = None) -> int:
    from .args import PosttrainParser

    (args,) = PosttrainParser((VLLMServeArguments,), prog="posttrain vllm-serve").parse_args_and_config(argv)
    if not args.model:
        raise SystemExit("error: --model is required (a hub id or a local model folder).")
    token = read_token(args.token_file)
    check_exposure(args.host, token)  # before the minutes of loading the engine
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=args.log_level.upper())
    try:
        llm = _build(args)
    except ImportError as exc:
        raise SystemExit(f"error: {exc}") from None
    server = VLLMServer(llm, host=args.host, port=args.port, world_size=args.tensor_parallel_size,
                        token=token, max_weights_bytes=args.max_weights_mb * 2**20)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _build(args: VLLMServeArguments):
    return build_llm(args.model, revision=args.revision, tensor_parallel_size=args.tensor_parallel_size,
                     gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                     max_model_len=args.max_model_len, enable_prefix_caching=args.enable_prefix_caching,
                     enforce_eager=args.enforce_eager, kv_cache_dtype=args.kv_cache_dtype,
                     trust_remote_code=args.trust_remote_code, model_impl=args.vllm_model_impl)

if __name__ == "__main__":
    raise SystemExit(main())
