"""The order in which the online trainers read their prompts: :class:`RepeatedPromptSampler` (a dataset), :class:`RepeatedPromptStream` (a stream)."""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset, Sampler


class RepeatedPromptSampler(Sampler[int]):
    """Dataset indices for online training: for every generation batch, ``prompts_per_batch`` prompts (shuffled,
    without replacement within an epoch), each index repeated ``num_generations`` times consecutively; the whole
    generation batch is then yielded ``repeats`` times. Prompts that do not fill a last generation batch are
    skipped that epoch. Every process draws the same order (seeded by ``seed`` and the epoch)."""

    def __init__(self, num_prompts: int, num_generations: int, prompts_per_batch: int, repeats: int = 1,
                 shuffle: bool = True, seed: int = 0):
        self.num_prompts, self.num_generations = num_prompts, num_generations
        self.prompts_per_batch, self.repeats = prompts_per_batch, repeats
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_batches(self) -> int:
        return self.num_prompts // self.prompts_per_batch

    def __len__(self) -> int:
        return self.num_batches * self.prompts_per_batch * self.num_generations * self.repeats

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.num_prompts, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.num_prompts))
        p = self.prompts_per_batch
        for b in range(self.num_batches):
            chunk = [i for i in order[b * p : (b + 1) * p] for _ in range(self.num_generations)]
            for _ in range(self.repeats):
                yield from chunk


class RepeatedPromptStream(IterableDataset):
    """:class:`RepeatedPromptSampler`'s order for a stream of rows (a ``datasets.IterableDataset``, which has no
    indices): the rows are read ``prompts_per_batch`` at a time (a last batch they do not fill is dropped), each row
    repeated ``num_generations`` times consecutively, the whole generation batch yielded ``repeats`` times. Every
    process reads the same stream in the same order (shuffle it, seeded, before); accelerate hands each its slice of
    every batch."""

    def __init__(self, rows, num_generations: int, prompts_per_batch: int, repeats: int = 1):
        self.rows, self.num_generations = rows, num_generations
        self.prompts_per_batch, self.repeats = prompts_per_batch, repeats

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.rows, "set_epoch"):  # reseeds a shuffled stream's buffer
            self.rows.set_epoch(epoch)

    def __iter__(self):
        batch = []
        for row in self.rows:
            batch.append(row)
            if len(batch) == self.prompts_per_batch:
                chunk = [r for r in batch for _ in range(self.num_generations)]
                for _ in range(self.repeats):
                    yield from chunk
                batch = []


__all__ = ["RepeatedPromptSampler", "RepeatedPromptStream"]
