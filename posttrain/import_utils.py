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


def _checker(name: str, module: str, distribution: str | None = None):
    def check(min_version: str | None = None) -> bool:
        return _available(module, distribution, min_version)

    check.__name__ = check.__qualname__ = name
    check.__doc__ = f"Whether ``{distribution or module}`` is installed (at least ``min_version`` when given)."
    return check


# TRL's is_<name>_available functions: name -> (module, distribution when it differs)
_PACKAGES = {"deepspeed": ("deepspeed", None), "fastapi": ("fastapi", None), "harbor": ("harbor", None),
             "jmespath": ("jmespath", None), "joblib": ("joblib", None), "math_verify": ("math_verify", "math-verify"),
             "mergekit": ("mergekit", None), "openreward": ("openreward", None), "pydantic": ("pydantic", None),
             "requests": ("requests", None), "unsloth": ("unsloth", None), "uvicorn": ("uvicorn", None),
             "vllm": ("vllm", None), "vllm_ascend": ("vllm_ascend", "vllm-ascend"), "weave": ("weave", None)}
for _name, (_module, _distribution) in _PACKAGES.items():
    globals()[f"is_{_name}_available"] = _checker(f"is_{_name}_available", _module, _distribution)


def is_liger_kernel_available(min_version: str | None = LIGER_KERNEL_MIN_VERSION) -> bool:
    """Whether ``liger-kernel`` is installed (at least ``min_version``). posttrain uses it only on a CUDA GPU
    (``use_liger_kernel``; docs/differences.md)."""
    return _available("liger_kernel", "liger-kernel", min_version)


__all__ = [f"is_{name}_available" for name in _PACKAGES] + ["is_liger_kernel_available", "LIGER_KERNEL_MIN_VERSION"]
