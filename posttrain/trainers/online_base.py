"""The shared core of the online trainers (GRPO, RLOO, PPO, and the pairwise Online DPO, XPO and Nash-MD): they
sample completions from the policy being trained, score them (reward functions, reward models, judges), and train on
the samples.

* **Configuration** — :class:`OnlineConfig`: prompt and completion budgets, sampling options, the generation
  batch (``num_generations``, ``generation_batch_size`` / ``steps_per_generation``, ``num_iterations``), reward
  weights, ``beta`` (KL to a reference policy; 0 keeps no reference in memory). Inconsistent batch settings are
  errors when the config is built.
* **Data** — :meth:`OnlineTrainer.prepare_dataset` needs a ``prompt`` column (text or message list); the prompts
  are tokenized once (standard: the tokenizer; conversational: the chat template with the generation prompt) into
  ``prompt_input_ids``; a prompt longer than ``max_prompt_length`` keeps its *last* tokens (a warning says how
  many were cut). Every other column is kept and given to the reward functions.
* **Sampling layout** — :class:`RepeatedPromptSampler`: a *generation batch* of ``generation_batch_size``
  completions is ``generation_batch_size / num_generations`` prompts, each repeated ``num_generations`` times
  consecutively (completion ``prompt * G + j``, the group layout of :mod:`posttrain.losses.policy`). Each process
  gets a contiguous slice of it, ``per_device_train_batch_size * steps_per_generation`` completions, as one
  dataloader item; that item is handed to the trainer ``steps_per_generation * num_iterations`` times. The layout is
  data, not code: :meth:`OnlineTrainer.groups` views one value per completion as (prompts, ``num_generations``) and
  :meth:`OnlineTrainer.members` picks completion ``j`` of every prompt (the pairwise trainers' two sides).
* **Rollout** — :meth:`OnlineTrainer._prepare_inputs` generates with the rollout backend
  (:mod:`posttrain.rollout.backends`: :func:`posttrain.rollout.generate`, or vLLM with ``use_vllm``, whose weights
  are synced first when an optimizer step changed them) at the first of those micro-steps, scores with
  :class:`~posttrain.rollout.RewardScorer` (callables get ``prompts``,
  ``completions``, ``completion_ids``, ``trainer_state`` and the dataset columns), splits the slice into
  ``steps_per_generation`` micro-batches, lets the subclass shape this process's rewards with the batches'
  log-probs (:meth:`OnlineTrainer.shape_rewards`: RLOO's KL penalty) and add per-token signals to them
  (:meth:`OnlineTrainer.add_token_signals`: PPO's GAE advantages), gathers the rewards from all processes and lets
  the subclass turn them into per-completion tensors (:meth:`OnlineTrainer.process_rewards`: GRPO's group
  advantages). Log-probs of the
  sampling policy (``old_logps``) are computed once per generation batch only when some micro-batch is trained
  after an optimizer step (``num_iterations > 1`` or ``gradient_accumulation_steps`` not a multiple of
  ``steps_per_generation``); otherwise the loss uses the detached current log-probs (ratio exactly 1). Reference
  log-probs (``beta > 0``) are computed once per generation batch too.
* **Log-probs** — :meth:`OnlineTrainer.token_logps`: the output head projects only the positions that predict
  a completion token; log-probs and entropies are of ``logits / T`` with ``T =``
  :meth:`OnlineTrainer.logps_temperature`: the sampling temperature (the distribution sampled from, which the
  importance ratios of GRPO, RLOO and PPO are against), or 1 for the Online DPO family, whose objective is about
  the policy's own probabilities.
* **Loss** — each subclass's ``compute_loss`` calls a loss of :mod:`posttrain.losses` and hands its sum to
  :meth:`~posttrain.trainers.base.BaseTrainer.reduce_loss`; ``num_items_in_batch`` is the generation batch's count of
  loss items (:meth:`OnlineTrainer.loss_items`: completion tokens, none for a truncated completion with
  ``mask_truncated_completions``, half a pair for the pairwise trainers) scaled to one optimizer step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..data import DatasetFormatError, column_names, first_row, is_streaming, map_options, refuse_transform
from ..data.formats import is_conversational_value
from ..data.templates import require_chat_template
from ..data.preference import build_rows
from ..data.sampling import RepeatedPromptSampler, RepeatedPromptStream
from ..data.tokenize import chat_template_ids, row_template_kwargs, truncate
from ..losses.tokens import nanstd
from ..models import disable_dropout, is_peft_model, load_frozen, load_tokenizer, unwrap
from ..models.sharding import frozen_copy, is_zero3_partitioned
from ..rollout import Generations, RewardScorer
from ..rollout.backends import make_backend
from ..rollout.scoring import completion_for_model
from .agents import AgentRollouts
from .base import BaseTrainer, PosttrainConfig, check_choice, require_positive
from .logprobs import ROW_KEYS, token_logps
from .reference import ReferencePolicy

logger = logging.getLogger("posttrain")


# =============================================================================================
# configuration
# =============================================================================================


@dataclass
class OnlineConfig(PosttrainConfig):
    """Options every online trainer shares (TRL's names). Lengths are in tokens."""

    completions_per_row: ClassVar[int] = 1
    """Completions per unit of ``per_device_train_batch_size`` (1: it counts completions, as in GRPO; 2 for the
    pairwise trainers, where it counts prompts)."""

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})
    chat_template_path: str | None = field(default=None, metadata={"help": "Tokenizer folder or .jinja file whose chat template to use."})
    chat_template_kwargs: dict | None = field(default=None, metadata={"help": (
        "Keyword arguments for the chat template (e.g. {\"enable_thinking\": false}); a row's own "
        "'chat_template_kwargs' column overrides them for that row.")})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad the rows of prompt + completion to a multiple of this length."})
    shuffle_dataset: bool = field(default=True, metadata={"help": "Draw the prompts of each epoch in random order."})
    disable_dropout: bool = field(default=False, metadata={"help": "Set every dropout probability of the model(s) to 0."})
    # -- prompts and generation --
    max_prompt_length: int | None = field(default=512, metadata={"help": "Prompts longer than this keep their last tokens (None: no limit)."})
    max_completion_length: int = field(default=256, metadata={"help": "Maximum tokens generated per completion."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (the group size)."})
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Completions generated at once, all processes together (default: per_device_train_batch_size "
                  "* num_processes * steps_per_generation). A multiple of num_generations."},
    )
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "Micro-steps trained on each generation batch (default: gradient_accumulation_steps)."}
    )
    num_iterations: int = field(default=1, metadata={"help": "Passes over each generation batch (mu of GRPO)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (GRPO, RLOO, PPO: also applied to the training log-probs)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest token set with this probability."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k most likely tokens (None or 0: all)."})
    min_p: float | None = field(default=None, metadata={"help": "Drop tokens less likely than min_p times the most likely one."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty (> 1) on tokens already in the prompt or completion."})
    generation_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Extra keyword arguments for model.generate (JSON string on the command line)."}
    )
    fast_generation: bool = field(default=True, metadata={
        "help": "Generate with posttrain's own decode loop where it covers the model and options (Llama/Qwen2 on "
                "CPU; no repetition penalty; docs/grpo.md), else model.generate. False: always model.generate."})
    # -- vLLM generation (docs/vllm.md) --
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM (pip install posttrain[vllm]; needs a CUDA GPU)."})
    vllm_mode: str = field(default="server", metadata={
        "help": "'server': a separate `posttrain vllm-serve` process; 'colocate': vLLM inside each training process.",
        "choices": ["server", "colocate"]})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "vLLM model implementation: 'vllm' or 'transformers'.",
                                                           "choices": ["vllm", "transformers"]})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "Server mode: the server's URL (overrides vllm_server_host/port)."})
    vllm_server_host: str = field(default="127.0.0.1", metadata={"help": "Server mode: the server's host (a server on "
                                  "another machine needs $POSTTRAIN_VLLM_TOKEN on both sides, docs/vllm.md)."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Server mode: the server's port."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Server mode: seconds to wait for the server to come up."})
    vllm_group_port: int = field(default=51216, metadata={"help": "Server mode: port of the NCCL weight-sync group."})
    vllm_weight_sync_transport: str = field(default="nccl", metadata={
        "help": "Server mode: send weights by 'nccl' (GPU to GPU) or 'http' (in the request bodies; no NCCL needed).",
        "choices": ["nccl", "http"]})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "Colocate mode: fraction of the GPU's memory vLLM may use."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Colocate mode: training processes sharing one vLLM engine (tensor parallel)."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Colocate mode: release vLLM's weights and KV cache between generations."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "Colocate mode: vLLM's max_model_len (default: max_prompt_length + max_completion_length)."})
    # -- tools and environments (GRPO, RLOO; docs/agents.md) --
    max_tool_calling_iterations: int | None = field(default=None, metadata={
        "help": "With tools or an environment: the most tool-calling (or environment) rounds after the first assistant "
                "turn of a rollout (None: until the model stops calling tools, the episode ends, or "
                "max_completion_length, which bounds the whole multi-turn completion)."})
    tool_call_timeout: float | None = field(default=60.0, metadata={
        "help": "Seconds a tool call may take; one that overruns is answered with an error message (None: no limit)."})
    # -- rewards and reference --
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function (default: all 1)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; 0 creates no reference model."})
    # -- logging --
    log_completions: bool = field(default=False, metadata={"help": "Log sample prompts, completions and rewards at every logging step."})
    num_completions_to_print: int | None = field(default=None, metadata={"help": "Completions shown by log_completions (None: 5)."})

    def __post_init__(self):
        if isinstance(self.generation_kwargs, str):
            self.generation_kwargs = json.loads(self.generation_kwargs)
        if self.use_vllm:
            self._check_vllm()
        require_positive(self, "max_completion_length", "num_generations", "num_iterations", "max_prompt_length")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        self._check_beta()
        super().__post_init__()
        self._resolve_generation_batch()

    def _check_beta(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}.")

    def _check_vllm(self) -> None:
        from ..rollout.vllm_backend import VLLM_MODES, WEIGHT_SYNC_TRANSPORTS, require_vllm

        check_choice("vllm_mode", self.vllm_mode, VLLM_MODES)
        check_choice("vllm_weight_sync_transport", self.vllm_weight_sync_transport, WEIGHT_SYNC_TRANSPORTS)
        if self.vllm_tensor_parallel_size < 1:
            raise ValueError(f"vllm_tensor_parallel_size must be >= 1, got {self.vllm_tensor_parallel_size}.")
        if not (self.vllm_mode == "server" and self.vllm_weight_sync_transport == "http"):
            # (the server mode's HTTP transport needs no vLLM in the trainer)
            require_vllm(f"use_vllm=True (vllm_mode={self.vllm_mode!r}; use_vllm=False generates with transformers)")

    def _resolve_generation_batch(self) -> None:
        per_step = self.per_device_train_batch_size * self.world_size * self.completions_per_row
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("Set generation_batch_size or steps_per_generation, not both (one determines the other: "
                             "generation_batch_size = per_device_train_batch_size * num_processes * steps_per_generation).")
        if self.generation_batch_size is None:
            if self.steps_per_generation is None:
                self.steps_per_generation = self.gradient_accumulation_steps
            if self.steps_per_generation < 1:
                raise ValueError(f"steps_per_generation must be >= 1, got {self.steps_per_generation}.")
            self.generation_batch_size = per_step * self.steps_per_generation
        else:
            if self.generation_batch_size < 1 or self.generation_batch_size % per_step != 0:
                raise ValueError(
                    f"generation_batch_size={self.generation_batch_size} must be a positive multiple of "
                    f"per_device_train_batch_size * num_processes = {per_step} (each process trains on "
                    "per_device_train_batch_size completions per micro-step).")
            self.steps_per_generation = self.generation_batch_size // per_step
        if self.generation_batch_size % self.num_generations != 0:
            raise ValueError(
                f"num_generations={self.num_generations} must divide the generation batch of "
                f"{self.generation_batch_size} completions (per_device_train_batch_size={self.per_device_train_batch_size}"
                f" x {self.world_size} process(es) x steps_per_generation={self.steps_per_generation}), so that every "
                "prompt gets all its completions in the same batch. Change num_generations, per_device_train_batch_size, "
                "steps_per_generation or generation_batch_size.")
        if self.eval_strategy != "no":
            per_eval, g = self.per_device_eval_batch_size * self.world_size * self.completions_per_row, \
                self.eval_generations()
            if per_eval % g != 0:
                raise ValueError(
                    f"The {g} completions sampled per prompt in evaluation must divide the evaluation batch of "
                    f"{per_eval} completions (per_device_eval_batch_size={self.per_device_eval_batch_size} x "
                    f"{self.world_size} process(es)).")

    def eval_generations(self) -> int:
        """Completions sampled per prompt in evaluation: ``num_generations`` (GRPO/RLOO: ``num_generations_eval``)."""
        return self.num_generations


def _rows_as_list(rows):
    """Collator of online trainers: the dataset rows themselves (generation happens in the trainer)."""
    return list(rows)


# =============================================================================================
# the trainer core
# =============================================================================================


class OnlineTrainer(BaseTrainer):
    """Shared core of the online trainers; see the module docstring.

    Subclasses implement :meth:`process_rewards` (rewards of the whole generation batch to per-completion
    tensors) and ``compute_loss``; they may override :meth:`sample_completions` (who generates),
    :meth:`score_completions` (reward functions, or e.g. a judge), :meth:`shape_rewards`,
    :meth:`add_token_signals`, :meth:`loss_items` (what the loss is averaged over), :meth:`uses_reference` and
    :meth:`reference_source`; ``ref_model`` (given to ``__init__``) is the reference to use instead of a copy.
    """

    requires_reward_funcs = True
    supports_agents = False  # tools= and environment_factory= (GRPO, RLOO)

    config_class = OnlineConfig
    _input_columns = ("prompt",)

    def __init__(self, model, reward_funcs=None, args: OnlineConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, reward_processing_classes=None, callbacks=None, optimizers=(None, None),
                 peft_config=None, ref_model=None, tools=None, environment_factory=None, tool_call_parser=None,
                 rollout_func=None):
        self.agent = None
        if (tools or environment_factory is not None or rollout_func is not None) and not self.supports_agents:
            raise ValueError(f"{type(self).__name__} does not take tools, environments or a rollout_func; GRPOTrainer "
                             "and RLOOTrainer do (docs/agents.md).")
        if rollout_func is not None and (tools or environment_factory is not None):
            raise ValueError("rollout_func replaces the trainer's rollouts; tools and environment_factory are part of "
                             "them. Give one or the other.")
        self.rollout_func = rollout_func
        self._rollout_columns: dict[str, list] = {}  # rollout_func's extra fields, for the reward functions
        if tools or environment_factory is not None:
            self.agent = AgentRollouts(tools, environment_factory, tool_call_parser=tool_call_parser,
                                       tool_timeout=getattr(args, "tool_call_timeout", 60.0))
        no_funcs = reward_funcs is None or (isinstance(reward_funcs, (list, tuple)) and not reward_funcs)
        env_reward = self.agent is not None and self.agent.env_has_reward
        if no_funcs and self.requires_reward_funcs and not env_reward:
            raise ValueError(f"{type(self).__name__} needs reward_funcs: a reward function, a reward model (object, "
                             "name or path) or a list of them" + (" (or an environment that gives the reward)"
                                                                  if self.supports_agents else "") + ".")
        self._truncated_prompts = 0
        super().__init__(model, args, processing_class=processing_class, peft_config=peft_config,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks,
                         optimizers=optimizers)
        args = self.args
        # Reward models are frozen models (ZeRO-3: an inference engine each, partitioned) that score in the training
        # precision (TRL 1.x's GRPO: accelerate's evaluation-mode preparation), so they store their linear layers in it.
        given = [] if no_funcs else list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        weights = args.reward_weights
        if env_reward:  # the environment's reward: one more source, weight 1 unless reward_weights has one for it
            extra = self.agent.reward_functions()
            if weights is not None and len(weights) == len(given):
                weights = list(weights) + [1.0] * len(extra)
            if reward_processing_classes is not None:
                reward_processing_classes = (list(reward_processing_classes) if isinstance(
                    reward_processing_classes, (list, tuple)) else [reward_processing_classes]) + [None] * len(extra)
            given = given + extra
            no_funcs = False
        self.scorer = None if no_funcs else RewardScorer(given, reward_processing_classes, weights,
                                                         model_context=self.autocast_region)
        if self.scorer is not None:
            self.scorer.processing_classes = [
                self._reward_tokenizer(f) if tok is None and isinstance(f, torch.nn.Module) else tok
                for f, tok in zip(self.scorer.reward_funcs, self.scorer.processing_classes)]
            self.scorer.reward_funcs = [  # those given by name/path were loaded here: stored in the training precision
                self.prepare_frozen_model(f, autocast_only=isinstance(g, str)) if isinstance(f, torch.nn.Module) else f
                for f, g in zip(self.scorer.reward_funcs, given)]
        if args.disable_dropout:
            disable_dropout(self.model)
        self.reference = ReferencePolicy.for_policy(self.reference_source, self._setup_reference(ref_model),
                                                    autocast=self.autocast_region)
        self.rollout_backend = make_backend(args, lambda: self.model, self.tokenizer_, self.accelerator)
        prompts_per_batch = args.generation_batch_size // args.num_generations
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__") and len(self.train_dataset) < prompts_per_batch:
            raise ValueError(
                f"The train dataset has {len(self.train_dataset)} prompts, but one generation batch needs "
                f"{prompts_per_batch} (generation_batch_size={args.generation_batch_size} / num_generations="
                f"{args.num_generations}). Use more prompts or a smaller generation batch.")
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(  # how completions are sampled (sampling_kwargs); TRL's attribute
            max_new_tokens=args.max_completion_length, do_sample=True, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k or 0, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            pad_token_id=self.tokenizer_.pad_token_id, eos_token_id=self.tokenizer_.eos_token_id)
        self._extra_columns: dict[str, list] = {}  # log_extra's columns of the latest generation batch
        self.use_vllm = args.use_vllm  # TRL's attribute: whether completions come from vLLM (the rollout backend)
        self._buffer: list[dict[str, Any]] | None = None
        self._micro_step = 0
        self._last_samples: list[dict[str, Any]] = []

    def _reward_tokenizer(self, model):
        """The tokenizer of a reward model given as an object without one: its own (from the folder it was loaded
        from, as TRL's GRPO), else the policy's (as TRL's Nash-MD and XPO), with a note in the log."""
        name = getattr(getattr(unwrap(model), "config", None), "_name_or_path", "") or ""
        if name and os.path.isdir(name):
            try:
                return load_tokenizer(name)
            except (OSError, ValueError, TypeError):
                pass
        logger.info("Reward model %r: no tokenizer given or found in its folder; it reads the policy's tokenizer "
                    "(pass reward_processing_classes if it was trained with another).", name or type(model).__name__)
        return self.tokenizer_

    @property
    def reward_funcs(self) -> list:
        """The reward models and functions (TRL's attribute), as the scorer holds them (models loaded)."""
        return list(self.scorer.reward_funcs) if self.scorer is not None else []

    @property
    def reward_weights(self) -> torch.Tensor | None:
        """The weights of the reward functions (F,), TRL's attribute; None without reward functions."""
        return self.scorer.reward_weights if self.scorer is not None else None

    @property
    def reward_processing_classes(self) -> list:
        """Each reward function's processing class (None for a callable), TRL's attribute."""
        return list(self.scorer.processing_classes) if self.scorer is not None else []

    # -- data ------------------------------------------------------------------------------------
    def make_collator(self, processing_class, args):
        return _rows_as_list

    def _remove_unused_columns(self, dataset, description=None):
        return dataset  # every column reaches the reward functions

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator  # a stream's rows too

    def prepare_dataset(self, dataset, processing_class, args: OnlineConfig, split: str):
        if dataset is None:
            return None
        refuse_transform(dataset, split)
        columns = column_names(dataset)
        if "prompt" not in columns and "input_ids" in columns:  # TRL 0.x PPO's data: the prompts tokenized
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            dataset = dataset.map(
                lambda ex: {"prompt": tokenizer.decode(ex["input_ids"], skip_special_tokens=True),
                            "prompt_input_ids": list(ex["input_ids"])},
                remove_columns=[c for c in ("input_ids", "attention_mask", "lengths") if c in columns],
                **map_options(dataset, args.dataset_num_proc, f"Reading {split}'s tokenized prompts"))
            columns = column_names(dataset)
        if "prompt" not in columns:
            raise DatasetFormatError(
                f"{type(self).__name__} needs a 'prompt' column (text, or a list of messages), but the {split} dataset "
                f"has {sorted(columns)}. Expected rows like {{\"prompt\": \"...\"}} or "
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"...\"}]}; other columns go to the reward functions.")
        row = first_row(dataset, split)
        if "prompt_input_ids" in columns:
            return dataset
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if is_conversational_value(row["prompt"]):
            require_chat_template(tokenizer, f"The {split} dataset")
        elif self.agent is not None:
            raise DatasetFormatError(
                f"Tools and environments need conversational prompts (lists of messages, rendered by the chat template "
                f"with the tools), but the {split} dataset's prompts are plain text. Write each prompt as "
                "[{\"role\": \"user\", \"content\": \"...\"}].")
        limit = args.max_prompt_length
        streaming = is_streaming(dataset)
        warned = []

        def tokenize(example, row):
            prompt = example["prompt"]
            if is_conversational_value(prompt):
                ids = chat_template_ids(tokenizer, prompt, add_generation_prompt=True,
                                        **row_template_kwargs(example, self._template_kwargs(args, example, row), row))
            elif isinstance(prompt, str):
                ids = tokenizer(prompt)["input_ids"]
            else:
                raise DatasetFormatError(f"Row {row} (0-based), column 'prompt': expected a string or a list of "
                                         f"{{'role', 'content'}} messages, got {type(prompt).__name__}.")
            if not ids:
                raise DatasetFormatError(f"Row {row} (0-based), column 'prompt': the prompt has no tokens; every row needs a "
                                         "non-empty prompt.")
            cut = limit is not None and len(ids) > limit
            if not streaming:  # counted below, then truncated
                return {"prompt_input_ids": ids, "_prompt_truncated": cut}
            if cut and not warned:  # a stream is not read ahead: truncated as it is read, a warning at the first
                warned.append(True)
                logger.warning("%s prompts longer than max_prompt_length=%d tokens keep only their last %d tokens "
                               "(row %d: %d tokens).", split, limit, limit, row, len(ids))
            return {"prompt_input_ids": truncate(ids, limit, "keep_end") if cut else ids}

        dataset = dataset.map(tokenize, with_indices=True,
                              **map_options(dataset, args.dataset_num_proc, f"Tokenizing {split} prompts"))
        if streaming:
            return dataset
        cut = sum(dataset["_prompt_truncated"])
        dataset = dataset.remove_columns("_prompt_truncated")
        if cut:
            self._truncated_prompts += cut
            logger.warning("%d of %d %s prompts are longer than max_prompt_length=%d tokens and keep only their last %d "
                           "tokens.", cut, len(dataset), split, limit, limit)
            dataset = dataset.map(
                lambda ex: {"prompt_input_ids": truncate(ex["prompt_input_ids"], limit, "keep_end")},
                num_proc=args.dataset_num_proc, desc=f"Truncating {split} prompts")
        return dataset

    def _template_kwargs(self, args, example=None, row=None) -> dict[str, Any]:
        """The chat template's keyword arguments of a prompt: the config's, and the schemas of the tools its rollout
        may call."""
        return {**dict(args.chat_template_kwargs or {}), **(self.agent.template_kwargs(example, row) if self.agent else {})}

    def settle_streaming(self, args, train: bool) -> None:
        """As every trainer's (:meth:`BaseTrainer.settle_streaming`), and: a stream cannot be dispatched from the main
        process here at all (rows are lists of prompts, which accelerate cannot concatenate), and one read by several
        dataloader workers would split the groups of repeated prompts (``RepeatedPromptStream``)."""
        if args.accelerator_config.dispatch_batches:
            raise ValueError("Iterable datasets require `dispatch_batches=False`, but it is set to `True` in "
                             "`accelerator_config`. Please set it to `False` (each process then reads its share of "
                             "the stream).")
        super().settle_streaming(args, train)
        if train and args.dataloader_num_workers:
            logger.warning("dataloader_num_workers=%d set to 0: the train dataset is a stream, read in one process so "
                           "that each prompt's group stays together.", args.dataloader_num_workers)
            args.dataloader_num_workers = 0

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        """A stream (which takes no sampler) is read in :class:`RepeatedPromptStream`'s order: the sampler's, the
        whole-split shuffle becoming a buffered one."""
        if not is_streaming(dataset):
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        args = self.args
        if is_training and args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        if is_training:  # the samplers' layouts (get_train_dataloader, _get_eval_sampler)
            per_process, repeats = batch_size, args.steps_per_generation * args.num_iterations
        else:
            per_process, repeats = args.per_device_eval_batch_size * args.completions_per_row, 1
        g = args.num_generations if is_training else args.eval_generations()
        dataset = RepeatedPromptStream(dataset, g, per_process * args.world_size // g, repeats)
        workers = args.dataloader_num_workers
        args.dataloader_num_workers = 0  # one reader, so that each prompt's group stays together (an eval stream too)
        try:
            return super()._get_dataloader(dataset, description, batch_size, None, is_training, dataloader_key)
        finally:
            args.dataloader_num_workers = workers

    def _sampler(self, dataset, per_process_batch: int, repeats: int, shuffle: bool, G: int):
        prompts_per_batch = per_process_batch * self.args.world_size // G
        return RepeatedPromptSampler(len(dataset), G, prompts_per_batch, repeats=repeats, shuffle=shuffle,
                                     seed=self.args.seed)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError(f"{type(self).__name__}: training requires a train_dataset.")
        args = self.args
        per_process = self._train_batch_size * args.completions_per_row * args.steps_per_generation
        repeats = args.steps_per_generation * args.num_iterations
        return self._get_dataloader(
            dataset=self.train_dataset, description="Training", batch_size=per_process,
            sampler_fn=lambda ds: self._sampler(ds, per_process, repeats, args.shuffle_dataset, args.num_generations),
            is_training=True)

    def _get_eval_sampler(self, eval_dataset):
        return self._sampler(eval_dataset, self.args.per_device_eval_batch_size * self.args.completions_per_row, 1,
                             False, self.args.eval_generations())

    # -- reference policy ----------------------------------------------------------------------------
    @property
    def ref_model(self) -> torch.nn.Module | None:
        """The separate reference model kept in memory, or None (the policy with its adapter disabled, or none)."""
        return self.reference.model

    def uses_reference(self) -> bool:
        """Whether reference log-probs are computed (a KL term): ``beta != 0``."""
        return self.args.beta != 0.0

    # whether the reference model also samples completions (XPO, Nash-MD); else it only scores, in reference_logps
    _reference_samples = False

    def _setup_reference(self, ref_model=None) -> torch.nn.Module | None:
        """The separate reference model to keep in memory (prepared with :meth:`frozen_reference`), or None: the
        ``ref_model`` given (an object, or a name/path loaded with ``model_init_kwargs``), else a frozen copy of
        the policy (:meth:`reference_source`) when there is a KL term and no adapter to disable."""
        if ref_model is not None:
            ref, owned = load_frozen(ref_model, self.args.model_init_kwargs)
            return self.frozen_reference(ref, owned=owned)
        if not self.uses_reference() or is_peft_model(self.reference_source()):
            return None  # no KL term, or the policy with its adapter disabled is the reference
        return self.frozen_reference(frozen_copy(self.reference_source()))

    def reference_source(self) -> torch.nn.Module:
        """The module a default reference is copied from: the policy."""
        return unwrap(self.model)

    def frozen_reference(self, model, owned: bool = True):
        """``model`` prepared as the frozen reference; when it only scores (under :meth:`autocast_region`) and the
        trainer made it (``owned``: a copy of the policy, or loaded from a path), with its linear layers stored in
        the training precision (:meth:`BaseTrainer.prepare_frozen_model`)."""
        return self.prepare_frozen_model(model, no_dropout=self.args.disable_dropout,
                                         autocast_only=owned and not self._reference_samples)

    @torch.no_grad()
    def reference_logps(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # a separate reference runs in the training precision, as the policy's log-probs it is compared with
        # (accelerate wraps only the trained model: without the region it ran in float32 under bf16, ~2x the time)
        with self.reference.active() as ref:
            return self.token_logps(ref, batch)[0]

    # -- log-probs ---------------------------------------------------------------------------------------
    def logps_temperature(self) -> float:
        """The temperature :meth:`token_logps` divides the logits by (for the policy, the sampling policy's
        ``old_logps`` and the reference alike). Default: the sampling temperature, so that the importance ratios
        and KL terms of GRPO, RLOO and PPO are of the distribution the completions were drawn from (as in TRL). The
        sampler's own log-probs (``sampling_logps``, vLLM) are always of the sampled distribution, so a trainer that
        uses them must keep this default."""
        return self.args.temperature

    def token_logps(self, model, batch: Mapping[str, torch.Tensor], with_entropy: bool = False):
        """``(logps, mask, entropies)``: (B, T) log-probs of the completion tokens of ``batch`` (rows of
        ``build_rows``) under ``logits / logps_temperature()``, their 0/1 mask, and (B, T) entropies when asked
        (detached); :func:`~posttrain.trainers.logprobs.token_logps` on the batch's row keys."""
        rows = {k: batch[k] for k in ROW_KEYS if k in batch}
        return token_logps(model, rows, temperature=self.logps_temperature(), with_entropy=with_entropy)

    @staticmethod
    def completion_token_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The (B, T) 0/1 mask of ``token_logps``'s layout for a micro-batch that carries ``old_logps`` (T is
        their width): row i's first ``completion length`` entries."""
        counts = batch["completion_mask"][:, 1:].sum(dim=1)
        width = batch["old_logps"].shape[1]
        return torch.arange(width, device=counts.device).unsqueeze(0) < counts.unsqueeze(1)

    # -- rollout -------------------------------------------------------------------------------------------
    def _needs_old_logps(self) -> bool:
        """True when some micro-batch of a generation batch is trained after an optimizer step (or the rewards
        need the sampling log-probs)."""
        cycle = self.args.steps_per_generation * self.args.num_iterations
        return self.args.gradient_accumulation_steps % cycle != 0 or self._needs_old_logps_for_rewards()

    def _prepare_inputs(self, inputs):
        if not self.model.training:  # evaluation: generate for every batch
            return self.generate_and_score(inputs, 1)[0]
        cycle = self.args.steps_per_generation * self.args.num_iterations
        if self._buffer is None or self._micro_step % cycle == 0:
            self._buffer = self.generate_and_score(inputs, self.args.steps_per_generation)
        batch = self._buffer[self._micro_step % self.args.steps_per_generation]
        self._micro_step += 1
        return batch

    def _needs_old_logps_for_rewards(self) -> bool:
        """True when :meth:`shape_rewards` needs the sampling policy's log-probs (``old_logps``), e.g. a KL
        penalty folded into the reward."""
        return False

    def shape_rewards(self, rewards: torch.Tensor, batches: list[dict[str, Any]]) -> torch.Tensor:
        """This process's rewards (n,) as the method trains on them, given its micro-batches (with ``old_logps``
        / ``ref_logps`` when computed). Default: unchanged (return the same tensor)."""
        return rewards

    def add_token_signals(self, rewards: torch.Tensor, batches: list[dict[str, Any]]) -> None:
        """Per-token training signals a method computes from this process's rewards (n,) on its micro-batches, written
        into them (PPO: values, GAE advantages and returns). Default: none."""

    def process_rewards(self, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-completion tensors (N,) from the rewards (N,) of the whole generation batch (all processes, group
        layout); e.g. ``{"advantages": ...}``. Record metrics here."""
        raise NotImplementedError

    def generation_precision(self):
        """The HF backend samples in the training precision (one autocast region per generation, see
        :meth:`BaseTrainer.generation_precision`); vLLM runs its own kernels in its own dtype."""
        return contextlib.nullcontext() if self.args.use_vllm else super().generation_precision()

    def sample_completions(self, prompt_ids: list[list[int]]):
        """One completion per prompt from the policy, by the rollout backend (:func:`posttrain.rollout.generate`,
        or vLLM with ``use_vllm``, whose weights are refreshed first when an optimizer step changed them) with the
        config's sampling options; returns :class:`~posttrain.rollout.Generations`."""
        self.rollout_backend.sync_weights(self.model, self.state.global_step)
        return self.rollout_backend.generate(prompt_ids, return_logprobs=self.needs_sampling_logps(),
                                             **self.sampling_kwargs())

    def sample_episodes(self, rows: list[Mapping[str, Any]]):
        """Multi-turn rollouts with the trainer's tools or environment (:class:`~posttrain.trainers.agents.AgentRollouts`),
        every turn sampled by the rollout backend as :meth:`sample_completions` does; returns the prompts as the
        rollouts saw them and :class:`~posttrain.rollout.Generations` with loss masks. Records ``tools/*`` and
        ``turns/*``."""
        args = self.args
        if self.accelerator.num_processes > 1 and is_zero3_partitioned(unwrap(self.model)) and not args.use_vllm:
            raise ValueError("Tools and environments with DeepSpeed ZeRO-3 need use_vllm=True: the partitioned "
                             "policy's generation is collective, and processes run different numbers of turns.")
        self.rollout_backend.sync_weights(self.model, self.state.global_step)
        sampling = self.sampling_kwargs()
        sampling.pop("max_new_tokens")
        prompts, gens = self.agent.rollout(
            self.rollout_backend.generate, rows, tokenizer=self.tokenizer_,
            config_template_kwargs=args.chat_template_kwargs, max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length, max_iterations=args.max_tool_calling_iterations,
            return_logprobs=self.needs_sampling_logps(), **sampling)
        counts = self._gather(torch.tensor([[e.turns, e.tool_calls, e.tool_failures, e.truncated]
                                            for e in self.agent.last_episodes], dtype=torch.float32))
        turns, calls, failures, truncated = counts.unbind(dim=1)
        self.record("turns/mean", turns.mean())
        self.record("turns/max", turns.max())
        self.record("turns/truncated_ratio", truncated.mean())
        if self.agent.has_tools:  # TRL's names: calls per completion, failed calls per call
            self.record("tools/call_frequency", calls.mean())
            self.record("tools/failure_frequency", failures.sum() / calls.sum().clamp(min=1.0))
        return prompts, gens

    def custom_rollouts(self, prompts: list):
        """Completions from the user's ``rollout_func(prompts, trainer)`` (TRL's escape hatch): one completion per
        prompt given (this process's, each repeated as the rows are), as a dict with ``prompt_ids``,
        ``completion_ids`` and ``logprobs`` (lists, one per completion; ``logprobs`` may be None), optionally
        ``env_mask`` (1 on tokens the policy sampled, 0 on inserted ones: out of the loss); every other key is a
        column (one value per completion) for the reward functions."""
        self.rollout_backend.sync_weights(self.model, self.state.global_step)
        output = self.rollout_func(prompts, self)
        if not isinstance(output, Mapping):
            raise ValueError(f"rollout_func must return a dict, got {type(output).__name__}.")
        missing = sorted({"prompt_ids", "completion_ids", "logprobs"} - set(output))
        if missing:
            raise ValueError(f"rollout_func must return keys {missing} in its output dict.")
        n = len(prompts)
        for key, value in output.items():
            if value is not None and len(value) != n:
                raise ValueError(f"rollout_func returned {len(value)} {key!r} for {n} prompts; one per prompt is "
                                 "needed (the prompts are already repeated num_generations times).")
        completion_ids = [list(c) for c in output["completion_ids"]]
        masks = output.get("env_mask")
        if masks is not None and any(len(m) != len(c) for m, c in zip(masks, completion_ids)):
            raise ValueError("rollout_func's env_mask needs one entry per completion token.")
        self._rollout_columns = {k: list(v) for k, v in output.items()
                                 if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
        logprobs = output["logprobs"] if self.needs_sampling_logps() else None
        if logprobs is not None and masks is not None:  # laid out like token_logps: sampled tokens only
            logprobs = [[lp for lp, m in zip(lps, mask) if m] for lps, mask in zip(logprobs, masks)]
        return Generations(prompt_ids=[list(p) for p in output["prompt_ids"]], completion_ids=completion_ids,
                           texts=self.tokenizer_.batch_decode(completion_ids, skip_special_tokens=True),
                           logprobs=logprobs, loss_masks=None if masks is None else [list(m) for m in masks])

    def needs_sampling_logps(self) -> bool:
        """Whether micro-batches carry the sampler's log-probs of the completion tokens (``sampling_logps``, (B, T)
        like :meth:`token_logps`), e.g. for GRPO's vLLM importance-sampling correction. Default: False."""
        return False

    def sampling_kwargs(self) -> dict[str, Any]:
        """The sampling options of :func:`posttrain.rollout.generate`: :attr:`generation_config`'s (made from the
        config; changing it changes what is sampled, as TRL's attribute), plus ``generation_kwargs``."""
        config = self.generation_config
        return dict(max_new_tokens=config.max_new_tokens, do_sample=True, temperature=config.temperature,
                    top_p=config.top_p, top_k=config.top_k or 0, min_p=config.min_p,
                    repetition_penalty=config.repetition_penalty, generation_kwargs=self.args.generation_kwargs)

    def score_completions(self, rows: list[Mapping[str, Any]], prompts: list, completions: list,
                          completion_ids: list[list[int]]) -> torch.Tensor:
        """Rewards (N,) of the whole generation batch (all processes gathered) from the reward functions; records
        ``reward`` and ``rewards/<name>/mean|std``."""
        columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "prompt_input_ids")}
        columns.update(completion_ids=completion_ids, trainer_state=self.state, log_extra=self._log_extra,
                       log_metric=self._log_metric)
        if self.agent is not None and self.agent.kinds:
            columns["environments"] = self.agent.batch_environments
        columns.update(self._rollout_columns)
        self._extra_columns = {}
        scores = self.scorer(prompts, completions, **columns)
        per_function = self._gather(scores.per_function)
        rewards = self.combine_rewards(per_function, self._gather(scores.rewards))
        if torch.isnan(rewards).any():
            local = torch.isnan(scores.rewards).nonzero().flatten().tolist()
            first = {"prompt": prompts[local[0]], "completion": completions[local[0]],
                     **{k: v[local[0]] for k, v in columns.items() if isinstance(v, list)}} if local else {}
            logger.warning("All reward functions returned None for the following kwargs: %s (%d completion(s) in all); "
                           "their reward is 0.", {k: _short(str(v)) if isinstance(v, (str, list)) else v
                                                  for k, v in first.items() if k != "completion_ids"},
                           int(torch.isnan(rewards).sum()))
            rewards = torch.nan_to_num(rewards, nan=0.0)
        for i, name in enumerate(scores.names):
            self.record(f"rewards/{name}/mean", torch.nanmean(per_function[:, i]).nan_to_num(0.0))
            self.record(f"rewards/{name}/std", nanstd(per_function[:, i]).nan_to_num(0.0))
        self.record("reward", rewards.mean())
        return rewards

    def _log_extra(self, column: str, values: Sequence) -> None:
        """TRL's ``log_extra`` for reward functions: one value per completion (of this process), shown beside each
        completion in ``completion_samples`` and the ``log_completions`` lines."""
        self._extra_columns[column] = list(values)

    def _log_metric(self, name: str, value: float) -> None:
        """TRL's ``log_metric`` for reward functions: a scalar averaged over the logging window and logged as
        ``name``."""
        self.record(name, float(value))

    def combine_rewards(self, per_function: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """The reward (N,) of each completion from each function's (N, F; all processes, group layout). Default: the
        scorer's weighted sum, ``rewards``."""
        return rewards

    def loss_items(self, lengths: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        """What each completion of this process adds to ``num_items_in_batch`` (the loss normaliser): its tokens."""
        return lengths.clone()

    # -- rollout layout: the ``num_generations`` completions of a prompt are consecutive rows -----------------
    def groups(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (one value per completion) as (prompts, num_generations)."""
        return x.view(-1, self.group_size())

    def members(self, x, j: int):
        """Completion ``j`` of every prompt, from a tensor or list holding one entry per completion."""
        return x[j::self.group_size()]

    def group_size(self) -> int:
        """Completions per prompt in the batch at hand: ``num_generations`` while training, the config's
        ``eval_generations()`` while evaluating."""
        return self.args.num_generations if self.model.training else self.args.eval_generations()

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.args.device)
        return self.accelerator.gather(x) if self.accelerator.num_processes > 1 else x

    def generate_and_score(self, rows: Sequence[Mapping[str, Any]], num_chunks: int) -> list[dict[str, Any]]:
        """Sample one completion per row, score and post-process them, and return ``num_chunks`` model-ready
        micro-batches (see the module docstring)."""
        args, tokenizer = self.args, self.tokenizer_
        rows = list(rows)
        n = len(rows)
        prompts = [r["prompt"] for r in rows]
        with self.generation_precision():
            if self.agent is not None:
                prompts, gens = self.sample_episodes(rows)
            elif self.rollout_func is not None:
                gens = self.custom_rollouts(prompts)
            else:
                gens = self.sample_completions([r["prompt_input_ids"] for r in rows])
        prompt_ids, completion_ids = gens.prompt_ids, gens.completion_ids
        eos = tokenizer.eos_token_id
        truncated = torch.tensor(gens.truncated if gens.truncated is not None else
                                 [not (ids and ids[-1] == eos) for ids in completion_ids], dtype=torch.bool)
        # each completion's sampled tokens: the loss's (a multi-turn rollout's inserted tokens are context only)
        sampled = torch.tensor([len(ids) for ids in completion_ids] if gens.loss_masks is None else
                               [sum(m) for m in gens.loss_masks], dtype=torch.float32)

        # -- rewards of the whole generation batch (all processes)
        completions = gens.messages if gens.messages is not None else \
            [completion_for_model(p, t) for p, t in zip(prompts, gens.texts)]
        rewards = self.score_completions(rows, prompts, completions, completion_ids)
        all_lengths, all_truncated = self._gather(sampled), self._gather(truncated)  # TRL: sampled tokens
        self.record("completions/mean_length", all_lengths.mean())
        self.record("completions/min_length", all_lengths.min())
        self.record("completions/max_length", all_lengths.max())
        self.record("completions/clipped_ratio", all_truncated.float().mean())
        terminated = all_lengths[~all_truncated]
        for stat in ("mean", "min", "max"):
            value = getattr(terminated, stat)() if terminated.numel() else torch.tensor(0.0)
            self.record(f"completions/{stat}_terminated_length", value)
        self.count_tokens(sum(len(p) for p in prompt_ids) + int(sampled.sum()))

        # -- split into micro-batches; log-probs of the sampling policy and of the reference once per batch
        loss_tokens = self.loss_items(sampled, truncated)
        num_items = loss_tokens.sum().reshape(1)
        if args.average_tokens_across_devices:  # counted as Trainer counts it (BaseTrainer.reduce_loss)
            num_items = self._gather(num_items)
        num_items = num_items.sum() * args.gradient_accumulation_steps / args.steps_per_generation
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        size = n // num_chunks
        need_old = self._needs_old_logps() if self.model.training else self._needs_old_logps_for_rewards()
        batches = []
        for c in range(num_chunks):
            sl = slice(c * size, (c + 1) * size)
            batch: dict[str, Any] = {k: v.to(args.device) for k, v in
                                     build_rows(prompt_ids[sl], completion_ids[sl], pad_token_id=pad,
                                                pad_to_multiple_of=args.pad_to_multiple_of,
                                                completion_masks=None if gens.loss_masks is None
                                                else gens.loss_masks[sl]).items()}
            batch["truncated"] = truncated[sl].to(args.device)
            if gens.logprobs is not None:  # the sampler's log-probs, laid out like token_logps
                batch["sampling_logps"] = torch.nn.utils.rnn.pad_sequence(
                    [torch.tensor(lp, dtype=torch.float32) for lp in gens.logprobs[sl]], batch_first=True).to(args.device)
            batch["num_items_in_batch"] = num_items
            with torch.no_grad():
                if need_old:
                    batch["old_logps"] = self.token_logps(self.model, batch)[0]
                if self.uses_reference():
                    batch["ref_logps"] = self.reference_logps(batch)
            batches.append(batch)

        # -- per-completion training signals (e.g. advantages) from the rewards of the whole generation batch
        start = self.accelerator.process_index * n
        local_rewards = rewards[start : start + n]
        local_rewards = local_rewards.to(args.device)
        shaped = self.shape_rewards(local_rewards, batches)
        self.add_token_signals(shaped, batches)
        all_shaped = rewards if shaped is local_rewards else self._gather(shaped)
        extra = self.process_rewards(all_shaped)
        local = {k: v[start : start + n] for k, v in extra.items()}
        for c, batch in enumerate(batches):
            for k, v in local.items():
                batch[k] = v[c * size : (c + 1) * size].to(args.device)
        self._last_samples = [
            {"prompt": p, "completion": t, "reward": float(r), **{k: float(v[i]) for k, v in local.items()},
             **{k: v[i] for k, v in self._extra_columns.items() if i < len(v)}}
            for i, (p, t, r) in enumerate(zip(prompts, gens.texts, local_rewards.tolist()))
        ]
        return batches

    # -- evaluation ----------------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- logging ---------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.args.log_completions and self._last_samples and self.is_world_process_zero():
            k = self.args.num_completions_to_print or 5
            lines = [f"step {self.state.global_step}: {len(self._last_samples)} completions, first {k}:"]
            for s in self._last_samples[:k]:
                extra = " ".join(f"{key}={val:.3f}" if isinstance(val, float) else f"{key}={_short(val, 40)!r}"
                                 for key, val in s.items() if key not in ("prompt", "completion"))
                lines.append(f"  prompt={_short(s['prompt'])!r} completion={_short(s['completion'])!r} {extra}")
            logger.info("\n".join(lines))
        super().log(logs, start_time)

    @property
    def completion_samples(self) -> list[dict[str, Any]]:
        """Prompt, completion, reward (and e.g. advantage) of this process's latest generation batch."""
        return list(self._last_samples)


def _short(value: Any, n: int = 80) -> str:
    if not isinstance(value, str):
        value = value[-1]["content"] if value and isinstance(value, list) else str(value)
    return value if len(value) <= n else value[: n - 3] + "..."


__all__ = ["OnlineConfig", "OnlineTrainer"]
