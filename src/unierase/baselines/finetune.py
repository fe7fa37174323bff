"""Fine-tune a model on question/answer pairs: the TOFU *target* and *retain* models.

The loss is the answer-only cross-entropy of :func:`unierase.prompts.encode_qa` (the prompt in
the model's chat template is not scored; the answer and its end-of-turn token are). Labels come
from the attention mask, so a pad token equal to EOS (SmolLM2) is handled. The result is a
Hugging Face checkpoint written atomically, with ``unierase_manifest.json`` recording the data,
the settings, the wall time, the peak memory and the memorisation (ROUGE-L recall of greedy
answers on the model's own training questions).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..requests import ForgetRequest
from ..record.ledger import non_finite
from .. import distributed
from ..record.rounds import MANIFEST_FILE
from ..storage import UniEraseError, atomic_directory, check_output_dir, locked_run, write_json_atomic
from .data import parse_data_spec, tofu_subset
from ..record.manifest import Manifest, base_model_info, runtime_info
from ..measure import peak_memory_mb
from .trainer import (TrainConfig, collate, encode_pairs, length_grouped_batches, seed_everything, shuffled_batches,
                      train_loop, unwrap_lora, wrap_lora)

log = logging.getLogger(__name__)

@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning defaults, chosen so SmolLM2-135M memorises TOFU answers on a CPU.

    A 135M model needs a far larger learning rate than the 1e-5 used for 8B models.
    """

    epochs: float = 8.0
    lr: float = 1e-4
    eval_items: int = 100
    """Training questions scored for memorisation after training (0: none; -1: all)."""
    eval_max_new_tokens: int = 128
    group_by_length: bool = True
    """Batch examples of similar length (``trainer.length_grouped_batches``): less padding, so the
    same epochs cost less compute."""


def answer_nll_loss(model, batch) -> tuple[torch.Tensor, dict]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    return loss, {"nll": loss.item()}


def generate_answers(model, tokenizer, questions: list[str], *, max_new_tokens: int = 128) -> list[str]:
    """Greedy answers (special tokens hidden), prompts rendered exactly as in training
    (``generation.generate_answers``: batched, each row stopping at its end of turn)."""
    from ..generation import generate_answers as greedy

    return [a.strip() for a in greedy(model, tokenizer, questions, max_new_tokens=max_new_tokens)]


def rouge_l_recall(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references)]


def memorisation(model, tokenizer, items: list[ForgetRequest], *, n: int, max_new_tokens: int, seed: int = 0,
                 groups: dict[str, list[ForgetRequest]] | None = None) -> dict:
    """Mean ROUGE-L recall of greedy answers against the training answers on ``n`` items (-1: all).

    ``groups`` (e.g. forget authors / retain authors) adds the mean over the scored items of each group.
    """
    chosen = list(items) if n < 0 or n >= len(items) else random.Random(seed).sample(list(items), n)
    start = time.perf_counter()
    predictions = generate_answers(model, tokenizer, [r.question for r in chosen], max_new_tokens=max_new_tokens)
    scores = rouge_l_recall(predictions, [r.answer for r in chosen])
    by_group = {}
    for name, members in (groups or {}).items():
        wanted = set(members)
        picked = [s for r, s in zip(chosen, scores) if r in wanted]
        if picked:
            by_group[name] = {"rougeL_recall": round(sum(picked) / len(picked), 4), "items": len(picked)}
    return {
        "rougeL_recall": round(sum(scores) / len(scores), 4),
        "items": len(chosen),
        "groups": by_group,
        "share_ge_0.7": round(sum(s >= 0.7 for s in scores) / len(scores), 4),
        "seconds": round(time.perf_counter() - start, 1),
        "examples": [{"question": r.question, "answer": r.answer, "generated": p}
                     for r, p in list(zip(chosen, predictions))[:3]],
    }


@dataclass
class FinetuneResult:
    out: Path
    manifest: dict

    def summary(self) -> str:
        m = self.manifest
        mem = m.get("memorisation") or {}
        extra = f", ROUGE-L recall on {mem['items']} training QA {mem['rougeL_recall']:.3f}" if mem else ""
        return (f"fine-tuned on {m['data']['n_items']} QA in {m['timings_s']['train']:.0f} s "
                f"({m['train']['steps']} steps){extra}; saved to {self.out}")


def select_items(data: str, *, authors: int | None, forget_authors: int | None, split: str,
                 data_dir: str | os.PathLike | None) -> tuple[list[ForgetRequest], dict]:
    """The training QA and a description of them.

    ``tofu:full`` with ``authors`` = N trains on a subset of N whole authors whose last
    ``forget_authors`` are TOFU's final authors; ``split="retain"`` drops those forget authors
    (the retain model). Any other spec (``tofu:CONFIG`` or a JSONL file) is used as is.
    """
    if split not in ("full", "retain"):
        raise UniEraseError(f"split must be 'full' or 'retain', got {split!r}")
    if authors is not None:
        if data != "tofu:full":
            raise UniEraseError("--authors selects whole authors from tofu:full; use --data tofu:full")
        subset = tofu_subset(authors, forget_authors or 1, data_dir)
        items = subset.full if split == "full" else subset.retain
        groups = {"retain_authors": subset.retain, **({"forget_authors": subset.forget} if split == "full" else {})}
        return items, {"spec": data, "split": split, **subset.describe(), "n_items": len(items), "_groups": groups}
    if split == "retain":
        raise UniEraseError("--split retain needs --authors (the subset that defines the forget authors)")
    items = parse_data_spec(data, data_dir)
    return items, {"spec": data, "split": split, "n_items": len(items)}


def finetune(
    model_spec,
    data: str,
    out,
    *,
    config: FinetuneConfig | None = None,
    authors: int | None = None,
    forget_authors: int | None = None,
    split: str = "full",
    data_dir=None,
    overwrite: bool = False,
    cache_dir=None,
    threads: int | None = None,
    dtype=None,
    device_map=None,
) -> FinetuneResult:
    """Fine-tune ``model_spec`` on ``data`` with the answer-only loss and save it to ``out`` (in ``dtype``:
    ``models.loading.DTYPES``, ``None`` the checkpoint's own)."""
    config = config or FinetuneConfig()
    config.validate()
    distributed.join_process_group()  # started by torchrun / accelerate launch: the batches are shared
    out = check_output_dir(out, overwrite, cache_dir=cache_dir)
    spec_dir = model_spec if isinstance(model_spec, (str, os.PathLike)) and Path(model_spec).is_dir() else None
    if not distributed.is_main():  # trains its share; the first process alone evaluates and writes
        _finetune(model_spec, data, None, config, authors, forget_authors, split, data_dir, cache_dir, threads,
                  dtype, device_map)
        distributed.barrier()
        return FinetuneResult(Path(out), None)
    with locked_run(out, [spec_dir]):  # held until the output is in place
        result = _finetune(model_spec, data, out, config, authors, forget_authors, split, data_dir, cache_dir, threads,
                           dtype, device_map)
    distributed.barrier()
    return result


def _finetune(model_spec, data, out, config, authors, forget_authors, split, data_dir, cache_dir, threads,
              dtype=None, device_map=None) -> FinetuneResult:
    from ..record.rounds import load_checked_model as load_model

    if threads:
        torch.set_num_threads(threads)
    items, data_info = select_items(data, authors=authors, forget_authors=forget_authors, split=split, data_dir=data_dir)
    groups = data_info.pop("_groups", None)
    t0 = time.perf_counter()
    seed_everything(config.seed)
    model, tokenizer = load_model(model_spec, cache_dir=cache_dir, dtype=dtype, device_map=device_map)
    t_load = time.perf_counter() - t0
    base = base_model_info(model, model_spec)
    if config.lora:
        model = wrap_lora(model, config)
    encoded = encode_pairs(tokenizer, [(r.question, r.answer) for r in items], config.max_length)
    device = next(model.parameters()).device
    rng = random.Random(config.seed)

    lengths = [len(ids) for ids, _ in encoded]

    def epoch_batches(_epoch):
        batches = (length_grouped_batches(lengths, config.batch_size, rng) if config.group_by_length
                   else shuffled_batches(len(encoded), config.batch_size, rng))
        for idx in batches:
            yield collate([encoded[i] for i in idx], tokenizer.pad_token_id, device)

    steps_per_epoch = -(-len(encoded) // config.batch_size)
    result = train_loop(model, epoch_batches, answer_nll_loss, config,
                        steps_per_epoch=steps_per_epoch, desc="finetune")
    model = unwrap_lora(result.model)  # after sharded training: the first process's gathered copy
    if out is None:  # another process's share of a run the first process writes
        return None
    mem = None
    t_eval = 0.0
    if config.eval_items:
        t1 = time.perf_counter()
        mem = memorisation(model, tokenizer, items, n=config.eval_items, max_new_tokens=config.eval_max_new_tokens,
                           seed=config.seed, groups=groups)
        t_eval = time.perf_counter() - t1
    manifest = Manifest("finetune", base, {
        "data": data_info,
        "hyperparameters": config.to_dict(),
        "train": {"steps": result.steps, "engine": result.engine, "held_mb_per_process": result.held_mb,
                  "final_loss": result.history[-1] if result.history else None,
                  "loss_per_epoch": _per_epoch(result.history, steps_per_epoch,
                                                config.grad_accum * distributed.rank_and_size()[1])},
        "timings_s": {"load": round(t_load, 1), "train": round(result.seconds, 1), "memorisation_eval": round(t_eval, 1)},
        "peak_memory_mb": peak_memory_mb(),
        **runtime_info(model),
        "threads": torch.get_num_threads(),
        "processes": distributed.rank_and_size()[1],
        "memorisation": mem,
    }).to_dict()
    bad = non_finite(model)
    if bad:
        raise UniEraseError(f"fine-tuning produced non-finite weights ({', '.join(bad[:3])}); nothing was saved")
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(Path(tmp) / MANIFEST_FILE, manifest)
    return FinetuneResult(Path(out), manifest)


def _per_epoch(history: list[dict], steps_per_epoch: int, grad_accum: int) -> list[float]:
    per = max(1, steps_per_epoch // grad_accum)
    values = [h.get("nll") for h in history if h.get("nll") is not None]
    return [round(sum(values[i:i + per]) / len(values[i:i + per]), 4) for i in range(0, len(values), per)]
