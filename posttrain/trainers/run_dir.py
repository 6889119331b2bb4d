"""The output folder of a run: one run at a time, checkpoints that are complete or absent, resumes that say what changed.

* :class:`OutputDirLock` — an advisory lock (``flock``) on ``output_dir/.posttrain.lock``, held by the main process
  for the whole of ``train()``; a second run into the same folder is refused, naming the first (pid, host, start).
  The kernel drops the lock when its process dies, so a killed run never leaves a stale lock behind.
* :func:`check_fresh_output_dir` — a run that does not resume refuses a folder holding another run's checkpoints
  unless ``overwrite_output_dir`` is set.
* :func:`publish` / :func:`publish_files` — a checkpoint or final model, written into a hidden staging folder, is
  moved into place only when complete, so a kill or a full disk never leaves a folder that looks like a checkpoint
  (``get_last_checkpoint`` matches ``checkpoint-N`` only).
* :class:`TrainingDivergedError` and :func:`nonfinite_parameters` — what the trainers raise and check when a loss,
  gradient norm or weight is not finite (nothing non-finite is ever saved).
* :func:`run_settings` / :func:`compare_settings` — the settings that change a run's result, stored in each
  checkpoint (``posttrain_run.json``) and compared on resume.

docs/reliability.md lists these guarantees and the tests that hold them.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shutil
import socket
from typing import Any

import torch

logger = logging.getLogger("posttrain")

LOCK_NAME = ".posttrain.lock"
STAGING_NAME = ".posttrain-staging"
SETTINGS_NAME = "posttrain_run.json"
CHECKPOINT_PREFIX = "checkpoint-"


class OutputDirError(RuntimeError):
    """The output folder cannot be used as asked (another run holds it, or it holds another run's checkpoints)."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint or the final model failed (e.g. the disk is full); nothing partial was left behind."""


class TrainingDivergedError(RuntimeError):
    """Training stopped because a loss or gradient norm was not finite (NaN or inf); nothing non-finite was saved."""


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s trained parameters holding a NaN or inf (this process's part of them).

    Only trainable floating-point parameters are checked: training changes nothing else, and a quantized base
    layer's packed bytes (bitsandbytes' 4-bit ``Params4bit`` stored in a float container, which carries a
    ``quant_state``) are not numbers at all, so reading them as floats finds "NaN" in a healthy model."""
    return [name for name, p in model.named_parameters()
            if p.requires_grad and p.is_floating_point() and p.numel() and getattr(p, "quant_state", None) is None
            and not bool(torch.isfinite(p.detach()).all())]


def last_checkpoint_note(output_dir: str) -> str:
    """Where training can restart from: the newest complete checkpoint in ``output_dir``, or that there is none."""
    found = checkpoints(output_dir)
    last = found[-1] if found else None
    if last is None:
        return "No checkpoint was written before it."
    return f"The last good checkpoint is {last} (resume with resume_from_checkpoint / --resume_from_checkpoint {last})."


class OutputDirLock:
    """``with OutputDirLock(path):`` — hold ``path/.posttrain.lock`` for the duration; see the module docstring."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self._fd = None

    def __enter__(self):
        import fcntl

        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            with os.fdopen(fd) as f:
                holder = f.read().strip() or "another process"
            raise OutputDirError(
                f"output_dir {self.output_dir} is in use by another run ({holder}); two runs writing one folder would "
                "overwrite each other's checkpoints. Wait for it to finish, or choose another --output_dir.") from None
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race another run)
            self._fd = None
        return False


def checkpoints(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir)
             if d.startswith(CHECKPOINT_PREFIX) and d[len(CHECKPOINT_PREFIX):].isdigit()
             and os.path.isdir(os.path.join(output_dir, d))]
    return [os.path.join(output_dir, d) for d in sorted(found, key=lambda d: int(d[len(CHECKPOINT_PREFIX):]))]


def check_fresh_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run (not resuming) in a folder that holds checkpoints, unless ``overwrite``."""
    found = checkpoints(output_dir)
    if resuming or overwrite or not found:
        return
    raise OutputDirError(
        f"output_dir {output_dir} already holds {len(found)} checkpoint(s) of another run (newest: "
        f"{os.path.basename(found[-1])}). Resume it with resume_from_checkpoint=True (--resume_from_checkpoint True), "
        "start over with overwrite_output_dir=True (--overwrite_output_dir; its checkpoints are replaced as the new "
        "run saves), or choose another --output_dir.")


def _disk_full(err: BaseException) -> bool:
    text = str(err)
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        s in text for s in ("No space left", "unexpected pos", "Disk quota exceeded", "file write failed"))


def _newest_file(folder: str) -> str | None:
    newest, when = None, -1.0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                t = os.path.getmtime(path)
            except OSError:
                continue
            if t > when:
                newest, when = path, t
    return newest


def write_error(err: BaseException, target: str, staging: str, last_good: str) -> CheckpointWriteError:
    """A readable error for a failed save of ``target``: which file, whether the disk is full, the last good one."""
    file = _newest_file(staging) if os.path.isdir(staging) else None
    where = f" while writing {os.path.relpath(file, staging)}" if file else ""
    cause = "the disk is full" if _disk_full(err) else f"{type(err).__name__}: {str(err)[:300]}"
    return CheckpointWriteError(f"Saving {target} failed{where}: {cause}. Nothing partial was left in its place. "
                                f"{last_good} Free space (or choose another --output_dir) and resume.")


def publish(staged: str, target: str) -> None:
    """Move the complete folder ``staged`` to ``target`` (a checkpoint), replacing an older one of that name."""
    if os.path.exists(target):
        old = target.rstrip("/") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)
    _fsync_dir(os.path.dirname(target) or ".")


def publish_files(staged: str, target: str) -> None:
    """Move each entry of the complete folder ``staged`` into ``target`` (the final model beside the checkpoints):
    every file appears whole (``os.replace``), replacing the one of the same name."""
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(staged):
        dest = os.path.join(target, name)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        os.replace(os.path.join(staged, name), dest)
    shutil.rmtree(staged, ignore_errors=True)
    _fsync_dir(target)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def staging_dir(output_dir: str) -> str:
    return os.path.join(output_dir, STAGING_NAME)


def run_settings(args, train_dataset) -> dict[str, Any]:
    """The settings of a run that change its result if they change between a checkpoint and its resume."""
    fingerprint = getattr(train_dataset, "_fingerprint", None)
    return {"max_steps": args.max_steps, "num_train_epochs": args.num_train_epochs,
            "learning_rate": args.learning_rate, "seed": args.seed,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "train_dataset": fingerprint if fingerprint is not None else (
                None if train_dataset is None else f"{type(train_dataset).__name__} of {_length(train_dataset)} rows")}


def _length(dataset) -> str:
    try:
        return str(len(dataset))
    except TypeError:
        return "?"


def save_settings(folder: str, settings: dict[str, Any]) -> None:
    with open(os.path.join(folder, SETTINGS_NAME), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1, default=str)


def compare_settings(checkpoint: str, settings: dict[str, Any]) -> list[str]:
    """The settings that differ between ``checkpoint``'s run and this one (``name: was -> now``); a warning is
    logged when any do. Checkpoints written without the settings file compare as equal."""
    path = os.path.join(checkpoint, SETTINGS_NAME)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    now = json.loads(json.dumps(settings, default=str))
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(now) if k in saved and saved[k] != now[k]]
    if changed:
        logger.warning("Resuming %s with settings that differ from the run that wrote it, so the result will differ "
                       "from an uninterrupted run: %s.", checkpoint, "; ".join(changed))
    return changed
