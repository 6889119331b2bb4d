"""Binary Classifier Optimization: ``BCOConfig`` and ``BCOTrainer`` (TRL-compatible names).

BCO is the ``loss_type="bco"`` path of :class:`~posttrain.trainers.kto.KTOTrainer` (reward shifted by
the running reward mean δ, :class:`~posttrain.losses.kto.RunningMean`, saved with checkpoints),
plus optional **underlying distribution matching** (UDM): when prompts of desirable and undesirable
examples come from different distributions, a small logistic-regression classifier on prompt
embeddings estimates ``p(desirable | prompt)`` and each undesirable example's loss is weighted by the
density ratio ``p / (1 - p)``, clamped to ``[min_density_ratio, max_density_ratio]``
(:func:`~posttrain.losses.kto.udm_density_ratio`). UDM is on when an ``embedding_func`` is
given; :func:`model_embedding_func` turns any model into one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import pad_sequences
from ..losses.kto import bco_loss, udm_density_ratio
from .base import checkpointing_field
from .kto import KTOConfig, KTOTrainer

logger = logging.getLogger("posttrain")


@dataclass
class BCOConfig(KTOConfig):
    """Configuration of :class:`BCOTrainer`. Field names and defaults follow TRL's ``BCOConfig``."""

    gradient_checkpointing: bool = checkpointing_field(False, "as in TRL 0.21, the last TRL with this trainer")

    loss_type: str = field(default="bco", metadata={"help": "Always 'bco' for BCOTrainer.", "choices": ["bco"]})
    prompt_sample_size: int = field(
        default=1024, metadata={"help": "Prompts per class (desirable / undesirable) to fit the UDM classifier on."}
    )
    min_density_ratio: float = field(default=0.5, metadata={"help": "Lower clamp of the UDM density ratio."})
    max_density_ratio: float = field(default=10.0, metadata={"help": "Upper clamp of the UDM density ratio."})

    def __post_init__(self):
        if self.loss_type != "bco":
            raise ValueError(f"BCOConfig.loss_type must be 'bco', got {self.loss_type!r} (use KTOConfig for others).")
        if not 0 < self.min_density_ratio <= self.max_density_ratio:
            raise ValueError("Need 0 < min_density_ratio <= max_density_ratio.")
        super().__post_init__()


class PromptClassifier:
    """Logistic regression ``p(desirable | embedding)`` in pure torch.

    Features are standardised, the two classes are weighted to count equally, the weights have a small
    L2 penalty, and the fit is full-batch L-BFGS.
    """

    def __init__(self, l2: float = 1e-3, max_iter: int = 200):
        self.l2 = l2
        self.max_iter = max_iter
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> PromptClassifier:
        x = x.detach().double().cpu()
        y = y.detach().double().cpu().reshape(-1)
        self.mu = x.mean(0)
        self.sd = x.std(0).clamp(min=1e-6) if x.shape[0] > 1 else torch.ones(x.shape[1], dtype=x.dtype)
        z = (x - self.mu) / self.sd
        n_pos = y.sum().clamp(min=1)
        n_neg = (1 - y).sum().clamp(min=1)
        sample_w = torch.where(y > 0.5, y.numel() / (2 * n_pos), y.numel() / (2 * n_neg))
        w = torch.zeros(z.shape[1], dtype=z.dtype, requires_grad=True)
        b = torch.zeros(1, dtype=z.dtype, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = z @ w + b
            loss = (sample_w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).mean()
            loss = loss + self.l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probability that each row of ``x`` is a desirable example's prompt, shape (n,)."""
        if self.weight is None:
            raise RuntimeError("PromptClassifier.fit must be called first.")
        z = (x.detach().double().cpu() - self.mu) / self.sd
        return torch.sigmoid(z @ self.weight + self.bias).float()


def model_embedding_func(model, layer: int = -1) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An ``embedding_func`` from a transformers model: the mean of one layer's hidden states over the
    prompt tokens (``attention_mask`` 1), computed without gradient."""

    @torch.no_grad()
    def embed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True)
        model.train(was)
        h = out.hidden_states[layer].float()
        m = attention_mask.to(h.device).unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    return embed


class BCOTrainer(KTOTrainer):
    """BCO on unpaired (or automatically unpaired) preference data; see the module docstring.

    ``embedding_func(input_ids, attention_mask) -> (B, D)`` turns on UDM; prompts are given to it as
    the training tokenizer's ids, or re-tokenized with ``embedding_tokenizer`` when one is given.
    Logs ``delta`` (the running reward mean) and KTO's reward metrics.
    """

    config_class = BCOConfig
    _run_suffix = "BCO"
    _trl_1x_names = False  # TRL's BCO (experimental) keeps the prompt_input_ids names

    def __init__(self, model, ref_model=None, args: BCOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, callbacks=None, optimizers=(None, None),
                 preprocess_logits_for_metrics=None, peft_config=None, compute_metrics=None,
                 optimizer_cls_and_kwargs=None, embedding_func=None, embedding_tokenizer=None):
        if args is not None and not isinstance(args, BCOConfig):
            raise TypeError(f"BCOTrainer needs a BCOConfig, got {type(args).__name__}.")
        self.embedding_func = embedding_func
        self.embedding_tokenizer = embedding_tokenizer
        self.udm_classifier: PromptClassifier | None = None
        super().__init__(model, ref_model, args, train_dataset, eval_dataset, processing_class, data_collator,
                         callbacks, optimizers, preprocess_logits_for_metrics, peft_config, compute_metrics,
                         optimizer_cls_and_kwargs)
        if embedding_func is not None and self.train_dataset is not None:
            self.udm_classifier = self._fit_udm_classifier()

    # -- UDM ----------------------------------------------------------------------------------------
    def embed_prompts(self, prompts: list[list[int]]) -> torch.Tensor:
        """Embeddings (n, D) of prompts given as training-tokenizer ids."""
        if self.embedding_tokenizer is not None:
            texts = self.tokenizer_.batch_decode(prompts, skip_special_tokens=False)
            enc = self.embedding_tokenizer(texts, padding=True, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids = pad_sequences(prompts, self.tokenizer_.pad_token_id)
            mask = pad_sequences([[1] * len(p) for p in prompts], 0)
        return self.embedding_func(ids, mask).detach().float()

    def _embed_in_batches(self, prompts: list[list[int]]) -> torch.Tensor:
        bs = max(self.args.per_device_eval_batch_size, 1)
        return torch.cat([self.embed_prompts(prompts[i: i + bs]) for i in range(0, len(prompts), bs)])

    def _fit_udm_classifier(self) -> PromptClassifier | None:
        ds = self.train_dataset
        labels = torch.tensor(list(ds["label"]), dtype=torch.bool)
        gen = torch.Generator().manual_seed(self.args.seed)
        picks = []
        for cls in (True, False):
            idx = (labels == cls).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                logger.warning("BCO UDM: no %s examples; density-ratio weighting is off.",
                               "desirable" if cls else "undesirable")
                return None
            idx = idx[torch.randperm(idx.numel(), generator=gen)[: self.args.prompt_sample_size]]
            picks.append(idx)
        order = torch.cat(picks).tolist()
        prompts = [ds[i]["prompt_input_ids"] for i in order]
        x = self._embed_in_batches(prompts)
        y = torch.cat([torch.ones(len(picks[0])), torch.zeros(len(picks[1]))])
        return PromptClassifier().fit(x, y)

    def _bco_loss(self, logps, ref_logps, labels, batch):
        """BCO's loss with UDM's density-ratio weights on the undesirable examples (when an embedding function
        fitted the prompt classifier)."""
        return bco_loss(logps, ref_logps, labels, beta=self.args.beta, delta=self.running.mean,
                        udm_weights=self._udm_weights(batch, labels))

    def _udm_weights(self, batch, labels) -> torch.Tensor | None:
        """Density-ratio weights of the undesirable examples of ``batch``, or None without a classifier."""
        if self.udm_classifier is None or not bool((~labels).any()):
            return None
        ids, cmask = batch["input_ids"], batch["completion_mask"].bool()
        if "sequence_index" in batch:  # padding-free: the tokens of sequence i, wherever its row is
            index = batch["sequence_index"]
            seqs = [(ids[index == i], cmask[index == i]) for i in range(labels.shape[0])]
        else:
            seqs = [(ids[i], cmask[i] | ~batch["attention_mask"][i].bool()) for i in range(ids.shape[0])]
        # the prompt is every token before the first completion token
        prompts = [s[: int(m.int().argmax())].tolist() if bool(m.any()) else s.tolist() for s, m in seqs]
        weights = torch.ones(labels.shape[0], device=labels.device)
        undesirable = (~labels).nonzero(as_tuple=True)[0].tolist()
        probs = self.udm_classifier.predict_proba(self.embed_prompts([prompts[i] for i in undesirable]))
        ratios = udm_density_ratio(probs, min_density_ratio=self.args.min_density_ratio,
                                   max_density_ratio=self.args.max_density_ratio)
        weights[undesirable] = ratios.to(weights.device)
        self.record_pooled("udm_weight", ratios)
        return weights


__all__ = ["BCOConfig", "BCOTrainer", "PromptClassifier", "model_embedding_func"]
