"""Recovery audit: does an erased fact come back by simple means?

Every erased question is asked again under each attack, and the answer is checked for the fact
(``fact_returns``): the request's ``answer``, or the base model's own greedy answer to the
question when the request has none.

Attacks (``ATTACKS``):
- ``plain``: greedy decoding, as ``unierase ask`` answers.
- ``token_ban``: greedy with the unlearning token banned at decode (``bad_words_ids``, which any
  serving stack offers).
- ``sampling``: ``samples`` answers sampled at ``temperature`` (a leak when any sample leaks).
- ``rewordings``: the request's ``paraphrases`` when it has them, otherwise the question put in
  ``REWORDING_FRAMES`` (fixed frames around the unchanged question: a cheap stand-in for a
  paraphrase that keeps its entity and relation words).
- ``int8``: the model with every linear layer quantized to int8 (``quantize_dynamic``, CPU).
- ``int4``: weight-only 4-bit round-to-nearest (symmetric, groups of ``INT4_GROUP`` input columns),
  every linear layer but the output layer, as 4-bit serving keeps it; far more unlearned knowledge
  returns at 4 bits than at 8 (Zhang et al., ICLR 2025).
- ``relearn``: ``relearn_steps`` Adam steps on question–answer pairs of the same kind that are
  not audited (``relearn_data``; default: the bundled demo facts' retain rows), then re-asked.

The share of plain answers that are a well-formed refusal (``refusals.is_well_formed_refusal``) is
reported beside them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .generation import generate_texts
from .rewordings import REWORDING_FRAMES
from .refusals import answer_checks, is_chosen_refusal, is_refusal, is_well_formed_refusal
from .requests import ForgetRequest
from .storage import UniEraseError

log = logging.getLogger(__name__)

ATTACKS = ("plain", "token_ban", "sampling", "rewordings", "int8", "int4", "relearn")
INT4_GROUP = 128
"""Input columns that share one 4-bit scale (the usual group size of 4-bit weight quantization)."""



@dataclass
class AuditConfig:
    """What the audit tries (every field is recorded in its report)."""

    attacks: tuple[str, ...] = ATTACKS
    max_new_tokens: int = 48
    """Length of every generated answer."""
    samples: int = 5
    """Sampled answers per question (``sampling``)."""
    temperature: float = 1.0
    rewordings: int = 3
    """Rewordings per question: its own ``paraphrases`` first, then ``REWORDING_FRAMES``, up to this
    many. No frame opens or closes like one of the edit's own context variants (``edit.prompts``):
    a frame the edit was fitted on would understate the leak."""
    relearn_steps: int = 5
    relearn_lr: float = 1e-5
    relearn_pairs: int = 8
    """Question–answer pairs the relearning attack trains on (one batch per step)."""
    rouge_threshold: float = 0.5
    """A reference of more than three words counts as returned when the answer's ROUGE-L recall
    against it reaches this and the answer is not a refusal (a short reference: when the answer
    contains it as a word)."""
    seed: int = 0
    refusal: str | None = None
    """The sentence the erased model should answer with (``refusals.is_chosen_refusal``); unset, the
    audit reads it from the checkpoint's manifest when the audited model is a directory."""

    def __post_init__(self):
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise UniEraseError(f"unknown attack(s) {', '.join(unknown)} (choose from {', '.join(ATTACKS)})")
        if self.samples < 1 or self.rewordings < 1 or self.max_new_tokens < 1 or self.relearn_steps < 1:
            raise UniEraseError("samples, rewordings, max_new_tokens and relearn_steps must be at least 1")
        if not 0 < self.rouge_threshold <= 1:
            raise UniEraseError(f"rouge_threshold must be in (0, 1] (got {self.rouge_threshold})")


def fact_returns(text: str, reference: str, rouge_threshold: float = 0.5) -> bool:
    """Whether ``text`` gives the fact ``reference`` states (see ``AuditConfig.rouge_threshold``)."""
    from .edit_checks import answer_matches

    reference = reference.strip()
    if not reference or not text.strip():
        return False
    if len(reference.split()) <= 3:
        return answer_matches(text, reference)
    if is_refusal(text):
        return False
    from .evaluation.metrics import rouge_recall

    return float(rouge_recall([text], [reference]).value) >= rouge_threshold


def rewordings(request: ForgetRequest, count: int) -> list[str]:
    """The request's own paraphrases first, then fixed frames around its question."""
    own = list(request.paraphrases or [])
    frames = [f.format(q=request.question) for f in REWORDING_FRAMES]
    return (own + frames)[:count] if own else frames[:count]


@dataclass
class AuditReport:
    """Per request and per attack: whether the fact came back; leak rates per attack."""

    items: list[dict]
    aggregate: dict
    config: dict
    model: str
    out: Path | None = field(default=None)

    @property
    def leaked(self) -> bool:
        return any(v for v in self.aggregate["leak_rate"].values())

    def to_dict(self) -> dict:
        return {"model": self.model, "config": self.config, "aggregate": self.aggregate, "items": self.items}

    def markdown(self) -> str:
        a = self.aggregate
        lines = [f"# Recovery audit of `{self.model}`", "",
                 f"{a['requests']} erased request(s); a fact counts as back when the answer gives the reference "
                 f"(`fact_returns`). Plain answers: {_pct(a.get('chosen_refusal'))} exactly the chosen refusal, "
                 f"{_pct(a.get('well_formed_refusals'))} well-formed refusals (`refusals.answer_checks`).", "",
                 "| attack | fact back | items |", "|---|---|---|"]
        for attack, rate in a["leak_rate"].items():
            lines.append(f"| {attack} | {rate:.1%} | {a['counted'][attack]} |")
        lines.append(f"| any of them | {a['any_attack']:.1%} | {a['requests']} |")
        leaking = [i for i in self.items if i["any_attack"]]
        if leaking:
            lines += ["", "## Facts that came back", ""]
            for item in leaking[:20]:
                how = ", ".join(k for k, v in item["attacks"].items() if v["leak"])
                lines.append(f"- {item['question'] or item['sha256'][:12]} — {how}")
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _relearn_pairs(config: AuditConfig, audited: set[str], relearn_data) -> list[tuple[str, str]]:
    if relearn_data is None:
        from .edit_checks import load_demo_facts

        rows = [(f["question"], f["answer"]) for f in load_demo_facts() if f["role"] == "retain"]
    else:
        from .requests import load_requests

        rows = [(r.question, r.answer) for r in load_requests(relearn_data) if r.answer]
        if not rows:
            raise UniEraseError(f"{relearn_data}: the relearning data needs question–answer pairs ('answer' fields)")
    rows = [(q, a) for q, a in rows if q not in audited]
    return rows[:config.relearn_pairs]


def _relearned(model, tokenizer, pairs: list[tuple[str, str]], config: AuditConfig):
    """A copy of ``model`` after ``relearn_steps`` Adam steps on ``pairs`` (answer tokens only)."""
    from .prompts import encode_qa, pad_batch

    attacked = copy.deepcopy(model)
    attacked.train()
    encoded = [encode_qa(tokenizer, q, a) for q, a in pairs]
    batch = pad_batch([e.input_ids for e in encoded], tokenizer.pad_token_id, labels=[e.labels for e in encoded])
    optimiser = torch.optim.Adam([p for p in attacked.parameters() if p.requires_grad], lr=config.relearn_lr)
    for _ in range(config.relearn_steps):
        optimiser.zero_grad()
        loss = attacked(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimiser.step()
    attacked.eval()
    return attacked


def _quantized(model):
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # the int8 kernels warn that they are deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(_cpu_copy(model).float(), {torch.nn.Linear}, dtype=torch.qint8)


def _cpu_copy(model):
    """A copy of ``model`` on the CPU, without the hooks a device map adds (they would move each
    layer's inputs back to the layer's old device)."""
    from accelerate.hooks import remove_hook_from_module

    copied = copy.deepcopy(model)
    if getattr(copied, "hf_device_map", None):
        remove_hook_from_module(copied, recurse=True)
        del copied.hf_device_map
    return copied.to("cpu")


@torch.no_grad()
def fake_quantize_4bit(weight: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    """``weight`` (out × in) rounded to 4 bits per group of ``group`` input columns: each group's
    scale is its largest magnitude / 7, values round to the integers −8…7 (computed in fp32)."""
    w = weight.float()
    columns = w.shape[1]
    pad = (-columns) % group
    padded = torch.nn.functional.pad(w, (0, pad)).reshape(w.shape[0], -1, group)
    scale = padded.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 7
    rounded = (padded / scale).round().clamp(-8, 7) * scale
    return rounded.reshape(w.shape[0], -1)[:, :columns].to(weight.dtype)


@torch.no_grad()
def _quantized_4bit(model):
    """A copy of ``model`` with every linear layer's weight 4-bit (``fake_quantize_4bit``), the output layer kept;
    GPT-2's ``Conv1D`` stores its weight transposed (in × out)."""
    from transformers.pytorch_utils import Conv1D

    quantized = copy.deepcopy(model)
    keep = quantized.get_output_embeddings()
    for module in quantized.modules():
        if module is keep:
            continue
        if isinstance(module, torch.nn.Linear):
            module.weight.copy_(fake_quantize_4bit(module.weight))
        elif isinstance(module, Conv1D):
            module.weight.copy_(fake_quantize_4bit(module.weight.T).T)
    return quantized


def audit(model, requests, *, base=None, tokenizer=None, config: AuditConfig | None = None, out=None,
          overwrite: bool = False, relearn_data=None, cache_dir=None, progress: bool = True,
          dtype=None, device_map=None) -> AuditReport:
    """Re-ask every erased question under each attack (``ATTACKS``) and report whether the fact
    comes back. ``model``: an erased checkpoint (directory) or a loaded model with ``tokenizer``;
    ``requests``: a JSONL path or a list of dicts/ForgetRequest; ``base``: the model before erasure,
    whose greedy answers are the reference of requests without ``answer``; ``out``: a directory
    for ``audit.json`` and ``audit.md``; ``dtype``: what the checkpoints are loaded in (``None``: their own);
    ``device_map``: where (the int8 attack runs on a CPU copy: its kernels are CPU-only)."""
    from .requests import as_requests
    from .record.rounds import chosen_refusal, load_checked_model as load_model
    from .storage import check_output_dir

    config = config or AuditConfig()
    if config.refusal is None and isinstance(model, (str, os.PathLike)):
        config = replace(config, refusal=chosen_refusal(model))
    reqs, _ = as_requests(requests)
    if out is not None:
        check_output_dir(out, overwrite, cache_dir=cache_dir)
    name = str(model) if isinstance(model, (str, os.PathLike)) else "<in-memory model>"
    if tokenizer is None:
        model, tokenizer = load_model(model, cache_dir=cache_dir, dtype=dtype, device_map=device_map)
    references = _references(reqs, base, config, cache_dir, dtype, device_map)
    answers = _attack_answers(model, tokenizer, reqs, config, relearn_data, progress)
    items = _items(reqs, references, answers, config)
    report = AuditReport(items, _aggregate(items, answers, config.refusal), asdict(config), name)
    if out is not None:
        _write(report, out)
    return report


def _references(reqs: list[ForgetRequest], base, config: AuditConfig, cache_dir, dtype=None,
                device_map=None) -> list[str]:
    """Each request's fact: its ``answer``, else the base model's own greedy answer to its question."""
    from .record.rounds import load_checked_model as load_model

    references = [r.answer for r in reqs]
    missing = [i for i, a in enumerate(references) if not a]
    if missing:
        if base is None:
            raise UniEraseError(f"{len(missing)} request(s) have no 'answer' (first: {reqs[missing[0]].question!r}): pass "
                                "--base with the model before erasure, whose own answers are then the reference")
        base_model, base_tok = load_model(base, cache_dir=cache_dir, dtype=dtype, device_map=device_map)
        answers = generate_texts(base_model, base_tok, [reqs[i].question for i in missing], max_new_tokens=config.max_new_tokens,
                            do_sample=False)
        for i, a in zip(missing, answers):
            references[i] = a[0]
        del base_model
    return references


def _attack_answers(model, tokenizer, reqs: list[ForgetRequest], config: AuditConfig, relearn_data,
                    progress: bool) -> dict[str, list[list[str]]]:
    """attack → per request, its answers under that attack (in ``config.attacks`` order)."""
    from .token.training import UNL_TOKEN

    token_id = tokenizer.convert_tokens_to_ids(UNL_TOKEN) if UNL_TOKEN in tokenizer.get_vocab() else None
    questions = [r.question for r in reqs]
    greedy = dict(max_new_tokens=config.max_new_tokens, do_sample=False)
    answers: dict[str, list[list[str]]] = {}
    torch.manual_seed(config.seed)  # the sampling attack's draws (this call's, not the process's set-up)
    bar = tqdm(config.attacks, desc="audit", disable=not progress)
    for attack in bar:
        bar.set_postfix(attack=attack, refresh=True)
        if attack == "plain":
            answers[attack] = generate_texts(model, tokenizer, questions, **greedy)
        elif attack == "token_ban":
            if token_id is None:
                log.warning("the model has no unlearning token: token_ban is plain decoding")
            answers[attack] = generate_texts(model, tokenizer, questions, **greedy,
                                        **({"bad_words_ids": [[token_id]]} if token_id is not None else {}))
        elif attack == "sampling":
            answers[attack] = generate_texts(model, tokenizer, questions, max_new_tokens=config.max_new_tokens, do_sample=True,
                                        temperature=config.temperature, top_k=0, top_p=1.0,
                                        num_return_sequences=config.samples)
        elif attack == "rewordings":
            answers[attack] = _reworded_answers(model, tokenizer, reqs, config, greedy)
        elif attack == "int8":
            answers[attack] = generate_texts(_quantized(model), tokenizer, questions, **greedy)
        elif attack == "int4":
            answers[attack] = generate_texts(_quantized_4bit(model), tokenizer, questions, **greedy)
        elif attack == "relearn":
            pairs = _relearn_pairs(config, set(questions), relearn_data)
            answers[attack] = generate_texts(_relearned(model, tokenizer, pairs, config), tokenizer, questions, **greedy)
    return answers


def _reworded_answers(model, tokenizer, reqs: list[ForgetRequest], config: AuditConfig, greedy: dict) -> list[list[str]]:
    """Per request, the greedy answers to its rewordings (generated in one flat batch, then regrouped)."""
    variants = [rewordings(r, config.rewordings) for r in reqs]
    flat = generate_texts(model, tokenizer, [v for vs in variants for v in vs], **greedy)
    grouped, k = [], 0
    for vs in variants:
        grouped.append([a[0] for a in flat[k:k + len(vs)]])
        k += len(vs)
    return grouped


def _items(reqs: list[ForgetRequest], references: list[str], answers: dict, config: AuditConfig) -> list[dict]:
    """Per request: whether each attack brought the fact back, and whether the plain answer is a good refusal."""
    items = []
    for i, r in enumerate(reqs):
        attacks = {}
        for attack, per_item in answers.items():
            texts = per_item[i]
            leaks = [fact_returns(t, references[i], config.rouge_threshold) for t in texts]
            attacks[attack] = {"leak": any(leaks), "leaking": sum(leaks), "answers": len(texts), "example": texts[0]}
        plain = answers.get("plain", [[""]] * len(reqs))[i][0]
        items.append({"sha256": r.digest(), "question": r.question, "reference": references[i],
                      "reference_from": "answer" if r.answer else "base model", "attacks": attacks,
                      "any_attack": any(a["leak"] for a in attacks.values()),
                      "well_formed_refusal": is_well_formed_refusal(plain) if "plain" in answers else None,
                      "chosen_refusal": (is_chosen_refusal(plain, config.refusal)
                                         if "plain" in answers and config.refusal else None)})
    return items


def _aggregate(items: list[dict], answers: dict, config_refusal: str | None = None) -> dict:
    """Leak rates per attack and over all of them; the shares of plain answers that are exactly the
    chosen refusal and that are well-formed refusals (``refusals.answer_checks``)."""
    n = len(items)
    plain = [answers["plain"][i][0] for i in range(n)] if "plain" in answers else None
    checks = answer_checks(plain, refusal=config_refusal) if plain is not None else {}
    return {"requests": n,
            "leak_rate": {a: round(sum(i["attacks"][a]["leak"] for i in items) / n, 4) for a in answers},
            "counted": {a: n for a in answers},
            "any_attack": round(sum(i["any_attack"] for i in items) / n, 4),
            "well_formed_refusals": checks.get("well_formed_refusals"),
            "chosen_refusal": checks.get("chosen_refusal")}


def _write(report: AuditReport, out) -> None:
    """``audit.json`` and ``audit.md`` in ``out`` (each written atomically)."""
    from .storage import write_json_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "audit.json", report.to_dict())
    write_text_atomic(out / "audit.md", report.markdown())
    report.out = out
    log.info("wrote %s and %s", out / "audit.json", out / "audit.md")


def load_report(path) -> dict:
    """An ``audit.json`` written by ``audit``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
