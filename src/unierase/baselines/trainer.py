"""The one training loop shared by the target/retain fine-tuning and every unlearning baseline.

A caller supplies the batches of one epoch and a loss function; the loop owns the optimiser
(AdamW), the warm-up + linear-decay schedule, gradient accumulation and clipping, optional bf16
autocast, an optional LoRA wrapper (peft), seeding and the progress bar.

Started by ``torchrun``/``accelerate launch`` with several processes, the model and optimiser go
through ``accelerate.Accelerator.prepare`` (DDP: the gradients are averaged over the processes
in the backward pass), or, with ``fsdp``, the model is sharded over them (``sharding``: FSDP2);
each process takes every size-th micro-batch of the same seeded order, so one optimiser step sees
``batch_size × grad_accum × processes`` examples — what one process sees with
``grad_accum × processes``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch

from .. import distributed
from . import sharding
from ..prompts import encode_qa, pad_batch
from ..storage import UniEraseError, fault_point

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings (the CLI maps flags onto these fields).

    The paper's reference for 8B models is AdamW, lr 1e-5, 5 epochs, effective batch 32, one
    warm-up epoch and weight decay 0.01; a 135M model needs its own learning rate.
    """

    epochs: float = 5.0
    """Passes over the primary data (the forget set for unlearning, the training QA for fine-tuning)."""
    lr: float = 1e-5
    batch_size: int = 8
    """Examples per forward pass (per data stream: forget and retain batches each have this size)."""
    grad_accum: int = 1
    """Forward passes per optimiser step (effective batch = batch_size × grad_accum)."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs; the learning rate then decays linearly to zero."""
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 256
    """Token limit per example (prompt + answer); longer examples are truncated."""
    seed: int = 0
    bf16: bool = False
    """bf16 compute (faster on CPUs with AVX-512 BF16 and on GPUs): autocast, or under ``fsdp`` the
    shards' mixed-precision policy; the weights the optimiser updates stay fp32 either way."""
    fsdp: bool = False
    """With several processes, shard weights, gradients and AdamW state over them (torch's FSDP2)
    instead of giving each a whole copy (DDP): for models whose training state does not fit one
    device. Also on when ``accelerate launch`` runs with an FSDP config."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them: less memory
    for a large model, about a third more compute (Hugging Face's ``gradient_checkpointing_enable``)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; they are merged into the saved checkpoint."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names LoRA wraps; for architectures without these names, pass their own."""
    progress: bool = True

    def validate(self) -> None:
        if not self.epochs > 0:
            raise UniEraseError(f"epochs must be positive, got {self.epochs}")
        if not self.lr > 0:
            raise UniEraseError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise UniEraseError("batch size and gradient accumulation must be at least 1")
        if self.warmup_epochs < 0 or self.weight_decay < 0:
            raise UniEraseError("warm-up epochs and weight decay must be non-negative")
        if self.max_length < 8:
            raise UniEraseError(f"max length {self.max_length} is too short")

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- encoding helpers

def encode_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Answer-only label masks (prompt tokens -100), in the model's chat format."""
    out = []
    for question, answer in pairs:
        enc = encode_qa(tokenizer, question, answer, max_length=max_length)
        out.append((enc.input_ids, enc.labels))
    return out


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict:
    """Right-padded batch; labels are -100 wherever the attention mask is 0 (pad = EOS safe)."""
    batch = pad_batch([e[0] for e in encoded], pad_id, labels=[e[1] for e in encoded])
    return {k: v.to(device) for k, v in batch.items()}


def shuffled_batches(n: int, batch_size: int, generator: random.Random) -> list[list[int]]:
    order = list(range(n))
    generator.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, generator: random.Random,
                           group: int = 16) -> list[list[int]]:
    """Shuffled batches of similar lengths: a random order cut into groups of ``group`` batches,
    each group sorted by length and cut into batches, then the batches shuffled: a right-padded
    batch costs its longest row."""
    order = list(range(len(lengths)))
    generator.shuffle(order)
    span = batch_size * max(1, group)
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    generator.shuffle(batches)
    return batches


# ----------------------------------------------------------------------------- LoRA

def wrap_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in config.lora_targets if t in present]
    if not targets:
        raise UniEraseError(f"none of the LoRA target modules {config.lora_targets} exist in this model")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def unwrap_lora(model):
    """Merge LoRA weights into the base model (a plain checkpoint is saved)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict]
    """One entry per optimiser step: step, lr and the loss terms averaged over its micro-batches."""
    held_mb: float = 0.0
    """Trainable weights, gradients and optimiser moments held by this process, in MB (``held_mb``)."""
    engine: str = "one process"
    """How the processes shared the training: "one process", "ddp" or "fsdp2" (recorded in the manifest)."""
    model: object = None
    """The trained model: the one passed in, or after sharded training the first process's plain
    copy gathered from the shards (``None`` on the other processes)."""


def train_loop(
    model,
    epoch_batches: Callable[[int], Iterable],
    loss_fn: Callable[[object, object], tuple[torch.Tensor, dict]],
    config: TrainConfig,
    *,
    steps_per_epoch: int,
    desc: str = "training",
) -> TrainResult:
    """Run ``config.epochs`` epochs; ``epoch_batches(e)`` yields the micro-batches of epoch ``e``.

    A fractional number of epochs stops after that share of micro-batches. ``loss_fn(model, batch)``
    returns the scalar loss and a dict of floats to log; the model it gets is the one to run
    forward (in several processes, the engine's wrapper of ``model``).
    """
    from tqdm.auto import tqdm

    config.validate()
    rank, size = distributed.rank_and_size()
    sharded = sharding.requested(config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bf16 = sharding.wants_bf16(config) if sharded else config.bf16
    device = sharding.shard(model, bf16=bf16) if sharded else None
    params, optimiser = _optimiser(model, config)  # after sharding: over this process's shards
    micro_total = max(1, math.ceil(config.epochs * steps_per_epoch))
    if size > 1:  # every process must run as many backward passes (each one is a collective)
        micro_total = max(size, micro_total - micro_total % size)
    forward, optimiser = _prepared(model, optimiser) if size > 1 and not sharded else (model, optimiser)
    loop = _Loop(config, desc, params, optimiser, _schedule(config, steps_per_epoch, micro_total, size), micro_total)
    device = device or model_device(model)  # where the engine put the model: the batches follow
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if config.bf16 and not sharded else None
    model.train()
    start = time.perf_counter()
    loop.bar = tqdm(total=loop.schedule.total_steps, desc=desc, disable=not config.progress or rank > 0, dynamic_ncols=True)
    group = config.grad_accum * size  # micro-batches of one optimiser step, over all processes
    with distributed.shared_step("training"):  # another process failing stops this one with a clear error
        try:
            epoch = 0
            while loop.micro < micro_total:
                seen = 0
                for batch in epoch_batches(epoch):
                    if loop.micro >= micro_total:
                        break
                    seen += 1
                    fault_point(f"train-micro-batch-{loop.micro}")
                    if loop.micro % size == rank:  # this process's share of the step
                        _backward(loop, _moved(batch, device), lambda b: loss_fn(forward, b), autocast)
                    else:
                        loop.micro += 1
                    if loop.micro % group == 0 or loop.micro == micro_total:
                        _optimiser_step(loop)
                if not seen:
                    raise UniEraseError(f"{desc}: no training batches")
                epoch += 1
        finally:
            loop.bar.close()
            if config.gradient_checkpointing:
                model.gradient_checkpointing_disable()
            model.eval()
    distributed.everyone_done("training")  # nothing is written before every process trained its share
    held = held_mb(params, optimiser)
    if sharded:
        with distributed.shared_step("gathering the trained weights"):
            model = sharding.gather(model)
    engine = "fsdp2" if sharded else "ddp" if size > 1 else "one process"
    return TrainResult(steps=loop.step, seconds=time.perf_counter() - start, history=loop.history, engine=engine,
                       held_mb=held, model=model)


def held_mb(params, optimiser) -> float:
    """MB (2²⁰ bytes) of trainable weights, their gradients (counted at the weights' size: they exist at each
    step) and AdamW moments this process holds: its shards under FSDP2, whole copies otherwise."""
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's own shard

    weights = sum(local(p).numel() * local(p).element_size() for p in params)
    moments = sum(local(v).numel() * local(v).element_size()
                  for state in optimiser.state.values() for v in state.values() if torch.is_tensor(v) and v.dim())
    return round((2 * weights + moments) / 2**20, 2)


def _moved(batch, device):
    """``batch`` (tensors in dicts) on ``device``; the same objects where they already are there."""
    if isinstance(batch, dict):
        return {k: _moved(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor) and batch.device != device:
        return batch.to(device)
    return batch


def _prepared(model, optimiser):
    """The model and optimiser through ``accelerate`` (DDP over the launcher's processes: gloo on a
    CPU, NCCL on GPUs); the original ``model`` keeps the trained weights."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=model_device(model).type == "cpu")
    return accelerator.prepare(model, optimiser)


@dataclass
class _Schedule:
    """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total_steps``."""

    lr: float
    total_steps: int
    warmup: int

    def lr_at(self, step: int) -> float:  # step counts from 0
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        remaining = self.total_steps - self.warmup
        return self.lr * max(0.0, (self.total_steps - step) / remaining)


@dataclass
class _Loop:
    """What ``train_loop`` carries from one micro-batch to the next."""

    config: TrainConfig
    desc: str
    params: list
    optimiser: torch.optim.Optimizer
    schedule: _Schedule
    micro_total: int
    bar: object = None
    micro: int = 0
    step: int = 0
    pending: dict = field(default_factory=dict)
    """Logged loss terms of the optimiser step in progress, averaged over its micro-batches."""
    history: list = field(default_factory=list)


def _optimiser(model, config: TrainConfig) -> tuple[list, torch.optim.Optimizer]:
    """The trainable parameters and AdamW over them (no weight decay on vectors: biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UniEraseError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    return params, optimiser


def _schedule(config: TrainConfig, steps_per_epoch: int, micro_total: int, processes: int = 1) -> _Schedule:
    per_step = config.grad_accum * processes
    total_steps = max(1, math.ceil(micro_total / per_step))
    warmup = min(total_steps - 1, round(config.warmup_epochs * steps_per_epoch / per_step)) if total_steps > 1 else 0
    return _Schedule(config.lr, total_steps, warmup)


def _backward(loop: _Loop, batch, loss_fn, autocast) -> None:
    """One micro-batch: its loss (under autocast when set), the scaled backward pass, its logged terms."""
    config = loop.config
    if autocast is not None:
        with autocast:
            loss, logs = loss_fn(batch)
    else:
        loss, logs = loss_fn(batch)
    if not torch.isfinite(loss):
        raise UniEraseError(f"{loop.desc}: the loss became {loss.item()} at step {loop.step}; lower the learning rate")
    (loss / config.grad_accum).backward()
    for key, value in logs.items():
        loop.pending[key] = loop.pending.get(key, 0.0) + float(value) / config.grad_accum
    loop.micro += 1


def _mean_over_processes(values: dict) -> dict:
    """Logged terms averaged over the processes (each logged the mean of its own micro-batches)."""
    size = distributed.rank_and_size()[1]
    if size == 1 or not values:
        return values
    keys = sorted(values)
    summed = distributed.all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    return {k: float(v) / size for k, v in zip(keys, summed)}


def _optimiser_step(loop: _Loop) -> None:
    """Set the scheduled learning rate, clip, step, and record the step's averaged loss terms."""
    lr = loop.schedule.lr_at(loop.step)
    for group in loop.optimiser.param_groups:
        group["lr"] = lr
    if loop.config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(loop.params, loop.config.max_grad_norm)
    loop.optimiser.step()
    loop.optimiser.zero_grad(set_to_none=True)
    loop.pending = _mean_over_processes(loop.pending)
    record = {"step": loop.step + 1, "lr": lr, **{k: round(v, 5) for k, v in loop.pending.items()}}
    loop.history.append(record)
    loop.bar.set_postfix({k: f"{v:.3f}" for k, v in loop.pending.items()})
    loop.bar.update(1)
    log.debug("%s %s", loop.desc, record)
    loop.pending = {}
    loop.step += 1
