"""The ``posttrain`` command: one sub-command per trainer, plus ``env`` and ``kit``.

    posttrain sft --model_name_or_path ... --dataset_name ...
    posttrain env                      # versions for a bug report
    posttrain kit build-model ...      # tiny offline models and synthetic datasets
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("posttrain.scripts.sft", "supervised fine-tuning (SFTTrainer)"),
    "dpo": ("posttrain.scripts.dpo", "direct preference optimization on preference pairs (DPOTrainer)"),
    "cpo": ("posttrain.scripts.cpo", "contrastive preference optimization, SimPO, AlphaPO (CPOTrainer)"),
    "orpo": ("posttrain.scripts.orpo", "odds ratio preference optimization (ORPOTrainer)"),
    "kto": ("posttrain.scripts.kto", "Kahneman-Tversky optimization on unpaired or paired data (KTOTrainer)"),
    "bco": ("posttrain.scripts.bco", "binary classifier optimization (BCOTrainer)"),
    "reward": ("posttrain.scripts.reward", "outcome reward modeling on preference pairs (RewardTrainer)"),
    "prm": ("posttrain.scripts.prm", "process reward modeling on stepwise data (PRMTrainer)"),
    "env": ("posttrain.cli", "print the versions a bug report needs"),
    "kit": ("posttrain.kit.cli", "build tiny offline models and synthetic datasets"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: posttrain <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `posttrain <command> --help` for a command's options."]
    return "\n".join(lines)


def env_info() -> dict[str, str]:
    import platform
    from importlib import metadata

    info = {"platform": platform.platform(), "python": platform.python_version()}
    for pkg in ("posttrain", "torch", "transformers", "accelerate", "datasets", "peft", "tokenizers",
                "bitsandbytes", "deepspeed", "diffusers", "vllm", "liger-kernel", "trl"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    try:
        import torch

        info["cuda available"] = str(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
            info["cuda"] = str(torch.version.cuda)
        info["cpu threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return info


def print_env() -> int:
    info = env_info()
    width = max(map(len, info))
    print("Copy and paste this into your bug report:\n")
    for k, v in info.items():
        print(f"- {k.ljust(width)}: {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"posttrain {__version__}")
        return 0
    command, rest = argv[0].replace("_", "-"), argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"posttrain: unknown command '{argv[0]}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "env":
        return print_env()
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
