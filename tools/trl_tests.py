"""TRL's own tests run against posttrain, with only the imports changed: the measure of "porting means changing an
import" (issue 22). Nothing of TRL is vendored: the tests are read from a TRL git snapshot at run time.

    .venv/bin/python tools/trl_tests.py --trl /work/.mirror/huggingface+trl/repo --tag v1.9.0 test_data_utils.py
    benchmarks/.venv-trl-1.16.0/bin/python tools/trl_tests.py --lib trl ... test_data_utils.py   # TRL itself

Each test file is copied into a temporary package with ``trl`` imports rewritten to ``posttrain`` (``--lib trl``
keeps them, for TRL's own count on the same machine) beside a stand-in ``testing_utils`` (TRL's test helpers:
``TrlTestCase`` and the ``require_*`` skip markers, written here) and a ``conftest.py`` that serves every text-only
``trl-internal-testing/tiny-*`` model and tokenizer from posttrain's kit (one Qwen2 with a ChatML tokenizer for all:
tests of a particular architecture's or template's output fail in both libraries alike) and the ``zen`` datasets from
the kit's addition task. pytest runs it there and the counts are printed with every
failure's first line; tests that still reach for the Hub (models, datasets) are counted apart. Compare the two
libraries' counts, not either alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTING_UTILS = '''"""Stand-in for TRL's tests/testing_utils.py (tools/trl_tests.py)."""
import functools
import importlib.util
import warnings

import pytest
import torch


def _has(module):
    return importlib.util.find_spec(module) is not None


class TrlTestCase:
    @pytest.fixture(autouse=True)
    def set_tmp_dir(self, tmp_path):
        self.tmp_dir = str(tmp_path)


def ignore_warnings(message=None, category=Warning):
    def decorator(test_func):
        @functools.wraps(test_func)
        def wrapper(*args, **kwargs):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=message, category=category)
                return test_func(*args, **kwargs)
        return wrapper
    return decorator


_NEEDS = {"peft": "peft", "vision": "PIL", "bitsandbytes": "bitsandbytes", "liger_kernel": "liger_kernel",
          "vllm": "vllm", "wandb": "wandb", "comet": "comet_ml", "rich": "rich", "sklearn": "sklearn",
          "math_latex": "math_verify", "mergekit": "mergekit", "kernels": "kernels", "jmespath": "jmespath"}


class _Missing:
    """A name TRL's tests import that posttrain does not have (often a TRL internal): the tests that use it fail, the
    rest of the module still runs."""

    def __init__(self, where):
        self.where = where

    def _fail(self, *args, **kwargs):
        raise NotImplementedError(f"posttrain has no {self.where}")

    def __getattr__(self, attr):
        if attr.startswith("__"):  # introspection (pytest's collector, copy, pickle): a plain missing attribute
            raise AttributeError(attr)
        self._fail()

    __call__ = __getitem__ = __iter__ = _fail


def is_ampere_or_newer(device_index=0):
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device_index)[0] >= 8


def _compat(module, name):
    """``from <module> import <name>``, else the name from posttrain's top level or its data layer (where posttrain
    keeps TRL's public names), else a :class:`_Missing`."""
    import importlib

    for where in (module, "posttrain", "posttrain.data", "posttrain.data_utils", "posttrain.data.preference"):
        try:
            return getattr(importlib.import_module(where), name)
        except (ImportError, AttributeError):
            continue
    return _Missing(f"{module}.{name}")


def __getattr__(name):
    if name == "require_no_wandb":
        return pytest.mark.skipif(_has("wandb"), reason="test requires no wandb")
    if name.startswith("require_"):
        what = name[len("require_"):]
        if what in _NEEDS:
            return pytest.mark.skipif(not _has(_NEEDS[what]), reason=f"test requires {what}")
        return pytest.mark.skipif(not torch.cuda.is_available(), reason=f"test requires {what}")
    raise AttributeError(name)
'''


CONFTEST = '''"""Stand-ins for TRL's tiny Hub models and datasets (tools/trl_tests.py): every text-only
``trl-internal-testing/tiny-*`` model, tokenizer or processor is posttrain's kit Qwen2 (causal LM, or its sequence /
token classification twin), and ``trl-internal-testing/zen`` is the kit's addition task in the asked format."""
import os
import re

import datasets
import transformers
from transformers.models.auto.auto_factory import _BaseAutoModelClass

STAND_INS = os.environ["TRL_TESTS_STAND_INS"]
# no kit stand-in (yet) for vision-language models: they go to the Hub, and count as needing it
VISION = re.compile(r"Llava|VL|Vision|Idefics|PaliGemma|SmolVLM|Gemma3ForConditional|ImageText|Qwen3_5|Mllama|Blip")
SEQ2SEQ = re.compile(r"T5|Bart")


def _stand_in(name, cls):
    if not (isinstance(name, str) and name.startswith("trl-internal-testing/tiny-")):
        return name
    if VISION.search(name) and cls is not transformers.AutoTokenizer:  # a tokenizer serves any text template test
        return name
    kind = next((k for k in ("SequenceClassification", "TokenClassification")
                 if k in name or k in getattr(cls, "__name__", "")), None)
    head = {"SequenceClassification": "seq-cls", "TokenClassification": "token-cls"}.get(kind, "causal-lm")
    if SEQ2SEQ.search(name):
        head = "seq2seq"
    return os.path.join(STAND_INS, head)


def _redirect(owner):
    real = owner.from_pretrained.__func__

    def from_pretrained(klass, name, *args, **kwargs):
        new = _stand_in(name, klass)
        if new is not name:
            kwargs.pop("revision", None)
        return real(klass, new, *args, **kwargs)

    owner.from_pretrained = classmethod(from_pretrained)


# every Auto class carries its own copy of from_pretrained (transformers' auto_class_update): patch each
_AUTO = [getattr(transformers, n) for n in dir(transformers) if n.startswith("AutoModel") or n == "AutoConfig"]
for _owner in (transformers.AutoTokenizer, transformers.AutoProcessor, _BaseAutoModelClass,
               transformers.PreTrainedModel, *_AUTO):
    if isinstance(_owner, type) and hasattr(_owner, "from_pretrained"):
        _redirect(_owner)

_FORMATS = {"language_modeling": "language_modeling", "prompt_only": "prompt_only",
            "prompt_completion": "prompt_completion", "preference": "preference",
            "implicit_prompt_preference": "preference_implicit", "unpaired_preference": "unpaired_preference",
            "stepwise_supervision": "stepwise"}
_real_load_dataset = datasets.load_dataset


def load_dataset(path, name=None, *args, split=None, **kwargs):
    if path != "trl-internal-testing/zen" or name is None:
        return _real_load_dataset(path, name, *args, split=split, **kwargs)
    cut = re.fullmatch(r"(\w+)\[:(\d+)\]", split or "")  # "train[:2]": the split's first rows
    if cut:
        return load_dataset(path, name, *args, split=cut.group(1), **kwargs).select(range(int(cut.group(2))))
    from posttrain.kit import make_dataset

    style, _, fmt = name.partition("_")
    conversational = style == "conversational"
    parts = {part: make_dataset("addition", _FORMATS[fmt], n=n, seed=seed, conversational=conversational)
             for part, n, seed in (("train", 17, 0), ("test", 3, 1))}
    for part, ds in parts.items():
        parts[part] = ds.remove_columns([c for c in ("answer",) if c in ds.column_names])
    if kwargs.get("streaming"):  # an IterableDataset, as the Hub's loader gives with streaming=True
        data = datasets.IterableDatasetDict({part: ds.to_iterable_dataset() for part, ds in parts.items()})
    else:
        data = datasets.DatasetDict(parts)
    return data[split] if split else data


datasets.load_dataset = load_dataset


# TRL's configs default to bf16=True, which transformers refuses on a machine without a CUDA GPU unless use_cpu is set
# (TRL's CI runs these tests on GPU runners): set it there, for both libraries alike
import torch

if not torch.cuda.is_available():
    _real_post_init = transformers.TrainingArguments.__post_init__

    def _post_init(self, *args, **kwargs):
        self.use_cpu = True
        return _real_post_init(self, *args, **kwargs)

    transformers.TrainingArguments.__post_init__ = _post_init
'''


def stand_in_dir() -> Path:
    """The kit model folders that stand in for TRL's tiny Hub models (built on first use): ``causal-lm``,
    ``seq-cls`` and ``token-cls`` (the kit's Qwen2) and ``seq2seq`` (a tiny T5 with the kit tokenizer)."""
    d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "posttrain" / "trl-tests"
    for head in ("causal-lm", "seq-cls", "token-cls"):
        if not (d / head / "config.json").exists():
            sys.path.insert(0, str(ROOT))
            from posttrain.kit import build_tiny_model

            build_tiny_model("qwen2", head=head, size="tiny", seed=0, output_dir=d / head)
    if not (d / "seq2seq" / "config.json").exists():  # a tiny T5 with the kit tokenizer, for TRL's T5 / BART ids
        from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

        tok = AutoTokenizer.from_pretrained(d / "causal-lm")
        config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          decoder_start_token_id=tok.pad_token_id)
        T5ForConditionalGeneration(config).save_pretrained(d / "seq2seq")
        tok.save_pretrained(d / "seq2seq")
    return d


_FROM_IMPORT = re.compile(r"^from trl((?:\.\w+)*) import (\([^)]*\)|[^\n]+)", re.MULTILINE)


def _names(spec: str) -> list[tuple[str, str]]:
    spec = re.sub(r"#[^\n]*", "", spec.strip().strip("()"))
    out = []
    for part in (p.strip() for p in spec.replace("\n", " ").split(",")):
        if part:
            name, _, alias = part.partition(" as ")
            out.append((name.strip(), (alias or name).strip()))
    return out


def rewrite(source: str) -> str:
    """``trl`` imports as ``posttrain`` ones. ``from trl.x import a, b`` becomes one ``_compat`` lookup a name (the
    same module path under ``posttrain``, else posttrain's top level or data layer, else a placeholder that fails
    the tests that use it), so a TRL internal posttrain lacks fails those tests, not the whole module;
    ``import trl`` and string module paths (``"trl.trainer..."`` in patches) are renamed."""
    def lookups(match: re.Match) -> str:
        module = "posttrain" + match.group(1)
        return "\n".join(f"{alias} = _compat({module!r}, {name!r})" for name, alias in _names(match.group(2)))

    source = _FROM_IMPORT.sub(lookups, source)
    source = re.sub(r"\bimport trl\b", "import posttrain as trl", source)
    source = re.sub(r"([\"'])trl\.", r"\1posttrain.", source)
    head = "from tests.testing_utils import _compat  # (tools/trl_tests.py)\n"
    future = list(re.finditer(r"^from __future__ import [^\n]+\n", source, re.MULTILINE))
    cut = future[-1].end() if future else 0
    return source[:cut] + head + source[cut:]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tests", nargs="+", help="test files under TRL's tests/ (e.g. test_data_utils.py)")
    p.add_argument("--trl", required=True, help="a TRL git snapshot (the `fetch` tool's github:huggingface/trl)")
    p.add_argument("--tag", default="v1.9.0")
    p.add_argument("--lib", default="posttrain", choices=["posttrain", "trl"])
    p.add_argument("-k", default=None, help="pytest -k expression")
    p.add_argument("--show_hub", action="store_true", help="print where each Hub-bound test reached for the Hub")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "tests"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "testing_utils.py").write_text(TESTING_UTILS)
        (pkg / "conftest.py").write_text(CONFTEST)
        for name in a.tests:
            source = subprocess.run(["git", "-C", a.trl, "show", f"{a.tag}:tests/{name}"], check=True,
                                    capture_output=True, text=True).stdout
            target = pkg / name
            for folder in [p for p in target.parents if pkg in p.parents]:  # tests/experimental/... as packages
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "__init__.py").touch()
            target.write_text(rewrite(source) if a.lib == "posttrain" else source)
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", "-rN",
               f"--junitxml={Path(tmp) / 'junit.xml'}", *(["-k", a.k] if a.k else []),
               *[str(pkg / n) for n in a.tests]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_TESTS_STAND_INS": str(stand_in_dir())}
        if a.lib == "posttrain":  # this checkout's posttrain, whatever the environment has installed
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env)
        counts = _junit_counts(Path(tmp) / "junit.xml")
        report.write_text(json.dumps(counts))
    print(f"{a.lib} on TRL {a.tag} {' '.join(a.tests)}: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['needs_hub']} need the Hub (offline), {counts['skipped']} skipped")
    for name, message in counts["failures"]:
        print(f"  FAIL {name}: {message}")
    if a.show_hub:
        for name, message in counts["hub"]:
            print(f"  HUB {name}: {message}")
    if proc.returncode not in (0, 1):  # collection errors and the like
        print(proc.stdout[-3000:], proc.stderr[-3000:])
    return counts


# a test that loaded a model, tokenizer or dataset from the Hub, offline: not counted as a failure of either library
HUB_OFFLINE = ("couldn't connect to 'https://huggingface.co'", "OfflineModeIsEnabled", "LocalEntryNotFoundError")


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "needs_hub": 0, "skipped": 0, "failures": [], "hub": []}
    if not path.exists():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None and any(sign in (bad.get("message") or "") + (bad.text or "") for sign in HUB_OFFLINE):
            counts["needs_hub"] += 1
            text = (bad.text or "").splitlines()
            counts["hub"].append((name, next((line for line in text if "from_pretrained" in line or "load_dataset" in line
                                              or "hf_hub" in line), text[-1] if text else "")[:200]))
        elif bad is not None:
            counts["failed"] += 1
            counts["failures"].append((name, (bad.get("message") or "").splitlines()[0][:160] if bad.get("message")
                                       else ""))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


if __name__ == "__main__":
    main()
