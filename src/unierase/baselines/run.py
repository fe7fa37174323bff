"""Run one fine-tuning baseline end to end: load, precompute references, train, save, manifest.

Memory: NPO and DPO need the reference model only through one number per forget item (S_ref of
the answer and of the refusal), so those are computed once before training and no second model
is kept. The KL regulariser needs the reference's full next-token distribution on every retain
position it sees; storing those (positions × vocabulary floats) would be larger than the model
itself, so a frozen copy is kept instead — or, with ``--lora``, the same model with its adapters
disabled (no copy at all).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import distributed
from ..requests import ForgetRequest, parse_requests
from ..record.rounds import load_input, neighbour_questions, probe, save_round, start_round
from ..storage import UniEraseError, check_output_dir, locked_run
from . import losses
from .data import load_refusals, parse_data_spec, refusal_for
from .objectives import Baseline, BaselineConfig
from .options import BaselineOptions
from ..registry import Method, RunContext, get_method, register
from .._version import __version__
from ..record.manifest import Manifest, base_model_info, runtime_info
from ..measure import peak_memory_mb
from . import sharding
from .trainer import (TrainResult, collate, encode_pairs, seed_everything, shuffled_batches,
                      train_loop, unwrap_lora, wrap_lora)

log = logging.getLogger(__name__)

@dataclass
class BaselineResult:
    method: str
    out: Path | None
    manifest: dict
    model: object = None
    """The unlearned model (in memory)."""

    def summary(self) -> str:
        m = self.manifest
        ev = m["forget_answer_nll"]
        return (f"{self.method}: {len(m['requests'])} requests, {m['train']['steps']} steps in "
                f"{m['timings_s']['train']:.0f} s; forget-answer NLL {ev['before']:.3f} -> {ev['after']:.3f}; "
                + (f"saved to {self.out}" if self.out else "not saved"))


def baseline_class(name: str) -> type[Baseline]:
    """The ``Baseline`` subclass registered under ``name`` (any spelling ``registry.get_method`` accepts)."""
    entry = get_method(name)
    if entry.family != "fine-tuning":
        raise UniEraseError(f"method {entry.name!r} is not a fine-tuning baseline")
    return entry.implementation


def register_baseline(cls: type[Baseline]) -> Method:
    """Register a ``Baseline`` subclass as a method of ``unierase forget --method`` (its ``name``); its
    description is the docstrings of the forget term and the regulariser it is made of."""
    parts = [base.__doc__.strip().rstrip(".") for base in cls.__bases__ if base.__doc__] or [cls.__doc__ or cls.name]

    def run(requests, source, out, context: RunContext, options: BaselineOptions):
        # the shared run options come from the context, the baseline's own from its options
        own = {k: v for k, v in vars(options).items() if v is not None}
        return run_baseline(cls.name, context.model_dir or context.hub_id or context.model, requests, out,
                            overwrite=context.overwrite, cache_dir=context.cache_dir, seed=context.seed,
                            record_texts=context.record_texts, progress=context.progress, tokenizer=context.tokenizer,
                            device_map=context.device_map, force=context.force, dtype=context.dtype, **own)

    return register(Method(cls.name, "fine-tuning", "; ".join(parts), run, BaselineOptions, implementation=cls))


def make_config(method: str, config: BaselineConfig | None = None, **overrides) -> BaselineConfig:
    """The method's default config with ``overrides`` applied (unknown names are errors)."""
    cls = baseline_class(method)
    if config is None:
        config = BaselineConfig(forget_coef=cls.default_forget_coef)
    names = {f.name for f in dataclasses.fields(BaselineConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UniEraseError(f"unknown baseline setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config.validate()
    if config.beta <= 0:
        raise UniEraseError(f"beta must be positive, got {config.beta}")
    return config


def _check_inputs(cls: type[Baseline], requests, retain) -> None:
    if not requests:
        raise UniEraseError("no forget requests")
    if cls.needs_answer:
        missing = [i + 1 for i, r in enumerate(requests) if not r.answer]
        if missing:
            raise UniEraseError(f"method {cls.name} needs the answer being erased; request(s) {missing[:5]} have no 'answer'")
    if cls.needs_retain and not retain:
        raise UniEraseError(f"method {cls.name} needs retain data (--retain FILE or tofu:CONFIG)")
    if retain:
        missing = [i + 1 for i, r in enumerate(retain) if not r.answer]
        if missing:
            raise UniEraseError(f"retain item(s) {missing[:5]} have no 'answer'")


@torch.no_grad()
def _sequence_logprobs(model, encoded, pad_id, batch_size) -> torch.Tensor:
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(encoded), batch_size):
        batch = collate(encoded[i:i + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.append(losses.sequence_logprob(logits, batch["labels"]).cpu())
    return torch.cat(out)


def _answer_nll(seq_logp: torch.Tensor, encoded) -> float:
    tokens = sum(sum(1 for x in e[1][1:] if x != -100) for e in encoded)
    return float(-seq_logp.sum() / max(1, tokens))


def run_baseline(
    method: str,
    model_spec,
    requests: list[ForgetRequest],
    out,
    *,
    retain: list[ForgetRequest] | str | None = None,
    config: BaselineConfig | None = None,
    overwrite: bool = False,
    cache_dir=None,
    seed: int | None = None,
    data_dir=None,
    threads: int | None = None,
    record_texts: bool = True,
    device_map=None,
    tokenizer=None,
    force: bool = False,
    dtype=None,
    **overrides,
) -> BaselineResult:
    """Unlearn ``requests`` from ``model_spec`` with a fine-tuning baseline and save the result to ``out``.

    ``retain`` is a list of question/answer requests, or a spec string (``tofu:CONFIG`` or a JSONL
    file). ``overrides`` are :class:`BaselineConfig` fields (``lr=``, ``epochs=``, ``lora=``…).
    ``model_spec`` is a directory, hub id or None (the default model), or an already loaded model
    (pass ``tokenizer``; it is trained in place). Writes a Hugging Face checkpoint and
    ``unierase_manifest.json`` atomically; with ``out=None`` nothing is written.
    """
    cls = baseline_class(method)
    if seed is not None:
        overrides["seed"] = seed
    config = make_config(cls.name, config, **overrides)
    requests, retain = _checked_inputs(cls, requests, retain, data_dir)
    model_dir = Path(model_spec) if isinstance(model_spec, (str, os.PathLike)) and Path(model_spec).is_dir() else None
    distributed.join_process_group()  # started by torchrun / accelerate launch: the batches are shared
    if out is not None:
        out = check_output_dir(out, overwrite, cache_dir=cache_dir)
    main = distributed.is_main()  # in several processes the first alone checks, records and writes
    with locked_run(out, [model_dir]) if main else contextlib.nullcontext():  # held until the output is in place
        run = _Run(cls, config, requests, retain, source=load_input(model_dir), force=force)
        if threads:
            torch.set_num_threads(threads)
        _load_model(run, model_spec, tokenizer, cache_dir, device_map, dtype)
        # a baseline may change every weight; the guard's neighbours are retain questions
        run.start = (start_round(run.model, tokenizer=run.tokenizer, neighbours=[r.question for r in run.retain[:8]])
                     if out is not None and main else None)
        _encode(run, data_dir)
        _reference_logprobs(run)
        _train(run)
        if not main:
            distributed.barrier()
            return BaselineResult(cls.name, out, None, run.model)
        _forget_answer_nll(run)
        manifest = _manifest(run, record_texts)
        if out is not None:
            _verify_and_save(run, out, manifest, record_texts)
    distributed.barrier()
    return BaselineResult(cls.name, Path(out) if out is not None else None, manifest, run.model)


@dataclass
class _Run:
    """One baseline run's state, handed from step to step of ``run_baseline`` in the order they run."""

    cls: type[Baseline]
    config: BaselineConfig
    requests: list[ForgetRequest]
    retain: list[ForgetRequest]
    source: object
    """The input folder's records (``load_input``): what made the model this round starts from."""
    force: bool = False
    """Save even when the guard against a wrecked model refuses (``record.guard``)."""
    model: object = None
    tokenizer: object = None
    base: dict | None = None
    start: object = None
    timings: dict = field(default_factory=dict)
    pad: int | None = None
    device: torch.device | None = None
    # encoded (input ids, labels): forget answers, forget refusals, retain answers, retain refusals
    enc_forget: list = field(default_factory=list)
    enc_idk: list | None = None
    enc_retain: list = field(default_factory=list)
    enc_retain_idk: list | None = None
    # the unmodified model's sequence log-likelihoods of the forget answers and refusals
    ref_forget: torch.Tensor | None = None
    ref_idk: torch.Tensor | None = None
    frozen: object = None
    """Frozen copy of the start model, for a KL term without LoRA; dropped right after training."""
    result: TrainResult | None = None
    reference: str = "none"
    nll: dict = field(default_factory=dict)

    @property
    def has_answers(self) -> bool:
        return all(r.answer for r in self.requests)


def _checked_inputs(cls: type[Baseline], requests, retain, data_dir) -> tuple[list[ForgetRequest], list[ForgetRequest]]:
    """The requests as a list and the retain data as requests (parsed from a spec string if need be)."""
    if isinstance(retain, (str, os.PathLike)):
        retain = parse_data_spec(str(retain), data_dir)
    elif retain and not all(isinstance(r, ForgetRequest) for r in retain):
        retain = parse_requests([r.to_dict() if isinstance(r, ForgetRequest) else r for r in retain], "retain")
    requests = list(requests)
    _check_inputs(cls, requests, retain)
    return requests, retain or []


def _load_model(run: _Run, model_spec, tokenizer, cache_dir, device_map, dtype=None) -> None:
    """Seed, load the model (or take the one passed in) and fingerprint it before training changes it."""
    from ..record.rounds import load_checked_model as load_model

    t0 = time.perf_counter()
    seed_everything(run.config.seed)
    if isinstance(model_spec, torch.nn.Module):
        if tokenizer is None:
            raise UniEraseError("pass the tokenizer together with an already loaded model")
        model = model_spec
        model_spec = getattr(model.config, "_name_or_path", None) or "<in-memory model>"
    else:
        model, tokenizer = load_model(model_spec, cache_dir=cache_dir, device_map=device_map, dtype=dtype)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    run.timings["load"] = time.perf_counter() - t0
    run.model, run.tokenizer = model, tokenizer
    run.base = base_model_info(model, model_spec)  # before training changes the weights


def _encode(run: _Run, data_dir) -> None:
    """Tokenise the forget and retain pairs, and their refusals for the methods that train on them."""
    cls, config, tokenizer = run.cls, run.config, run.tokenizer
    run.pad = tokenizer.pad_token_id
    run.device = next(run.model.parameters()).device
    refusals = load_refusals(data_dir, config.refusals) if (cls.needs_idk or cls.needs_retain_idk) else []

    def encode(items, answer_of):
        return encode_pairs(tokenizer, [(r.question, answer_of(r)) for r in items], config.max_length)

    def refusal(r):
        return refusal_for(r.question, refusals)

    run.enc_forget = encode(run.requests, lambda r: r.answer or "")
    run.enc_idk = encode(run.requests, refusal) if cls.needs_idk else None
    run.enc_retain = encode(run.retain, lambda r: r.answer) if run.retain else []
    run.enc_retain_idk = encode(run.retain, refusal) if cls.needs_retain_idk else None


def _reference_logprobs(run: _Run) -> None:
    """Reference log-likelihoods, once, on the unmodified model (also the "before" figure)."""
    t1 = time.perf_counter()
    run.model.eval()
    batch_size = run.config.batch_size
    run.ref_forget = _sequence_logprobs(run.model, run.enc_forget, run.pad, batch_size) if run.has_answers else None
    run.ref_idk = _sequence_logprobs(run.model, run.enc_idk, run.pad, batch_size) if run.enc_idk else None
    run.timings["reference"] = time.perf_counter() - t1


def _train(run: _Run) -> None:
    """Set up the KL reference, train, then drop the reference and merge LoRA into a plain model."""
    cls, config = run.cls, run.config
    if config.lora:
        run.model = wrap_lora(run.model, config)
    elif cls.needs_ref_model:
        run.frozen = copy.deepcopy(run.model).eval()
        for p in run.frozen.parameters():
            p.requires_grad_(False)
        if sharding.requested(config):  # each process then keeps its share of the reference too
            sharding.shard(run.frozen, bf16=sharding.wants_bf16(config))
    baseline = cls(config, ref_model=_reference_logits(run) if cls.needs_ref_model else None)
    model = run.model  # the (LoRA-wrapped) model being trained
    steps_per_epoch = -(-len(run.requests) // config.batch_size)
    run.result = train_loop(model, _epoch_batches(run), baseline.loss, config,
                            steps_per_epoch=steps_per_epoch, desc=cls.name)
    run.timings["train"] = run.result.seconds
    run.reference = ("frozen copy of the start model" if run.frozen is not None
                     else "start model with LoRA adapters disabled" if cls.needs_ref_model
                     else "per-item log-likelihoods computed once" if cls.needs_ref_logprobs else "none")
    run.frozen = None  # free the copy before the "after" evaluation
    run.model = unwrap_lora(run.result.model)  # after sharded training: the first process's gathered copy


def _reference_logits(run: _Run):
    """The start model's logits for the KL term: the frozen copy, or the model with its adapters disabled."""

    def ref_logits(part):
        if run.frozen is not None:
            return run.frozen(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        with run.model.disable_adapter():
            return run.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits

    return ref_logits


def _epoch_batches(run: _Run):
    """``train_loop``'s batches: shuffled forget batches, each paired with the next retain items (the
    retain order is reshuffled whenever it runs out; one seeded generator drives both)."""
    cls, pad, device, batch_size = run.cls, run.pad, run.device, run.config.batch_size
    enc_forget, enc_idk, enc_retain, enc_retain_idk = run.enc_forget, run.enc_idk, run.enc_retain, run.enc_retain_idk
    ref_forget, ref_idk = run.ref_forget, run.ref_idk
    rng = random.Random(run.config.seed)
    retain_order: list[int] = []

    def next_retain(n):
        idx = []
        while len(idx) < n:
            if not retain_order:
                retain_order.extend(rng.sample(range(len(enc_retain)), len(enc_retain)))
            idx.append(retain_order.pop())
        return idx

    def epoch_batches(_epoch):
        for idx in shuffled_batches(len(run.requests), batch_size, rng):
            batch = {}
            if cls.needs_answer:
                batch["forget"] = collate([enc_forget[i] for i in idx], pad, device)
            if enc_idk is not None:
                batch["forget_idk"] = collate([enc_idk[i] for i in idx], pad, device)
            if ref_forget is not None:
                batch["ref_forget"] = ref_forget[idx].to(device)
            if ref_idk is not None and cls.needs_ref_logprobs:
                batch["ref_idk"] = ref_idk[idx].to(device)
            if enc_retain:
                r_idx = next_retain(len(idx))
                batch["retain"] = collate([enc_retain[i] for i in r_idx], pad, device)
                if enc_retain_idk is not None:
                    batch["retain_idk"] = collate([enc_retain_idk[i] for i in r_idx], pad, device)
            yield batch

    return epoch_batches


def _forget_answer_nll(run: _Run) -> None:
    """Per-token NLL of the forget answers (and refusals) before and after training."""
    model, pad, batch_size = run.model, run.pad, run.config.batch_size
    after = _sequence_logprobs(model, run.enc_forget, pad, batch_size) if run.has_answers else None
    run.nll = {"before": _answer_nll(run.ref_forget, run.enc_forget) if run.ref_forget is not None else float("nan"),
               "after": _answer_nll(after, run.enc_forget) if after is not None else float("nan")}
    if run.enc_idk is not None:
        run.nll["refusal_before"] = _answer_nll(run.ref_idk, run.enc_idk)
        run.nll["refusal_after"] = _answer_nll(_sequence_logprobs(model, run.enc_idk, pad, batch_size), run.enc_idk)


def _manifest(run: _Run, record_texts: bool) -> dict:
    """The run's manifest: inputs, settings, training curve ends, forget-answer NLL, timings, memory."""
    result = run.result
    return Manifest(run.cls.name, run.base, {
        "requests": [{"sha256": r.digest(), **({"question": r.question} if record_texts else {})} for r in run.requests],
        "retain": {"n": len(run.retain), "sha256": _list_digest(run.retain)},
        "hyperparameters": run.config.to_dict(),
        "reference": run.reference,
        "train": {"steps": result.steps, "engine": result.engine, "held_mb_per_process": result.held_mb,
                  "first": result.history[0] if result.history else None,
                  "last": result.history[-1] if result.history else None},
        "forget_answer_nll": {k: round(v, 4) for k, v in run.nll.items()},
        "timings_s": {k: round(v, 2) for k, v in run.timings.items()},
        "peak_memory_mb": peak_memory_mb(),
        **runtime_info(run.model),
        "threads": torch.get_num_threads(),
    }, base_history=run.source.manifest).to_dict()  # base_history: what made the model this round started from


def _verify_and_save(run: _Run, out, manifest: dict, record_texts: bool) -> None:
    """Probe the erased and neighbour questions, then write the round (model, manifest, ledger entry)."""
    requests, source = run.requests, run.source
    t2 = time.perf_counter()
    token_id = ((source.manifest or {}).get("token") or {}).get("id")
    check = probe(run.model, run.tokenizer, requests, neighbour_questions(requests, record_texts=record_texts,
                                                                           extra=[r.question for r in run.retain[:8]]),
                  token_id, record_texts=record_texts)
    entry = {"kind": "erase", "method": run.cls.name, "version": __version__,
             "requests": [{"sha256": r.digest(), **(r.to_dict() if record_texts else {})} for r in requests],
             "settings": {"hyperparameters": run.config.to_dict(), "retain": manifest["retain"]}, "verification": check}
    manifest["timings_s"]["verification"] = round(time.perf_counter() - t2, 2)
    save_round(out, run.model, run.tokenizer, run.start, source, manifest=manifest, entry=entry, force=run.force)
    manifest["timings_s"]["save"] = round(time.perf_counter() - t2, 2)


def _list_digest(items: list[ForgetRequest]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for r in items:
        digest.update(r.digest().encode())
    return digest.hexdigest()
