"""Command-line arguments shared by every script: ``ScriptArguments`` and a YAML-aware parser.

``PosttrainParser(...).parse_args_and_config(argv)`` reads ``--config file.yaml`` (keys are any of the
dataclasses' fields), then applies the command line on top, so ``--learning_rate 1e-4`` overrides the
file. An unknown key, in the file or on the command line, is an error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import HfArgumentParser


@dataclass
class ScriptArguments:
    """Which data to train on (TRL's names)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, local json/jsonl/parquet/csv file, or a folder saved with `save_to_disk`."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on (when evaluation is enabled)."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    gradient_checkpointing_use_reentrant: bool = field(default=False, metadata={"help": "Reentrant gradient checkpointing."})


class PosttrainParser(HfArgumentParser):
    """``HfArgumentParser`` plus ``--config file.yaml`` with command-line overrides and strict keys."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # '--learning_rat' must be an error, not learning_rate
        super().__init__(dataclass_types, **kwargs)
        self._group_help()

    @staticmethod
    def _parse_dataclass_field(parser, field):
        """One option for a field two of the dataclasses share (``trust_remote_code`` of the trainer's config and of
        ``ModelConfig``): its value fills both."""
        if f"--{field.name}" in parser._option_string_actions:
            return
        HfArgumentParser._parse_dataclass_field(parser, field)

    def _group_help(self) -> None:
        """``--help`` in sections, the trainer's own options first: each config's fields that
        ``transformers.TrainingArguments`` does not have (``--beta``, ``--loss_type``, ...), then the script's and the
        model's arguments, then the ``TrainingArguments`` every trainer shares. (HfArgumentParser lists them all in
        one section, base class first: ``--beta`` came after 700 lines of ``TrainingArguments``.)"""
        from transformers import TrainingArguments

        if self.usage is None:  # argparse's lists every option (160 lines for a trainer): the sections below do
            self.usage = "%(prog)s [--config FILE.yaml] [--OPTION VALUE ...]"
        shared = {f.name for f in dataclasses.fields(TrainingArguments)}
        owner: dict[str, argparse._ArgumentGroup] = {}
        first, last = [], []
        for dc in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dc) if f.init}
            if issubclass(dc, TrainingArguments):
                own = self.add_argument_group(f"{dc.__name__} options")
                rest = self.add_argument_group("TrainingArguments options (shared by every trainer)")
                owner.update({n: own for n in names - shared})
                owner.update({n: rest for n in names & shared})
                first.insert(0, own)
                last.append(rest)
            else:
                group = self.add_argument_group(f"{dc.__name__}")
                owner.update({n: group for n in names})
                first.append(group)
        default = self._optionals
        for action in list(default._group_actions):
            group = owner.get(action.dest)
            if group is not None:
                default._group_actions.remove(action)
                group._group_actions.append(action)
        # the help flag's own section, then the trainer's options, the script's and model's, the shared ones
        self._action_groups = [g for g in self._action_groups if g not in first + last] + first + last

    def parse_args_and_config(self, args: list[str] | None = None) -> tuple[Any, ...]:
        argv = list(sys.argv[1:] if args is None else args)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=None)
        known, rest = pre.parse_known_args(argv)
        if known.config:
            with open(known.config, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            if not isinstance(data, dict):
                self.error(f"config file {known.config} must hold a mapping of argument names to values")
            data.pop("env", None)
            unknown = sorted(set(data) - self._field_names())
            if unknown:
                self.error(f"unknown key(s) in {known.config}: {self._hints(unknown)}")
            self.set_defaults(**data)
        namespace, remaining = self.parse_known_args(args=rest)
        if remaining:
            flags = [a for a in remaining if a.startswith("-")] or remaining
            self.error(f"unrecognized arguments: {self._hints(flags)}")
        values = vars(namespace)  # a field several dataclasses share fills each of them (_parse_dataclass_field)
        return tuple(dc(**{f.name: values[f.name] for f in dataclasses.fields(dc) if f.init and f.name in values})
                     for dc in self.dataclass_types)

    def error(self, message: str):
        """A usage error in two lines (the problem, with a "did you mean" where one fits, and where to see every
        option), exit code 2; not argparse's full usage, which lists every option of every dataclass."""
        sys.stderr.write(f"{self.prog}: error: {message}\nRun '{self.prog} --help' for every option.\n")
        raise SystemExit(2)

    def _field_names(self) -> set[str]:
        return {f.name for dc in self.dataclass_types for f in dataclasses.fields(dc) if f.init}

    def _hints(self, keys: list[str]) -> str:
        valid = self._field_names()
        out = []
        for key in keys:
            close = difflib.get_close_matches(key.lstrip("-"), valid, n=1)
            out.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return ", ".join(out)

