"""The end of a command-line run: where the model, checkpoints and log are, the final and best metrics, the time, and
``curves.png`` (every logged metric against the step) in the output folder."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

# shown first (in this order) when logged; then the rest of a row's metrics, alphabetically
KEY_METRICS = ("loss", "reward", "rewards/accuracies", "rewards/margins", "mean_token_accuracy", "accuracy", "kl",
               "entropy", "aux_loss")
# bookkeeping, not curves
_NOT_METRICS = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
                "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "train_loss", "num_tokens",
                "num_input_tokens_seen"}
CURVES_NAME = "curves.png"
MAX_CURVES = 12


def _metrics(row: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _ordered(names) -> list[str]:
    names = set(names)
    bare = {n.removeprefix("eval_") for n in names}
    first = [n for key in KEY_METRICS if key in bare for n in (key, f"eval_{key}") if n in names]
    return first + sorted(names - set(first))


def curves(log_history: Sequence[Mapping]) -> dict[str, tuple[list[int], list[float]]]:
    """Each logged metric's (steps, values), training and evaluation rows alike (``eval_`` names)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in log_history:
        if "step" not in row:
            continue
        for name, value in _metrics(row).items():
            if math.isfinite(value):
                steps, values = series.setdefault(name, ([], []))
                steps.append(int(row["step"]))
                values.append(value)
    return series


def plot_curves(log_history: Sequence[Mapping], path: str) -> str | None:
    """Write the logged curves (the :data:`MAX_CURVES` most telling, :data:`KEY_METRICS` first) to ``path`` as a
    PNG; returns the path, or None when nothing was logged or matplotlib is not installed (``posttrain[plot]``)."""
    series = curves(log_history)
    if not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = _ordered(series)[:MAX_CURVES]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _values(metrics: Mapping[str, float], limit: int = 8) -> str:
    return ", ".join(f"{name} {metrics[name]:.4g}" for name in _ordered(metrics)[:limit])


def summarize(trainer, output_dir: str, seconds: float, log_file: str | None = None,
              curves_file: str | None = None) -> str:
    """The run's summary, as printed at the end of every training command."""
    from ..trainers.run_dir import checkpoints

    state, args = trainer.state, trainer.args
    history = state.log_history
    lines = [f"Done in {_duration(seconds)}: {state.global_step} optimizer steps, {state.epoch or 0:.2f} epochs."]
    lines.append(f"  model:       {os.path.abspath(output_dir)}")
    found = checkpoints(output_dir)
    if found:
        lines.append(f"  checkpoints: {len(found)} (last: {os.path.basename(found[-1])})")
    if log_file:
        lines.append(f"  log:         {log_file}")
    if curves_file:
        lines.append(f"  curves:      {curves_file}")
    elif curves(history):
        lines.append("  curves:      not drawn: matplotlib is not installed (pip install 'posttrain[plot]')")
    train_rows = [row for row in history if "loss" in row and "step" in row]
    if train_rows:
        lines.append(f"  final train: {_values(_metrics(train_rows[-1]))} (step {train_rows[-1]['step']})")
    eval_rows = [row for row in history if "eval_loss" in row]
    if eval_rows:
        lines.append(f"  final eval:  {_values(_metrics(eval_rows[-1]))} (step {eval_rows[-1].get('step')})")
        metric = args.metric_for_best_model or "loss"
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        scored = [row for row in eval_rows if key in row]
        if scored:
            pick = max if args.greater_is_better else min
            best = pick(scored, key=lambda row: row[key])
            where = f", checkpoint {state.best_model_checkpoint}" if state.best_model_checkpoint else ""
            lines.append(f"  best eval:   {key} {best[key]:.4g} at step {best.get('step')}{where}")
    return "\n".join(lines)


__all__ = ["curves", "plot_curves", "summarize", "CURVES_NAME"]
