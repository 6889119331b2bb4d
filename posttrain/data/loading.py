"""Load a dataset from the Hub or from local files, with one argument.

``load_any("trl-lib/Capybara")`` goes to the Hub; ``load_any("data/train.jsonl")`` reads a local
json/jsonl/parquet/csv file; ``load_any("data/my_saved_dataset")`` reads a folder written by
``Dataset.save_to_disk`` (or a folder of data files).
"""

from __future__ import annotations

import os
from pathlib import Path

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


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
        ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
        return ds if split in (None, "train") else _missing_split(str(path), split, ["train"])
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _from_disk(path, split)
        ds = datasets.load_dataset(str(path), config, **kwargs)
        return ds if split is None else _pick_split(ds, split, str(path))
    try:
        return datasets.load_dataset(name_or_path, config, split=split, **kwargs)
    except Exception as err:  # network-less machines: say what to do instead
        raise RuntimeError(
            f"Could not load dataset '{name_or_path}' (not a local file or folder, and loading it from the Hub "
            f"failed: {type(err).__name__}: {str(err)[:300]}). Pass a local json/jsonl/parquet/csv file or a "
            "folder saved with `Dataset.save_to_disk`; `posttrain kit make-data` writes synthetic ones."
        ) from err
