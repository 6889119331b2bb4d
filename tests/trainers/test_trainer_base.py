"""BaseTrainer's one loss normalisation (``reduce_loss``): every trainer's loss goes through it."""

from types import SimpleNamespace

import pytest
import torch

from posttrain.trainers.base import BaseTrainer


def trainer(training=True, accumulation=1, processes=1, average=True):
    """The state ``reduce_loss`` reads, without building a model."""
    return SimpleNamespace(model=SimpleNamespace(training=training), current_gradient_accumulation_steps=accumulation,
                           args=SimpleNamespace(average_tokens_across_devices=average),
                           accelerator=SimpleNamespace(num_processes=processes))


def reduce(state, total, count, num_items=None):
    return float(BaseTrainer.reduce_loss(state, torch.tensor(total, dtype=torch.float64), count, num_items))


def test_local_mean_is_divided_by_accumulation_only_while_training():
    assert reduce(trainer(accumulation=4), 6.0, 3) == pytest.approx(0.5)
    assert reduce(trainer(training=False, accumulation=4), 6.0, 3) == pytest.approx(2.0)
    assert reduce(trainer(), 6.0, torch.tensor(0.0)) == pytest.approx(6.0)  # an empty micro-batch divides by 1


def test_step_count_replaces_the_local_mean_and_spans_processes():
    assert reduce(trainer(accumulation=4), 6.0, 3, num_items=12) == pytest.approx(0.5)  # not divided again
    assert reduce(trainer(accumulation=4, processes=2), 6.0, 3, num_items=12) == pytest.approx(1.0)
    assert reduce(trainer(processes=2, average=False), 6.0, 3, num_items=12) == pytest.approx(0.5)
    assert reduce(trainer(training=False), 6.0, 3, num_items=12) == pytest.approx(2.0)  # eval: the batch's mean
    assert reduce(trainer(), 0.0, 0, num_items=torch.tensor(0.0)) == 0.0  # every token masked: no NaN


@pytest.mark.parametrize("with_step_count", [False, True])
def test_accumulated_processes_give_the_update_of_one_big_batch(with_step_count):
    """2 processes x 3 micro-batches of uneven token counts: the sum of the micro-batches' reduced losses, averaged
    over the processes (as DDP averages gradients), is the token mean of the whole step with the step's count, and
    the mean of the micro-batch means without it."""
    gen = torch.Generator().manual_seed(0)
    counts = [[3, 5, 1], [4, 2, 6]]
    losses = [[torch.rand(n, generator=gen, dtype=torch.float64) for n in row] for row in counts]
    num_items = sum(map(sum, counts)) if with_step_count else None
    per_process = []
    for row in losses:
        state = trainer(accumulation=3, processes=2)
        per_process.append(sum(reduce(state, float(x.sum()), x.numel(), num_items) for x in row))
    update = sum(per_process) / 2
    every = [x for row in losses for x in row]
    if with_step_count:
        expected = float(torch.cat(every).mean())
    else:
        expected = sum(float(x.mean()) for x in every) / len(every)
    assert update == pytest.approx(expected, rel=1e-12)


def test_use_liger_kernel_where_it_cannot_run_is_an_error(monkeypatch, tmp_path):
    """Liger's kernels need the package and a CUDA GPU: elsewhere the flag fails when the config is built."""
    import importlib.util

    from posttrain import DPOConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    with pytest.raises(ValueError, match="needs the liger-kernel package"):
        DPOConfig(output_dir=str(tmp_path), use_liger_kernel=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="need a CUDA GPU"):
        DPOConfig(output_dir=str(tmp_path), use_liger_kernel=True)
