"""Load a dataset from the Hub or from local files, with one argument.

``load_any("trl-lib/Capybara")`` goes to the Hub; ``load_any("data/train.jsonl")`` reads a local
json/jsonl/parquet/csv file; ``load_any("data/my_saved_dataset")`` reads a folder written by
``Dataset.save_to_disk`` (or a folder of data files).
"""

from __future__ import annotations

import os
from pathlib import Path

from .formats import DatasetFormatError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a local path (a hub id is ``name`` or ``owner/name``): absolute, starting with
    ``.``/``~``, with a data-file extension, or with more than one ``/``."""
    return _why_local(name) is not None


def _why_local(name: str) -> str | None:
    if name.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(name):
        return "an absolute or relative path"
    if Path(name).suffix.lower() in _FILE_BUILDERS:
        return f"a {Path(name).suffix} file name"
    if name.count("/") > 1:
        return "more than one '/'"
    return None


def check_utf8(path: Path) -> str | None:
    """Where a text data file (json/jsonl/csv) is not UTF-8: the 1-based line and the fix; None if it all is."""
    if path.suffix.lower() not in (".json", ".jsonl", ".csv"):
        return None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"Data file '{path}', line {number} (1-based): bytes that are not UTF-8 ({err.reason} at "
                        f"byte {err.start} of the line). Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).")
    return None


def diagnose_file(path: Path) -> str | None:
    """What makes the text data file ``path`` unreadable, naming the 1-based line and the fix; None if nothing is
    found (parquet/arrow files, or a problem this does not know)."""
    import json

    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv"):
        return None
    if (problem := check_utf8(path)) is not None:
        return problem
    if suffix == ".csv":
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for line in f if line.strip())
        return (f"Data file '{path}' has only a header line and no rows. Give a file with at least one row."
                if lines <= 1 else None)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return f"Data file '{path}' holds only whitespace. Give a file with at least one row."
    if suffix == ".json" and text.lstrip().startswith(("[", "{")):
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            if "\n" not in text.strip() or text.lstrip().startswith("["):
                return (f"Data file '{path}', line {err.lineno} (1-based), column {err.colno}: not valid JSON "
                        f"({err.msg}). Fix that line; a .json file is one JSON document (a list of rows) or one JSON "
                        "object per line.")
        else:
            return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return (f"Data file '{path}', line {number} (1-based), column {err.colno}: not valid JSON ({err.msg}). "
                    "Each line of a .jsonl file must be one JSON object, e.g. {\"prompt\": \"...\", \"completion\": "
                    "\"...\"}.")
        if not isinstance(row, dict):
            return (f"Data file '{path}', line {number} (1-based): a JSON {type(row).__name__}, not an object. Each line "
                    "must be one JSON object with the dataset's columns as keys.")
    return None


def _from_disk(path: Path, split: str | None):
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        return ds if split is None else _pick_split(ds, split, str(path))
    return ds if split is None or split == "train" else _missing_split(str(path), split, ["train"])


def _pick_split(dsdict, split: str, name: str):
    if split in dsdict:
        return dsdict[split]
    return _missing_split(name, split, list(dsdict.keys()))


def _missing_split(name: str, split: str, available: list[str]):
    raise ValueError(f"Dataset '{name}' has no split '{split}'. Available splits: {available}.")


def load_any(name_or_path: str, config: str | None = None, split: str | None = "train", **kwargs):
    """Load a dataset split (or every split when ``split=None``) from a hub id, a file or a folder."""
    import datasets

    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"Don't know how to read '{path}': supported local files are "
                f"{', '.join(sorted(_FILE_BUILDERS))}, or a folder written by `Dataset.save_to_disk`."
            )
        if path.stat().st_size == 0:
            raise DatasetFormatError(f"Data file '{path}' is empty. Give a file with at least one row.")
        if (problem := check_utf8(path)) is not None:  # else some rows would fail only when read, mid-training
            raise DatasetFormatError(problem)
        try:
            ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
        except Exception as err:  # noqa: BLE001 - replaced by what is wrong, where, and how to fix it
            problem = diagnose_file(path)
            if problem is None:
                raise
            raise DatasetFormatError(problem) from err
        if not kwargs.get("streaming") and len(ds) == 0:
            raise DatasetFormatError(f"Data file '{path}' has no rows" + (
                " (only a header line)" if builder == "csv" else "") + ". Give a file with at least one row.")
        return ds if split in (None, "train") else _missing_split(str(path), split, ["train"])
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _from_disk(path, split)
        ds = datasets.load_dataset(str(path), config, **kwargs)
        return ds if split is None else _pick_split(ds, split, str(path))
    if looks_local(name_or_path):
        raise FileNotFoundError(
            f"Dataset '{name_or_path}' does not exist: it looks like a local path ({_why_local(name_or_path)}), so it "
            "is not looked up on the Hub. Check the path (relative paths start from the current folder, "
            f"{os.getcwd()}).")
    try:
        return datasets.load_dataset(name_or_path, config, split=split, **kwargs)
    except Exception as err:  # network-less machines: say what to do instead
        raise RuntimeError(
            f"Could not load dataset '{name_or_path}' (not a local file or folder, and loading it from the Hub "
            f"failed: {type(err).__name__}: {str(err)[:300]}). Pass a local json/jsonl/parquet/csv file or a "
            "folder saved with `Dataset.save_to_disk`; `posttrain kit make-data` writes synthetic ones."
        ) from err
