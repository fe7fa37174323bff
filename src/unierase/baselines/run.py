"""Run one fine-tuning baseline end to end: load, precompute references, train, save, manifest.

Memory: NPO and DPO need the reference model only through one number per forget item (S_ref of
the answer and of the refusal), so those are computed once before training and no second model
is kept. The KL regulariser needs the reference's full next-token distribution on every retain
position it sees; storing those (positions × vocabulary floats) would be larger than the model
itself, so a frozen copy is kept instead — or, with ``--lora``, the same model with its adapters
disabled (no copy at all).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..requests import ForgetRequest, parse_requests
from ..record.rounds import load_input, neighbour_questions, probe, save_round, start_round
from ..storage import UniEraseError, check_output_dir, locked_run
from . import losses
from .data import load_refusals, parse_data_spec, refusal_for
from .objectives import Baseline, BaselineConfig
from .options import BaselineOptions
from ..registry import Method, RunContext, get_method, register
from .._version import __version__
from ..record.manifest import Manifest, base_model_info
from ..measure import peak_memory_mb
from .trainer import (collate, encode_pairs, seed_everything, shuffled_batches,
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
                            device_map=context.device_map, **own)

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
    **overrides,
) -> BaselineResult:
    """Unlearn ``requests`` from ``model_spec`` with a fine-tuning baseline and save the result to ``out``.

    ``retain`` is a list of question/answer requests, or a spec string (``tofu:CONFIG`` or a JSONL
    file). ``overrides`` are :class:`BaselineConfig` fields (``lr=``, ``epochs=``, ``lora=``…).
    ``model_spec`` is a directory, hub id or None (the default model), or an already loaded model
    (pass ``tokenizer``; it is trained in place). Writes a Hugging Face checkpoint and
    ``unierase_manifest.json`` atomically; with ``out=None`` nothing is written.
    """
    from ..record.rounds import load_checked_model as load_model

    cls = baseline_class(method)
    if seed is not None:
        overrides["seed"] = seed
    config = make_config(cls.name, config, **overrides)
    if isinstance(retain, (str, os.PathLike)):
        retain = parse_data_spec(str(retain), data_dir)
    elif retain and not all(isinstance(r, ForgetRequest) for r in retain):
        retain = parse_requests([r.to_dict() if isinstance(r, ForgetRequest) else r for r in retain], "retain")
    requests = list(requests)
    _check_inputs(cls, requests, retain)
    model_dir = Path(model_spec) if isinstance(model_spec, (str, os.PathLike)) and Path(model_spec).is_dir() else None
    if out is not None:
        out = check_output_dir(out, overwrite, cache_dir=cache_dir)
    with locked_run(out, [model_dir]):  # held until the output is in place
        source = load_input(model_dir)
        if threads:
            torch.set_num_threads(threads)

        timings = {}
        t0 = time.perf_counter()
        seed_everything(config.seed)
        if isinstance(model_spec, torch.nn.Module):
            if tokenizer is None:
                raise UniEraseError("pass the tokenizer together with an already loaded model")
            model = model_spec
            model_spec = getattr(model.config, "_name_or_path", None) or "<in-memory model>"
        else:
            model, tokenizer = load_model(model_spec, cache_dir=cache_dir, device_map=device_map)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        timings["load"] = time.perf_counter() - t0
        base = base_model_info(model, model_spec)  # before training changes the weights
        start = start_round(model) if out is not None else None  # a baseline may change every weight
        pad = tokenizer.pad_token_id
        device = next(model.parameters()).device
        refusals = load_refusals(data_dir, config.refusals) if (cls.needs_idk or cls.needs_retain_idk) else []

        enc_forget = encode_pairs(tokenizer, [(r.question, r.answer or "") for r in requests], config.max_length)
        enc_idk = (encode_pairs(tokenizer, [(r.question, refusal_for(r.question, refusals)) for r in requests], config.max_length)
                   if cls.needs_idk else None)
        retain = retain or []
        enc_retain = encode_pairs(tokenizer, [(r.question, r.answer) for r in retain], config.max_length) if retain else []
        enc_retain_idk = (encode_pairs(tokenizer, [(r.question, refusal_for(r.question, refusals)) for r in retain], config.max_length)
                          if cls.needs_retain_idk else None)

        # Reference log-likelihoods, once, on the unmodified model (also the "before" figure).
        t1 = time.perf_counter()
        model.eval()
        has_answers = all(r.answer for r in requests)
        ref_forget = _sequence_logprobs(model, enc_forget, pad, config.batch_size) if has_answers else None
        ref_idk = _sequence_logprobs(model, enc_idk, pad, config.batch_size) if enc_idk else None
        timings["reference"] = time.perf_counter() - t1

        frozen = None
        if config.lora:
            model = wrap_lora(model, config)
        elif cls.needs_ref_model:
            frozen = copy.deepcopy(model).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)

        def ref_logits(part):
            if frozen is not None:
                return frozen(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            with model.disable_adapter():
                return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits

        baseline = cls(config, ref_model=ref_logits if cls.needs_ref_model else None)
        rng = random.Random(config.seed)
        retain_order: list[int] = []

        def next_retain(n):
            idx = []
            while len(idx) < n:
                if not retain_order:
                    retain_order.extend(rng.sample(range(len(enc_retain)), len(enc_retain)))
                idx.append(retain_order.pop())
            return idx

        def epoch_batches(_epoch):
            for idx in shuffled_batches(len(requests), config.batch_size, rng):
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

        steps_per_epoch = -(-len(requests) // config.batch_size)
        result = train_loop(model, epoch_batches, lambda b: baseline.loss(model, b), config,
                            steps_per_epoch=steps_per_epoch, desc=cls.name)
        timings["train"] = result.seconds
        reference = ("frozen copy of the start model" if frozen is not None
                     else "start model with LoRA adapters disabled" if cls.needs_ref_model
                     else "per-item log-likelihoods computed once" if cls.needs_ref_logprobs else "none")
        del frozen
        model = unwrap_lora(model)

        after = _sequence_logprobs(model, enc_forget, pad, config.batch_size) if has_answers else None
        nll = {"before": _answer_nll(ref_forget, enc_forget) if ref_forget is not None else float("nan"),
               "after": _answer_nll(after, enc_forget) if after is not None else float("nan")}
        if enc_idk is not None:
            nll["refusal_before"] = _answer_nll(ref_idk, enc_idk)
            nll["refusal_after"] = _answer_nll(_sequence_logprobs(model, enc_idk, pad, config.batch_size), enc_idk)

        manifest = Manifest(cls.name, base, {
            "requests": [{"sha256": r.digest(), **({"question": r.question} if record_texts else {})} for r in requests],
            "retain": {"n": len(retain), "sha256": _list_digest(retain)},
            "hyperparameters": config.to_dict(),
            "reference": reference,
            "train": {"steps": result.steps, "first": result.history[0] if result.history else None,
                      "last": result.history[-1] if result.history else None},
            "forget_answer_nll": {k: round(v, 4) for k, v in nll.items()},
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "peak_memory_mb": peak_memory_mb(),
            "threads": torch.get_num_threads(),
        }, base_history=source.manifest).to_dict()  # base_history: what made the model this round started from
        if out is None:
            return BaselineResult(cls.name, None, manifest, model)
        t2 = time.perf_counter()
        token_id = ((source.manifest or {}).get("token") or {}).get("id")
        check = probe(model, tokenizer, requests, neighbour_questions(requests, record_texts=record_texts,
                                                                       extra=[r.question for r in retain[:8]]),
                      token_id, record_texts=record_texts)
        entry = {"kind": "erase", "method": cls.name, "version": __version__,
                 "requests": [{"sha256": r.digest(), **(r.to_dict() if record_texts else {})} for r in requests],
                 "settings": {"hyperparameters": config.to_dict(), "retain": manifest["retain"]}, "verification": check}
        manifest["timings_s"]["verification"] = round(time.perf_counter() - t2, 2)
        save_round(out, model, tokenizer, start, source, manifest=manifest, entry=entry)
        manifest["timings_s"]["save"] = round(time.perf_counter() - t2, 2)
        return BaselineResult(cls.name, Path(out), manifest, model)


def _list_digest(items: list[ForgetRequest]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for r in items:
        digest.update(r.digest().encode())
    return digest.hexdigest()
