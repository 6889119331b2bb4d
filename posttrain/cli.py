"""The ``posttrain`` command: one sub-command per trainer, plus ``env`` and ``kit``.

    posttrain sft --model_name_or_path ... --dataset_name ...
    posttrain sft --accelerate_config deepspeed_zero3 --num_processes 8 ...   # re-launched by `accelerate launch`
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
    "grpo": ("posttrain.scripts.grpo", "group relative policy optimization with reward functions/models (GRPOTrainer)"),
    "rloo": ("posttrain.scripts.rloo", "REINFORCE leave-one-out with reward functions/models (RLOOTrainer)"),
    "ppo": ("posttrain.scripts.ppo", "proximal policy optimization with a value model (PPOTrainer)"),
    "gkd": ("posttrain.scripts.gkd", "generalized knowledge distillation from a teacher model (GKDTrainer)"),
    "online-dpo": ("posttrain.scripts.online_dpo", "online DPO: policy pairs ranked by a judge or reward (OnlineDPOTrainer)"),
    "nash-md": ("posttrain.scripts.nash_md", "Nash mirror descent against a policy/reference mixture (NashMDTrainer)"),
    "xpo": ("posttrain.scripts.xpo", "exploratory preference optimization (XPOTrainer)"),
    "ddpo": ("posttrain.scripts.ddpo", "denoising diffusion policy optimization for text-to-image pipelines (DDPOTrainer)"),
    "alignprop": ("posttrain.scripts.alignprop", "reward backpropagation through a diffusion sampler (AlignPropTrainer)"),
    "generate": ("posttrain.scripts.generate:main_generate", "sample a model's completions for prompts or a dataset"),
    "eval": ("posttrain.scripts.generate:main_eval", "score a model's completions with reward functions or a model"),
    "vllm-serve": ("posttrain.scripts.vllm_serve", "serve a model with vLLM for the online trainers' server mode"),
    "env": ("posttrain.cli", "print the versions a bug report needs"),
    "kit": ("posttrain.kit.cli", "build tiny offline models and synthetic datasets"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: posttrain <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `posttrain <command> --help` for a command's options.",
              "Several processes / DeepSpeed / FSDP: add `--accelerate_config NAME|FILE [--num_processes N]` to a "
              "training command", "(NAME: multi_gpu, multi_cpu, deepspeed_zero1/2/3, deepspeed_zero3_offload, fsdp; "
              "see docs/distributed.md)."]
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


# Launcher options taken by `posttrain <trainer> --accelerate_config ...` and passed on to `accelerate launch`.
LAUNCH_OPTIONS = ("--accelerate_config", "--num_processes", "--main_process_port", "--mixed_precision")


def accelerate_config_path(name_or_path: str) -> str:
    """A config file path as given, or a shipped config by name (``deepspeed_zero3`` or ``deepspeed_zero3.yaml``,
    from ``posttrain/accelerate_configs/``, the same files as ``examples/accelerate_configs/``)."""
    import os
    from importlib import resources

    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    shipped = resources.files("posttrain") / "accelerate_configs"
    name = name_or_path if name_or_path.endswith((".yaml", ".yml")) else f"{name_or_path}.yaml"
    candidate = shipped / name
    if os.sep not in name_or_path and candidate.is_file():
        return str(candidate)
    names = sorted(p.name.rsplit(".", 1)[0] for p in shipped.iterdir() if p.name.endswith(".yaml"))
    raise SystemExit(f"posttrain: no accelerate config '{name_or_path}': not a file, and not one of the shipped "
                     f"configs ({', '.join(names)}).")


def split_launch_options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(launcher options from LAUNCH_OPTIONS, the remaining trainer arguments)."""
    options, rest, i = {}, [], 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        if key in LAUNCH_OPTIONS:
            if not eq:
                if i + 1 >= len(args):
                    raise SystemExit(f"posttrain: {key} needs a value.")
                value, i = args[i + 1], i + 1
            options[key] = value
        else:
            rest.append(arg)
        i += 1
    return options, rest


def launch_command(command: str, args: list[str]) -> list[str]:
    """The ``accelerate launch`` command line that runs ``posttrain <command> <args>`` under an accelerate config."""
    options, rest = split_launch_options(args)
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", accelerate_config_path(options.pop("--accelerate_config"))]
    for key, value in options.items():
        cmd += [key, value]
    return cmd + ["-m", "posttrain.cli", command, *rest]


def relaunch(command: str, args: list[str]) -> int:
    """Run ``posttrain <command>`` again under ``accelerate launch`` (see :func:`launch_command`)."""
    import subprocess

    cmd = launch_command(command, args)
    print("posttrain: launching " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("POSTTRAIN_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
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
    if command != "kit" and any(a == "--accelerate_config" or a.startswith("--accelerate_config=") for a in rest):
        return relaunch(command, rest)
    quiet_optional_kernel_notices()
    module_name, _, function = COMMANDS[command][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    return leave_deepspeed_worker(run_reporting_errors(f"posttrain {command}", entry, rest, debug))


def quiet_optional_kernel_notices() -> None:
    """Keep bitsandbytes' optional-kernel notices off the command's output.

    With bitsandbytes installed, importing transformers' Trainer imports it (through peft), and on a CPU with
    AVX512-BF16 bitsandbytes then tries to fetch a faster 4-bit kernel from the hub through the ``kernels`` package.
    Offline, or when the kernel's publisher cannot be verified, that prints one or two warnings on every command,
    even ``--help``, whether or not the run quantizes anything; bitsandbytes falls back to its own kernel either
    way. Real errors of both packages still print."""
    import logging

    for name in ("kernels", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).setLevel(logging.ERROR)


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are about the user's input or environment, not a bug: configuration and data errors
    (``ValueError``, among them ``DatasetFormatError``), files and folders (``OSError``), missing extras
    (``ImportError``), and a run's own refusals (output folder, checkpoint write, divergence)."""
    from .trainers.run_dir import CheckpointWriteError, OutputDirError, TrainingDivergedError

    return (ValueError, OSError, ImportError, OutputDirError, CheckpointWriteError, TrainingDivergedError)


def run_reporting_errors(prog: str, fn, args: list[str], debug: bool) -> int:
    """``fn(args)``; a user error (:func:`user_errors`) is printed as its message alone, exit code 2; ``--debug``
    (or ``POSTTRAIN_DEBUG=1``) shows the traceback instead. Other exceptions are bugs and keep theirs."""
    try:
        return int(fn(args) or 0)
    except user_errors() as err:
        if debug:
            raise
        text = str(err).strip() or type(err).__name__
        if type(err) in (OSError, PermissionError, ImportError):  # their messages do not say what they are
            text = f"{type(err).__name__}: {text}"
        print(f"{prog}: error: {text}\n(run with --debug for the traceback)", file=sys.stderr, flush=True)
        return 2


def leave_deepspeed_worker(code: int) -> int:
    """End a DeepSpeed worker process of a finished command without interpreter teardown; return ``code`` elsewhere.

    A DeepSpeed worker on CPU can abort after its command has finished and written everything ("terminate called
    without an active exception", SIGABRT), and the launcher then reports the run as failed: DeepSpeed keeps gloo
    process groups referenced (destroying the default group leaves their threads running) and they are freed only
    during interpreter teardown (docs/distributed.md, "Process exit"). This runs what a normal exit runs (``atexit``
    hooks, among them posttrain's process-group teardown and logging's flush), collects garbage, flushes the standard
    streams and ends the process with ``os._exit(code)``, which skips the teardown that aborts."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "deepspeed" not in sys.modules:
        return code
    import atexit
    import gc

    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
