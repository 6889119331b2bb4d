"""Which optional packages are installed, under TRL's names (``trl.import_utils``), so that code written against TRL
asks the same questions here. Each answers whether the package can be imported (and, where given, is recent enough);
none imports it."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from packaging.version import Version

LIGER_KERNEL_MIN_VERSION = "0.5.8"


def _available(module: str, distribution: str | None = None, min_version: str | None = None) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    if min_version is None:
        return True
    try:
        return Version(importlib.metadata.version(distribution or module)) >= Version(min_version)
    except importlib.metadata.PackageNotFoundError:
        return False


def is_deepspeed_available() -> bool:
    return _available("deepspeed")


def is_fastapi_available() -> bool:
    return _available("fastapi")


def is_harbor_available() -> bool:
    return _available("harbor")


def is_jmespath_available() -> bool:
    return _available("jmespath")


def is_joblib_available() -> bool:
    return _available("joblib")


def is_liger_kernel_available(min_version: str | None = LIGER_KERNEL_MIN_VERSION) -> bool:
    """Whether ``liger-kernel`` is installed (at least ``min_version``). posttrain uses it only on a CUDA GPU
    (``use_liger_kernel``; docs/differences.md)."""
    return _available("liger_kernel", "liger-kernel", min_version)


def is_math_verify_available() -> bool:
    return _available("math_verify", "math-verify")


def is_mergekit_available() -> bool:
    return _available("mergekit")


def is_openreward_available() -> bool:
    return _available("openreward")


def is_pydantic_available() -> bool:
    return _available("pydantic")


def is_requests_available() -> bool:
    return _available("requests")


def is_unsloth_available() -> bool:
    return _available("unsloth")


def is_uvicorn_available() -> bool:
    return _available("uvicorn")


def is_vllm_available(min_version: str | None = None) -> bool:
    return _available("vllm", "vllm", min_version)


def is_vllm_ascend_available() -> bool:
    return _available("vllm_ascend", "vllm-ascend")


def is_weave_available() -> bool:
    return _available("weave")


__all__ = [name for name in dir() if name.startswith("is_")] + ["LIGER_KERNEL_MIN_VERSION"]
