"""What every erasure round does around its method: read the input directory strictly, take a
fingerprint of the weights before, check the result at erasure time, and write the output —
checkpoint, manifest, ledger entry and revert data — in one atomic, fsync'd swap.

UniErase (``api.forget``) and the fine-tuning baselines (``baselines.run``) both go through
``load_input`` → ``start_round`` → their method → ``probe`` → ``save_round``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from . import deltas, guard
from .guard import GuardBaseline
from .edit_state import STATE_FILE, EditState
from .manifest import Manifest
from .ledger import (DELTA_DIR, LEDGER_FILE, append, combined_digest, delta_path, file_sha256, files_dir, head_of,
                     ledger_text, non_finite, read_ledger, effective_rounds)
from ..models.loading import full_state_dict
from ..requests import ForgetRequest
from ..storage import UniEraseError, atomic_directory, fault_point, save_tensors_atomic, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST_FILE = "unierase_manifest.json"
SMALL_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
"""Top-level files of a checkpoint that a round may replace and a revert puts back (config,
tokenizer, chat template, manifest); weights and the edit state are restored from their deltas."""


# ----------------------------------------------------------------------------- reading an input

@dataclass
class ModelInput:
    """A model directory as read before a round: its manifest, edit state and ledger, all checked."""

    folder: Path | None
    manifest: dict | None = None
    state: EditState = field(default_factory=EditState)
    ledger: list[dict] = field(default_factory=list)

    @property
    def unierase_rounds(self) -> list[dict]:
        m = self.manifest or {}
        return list(m.get("rounds", [])) if m.get("method") == "unierase" else []


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of ``folder`` (None when there is none); anything unreadable is an error."""
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UniEraseError(f"{path}: corrupt manifest ({err.__class__.__name__}: {err}); restore it or remove the "
                            "directory's unierase files to treat it as a plain model") from None
    Manifest.from_dict(data, str(path))  # the schema's checks: method, version, rounds
    return data


def chosen_refusal(folder: str | os.PathLike) -> str | None:
    """The refusal the last UniErase round of ``folder`` chose (None: not erased by UniErase, or no manifest)."""
    manifest = read_manifest(folder) or {}
    rounds = manifest.get("rounds", []) if manifest.get("method") == "unierase" else []
    return rounds[-1].get("hyperparameters", {}).get("refusal") if rounds else None


def read_records(folder: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """The manifest and the checked ledger of ``folder`` (no edit state: it can be large)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        orphan = next((name for name in (STATE_FILE, LEDGER_FILE) if (folder / name).exists()), None)
        if orphan:
            raise UniEraseError(f"{folder} holds {orphan} but no {MANIFEST_FILE}; the record of its earlier edits is missing")
        return None, []
    return manifest, read_ledger(folder, manifest.get("ledger"))


def check_records(folder: str | os.PathLike) -> None:
    """The cheap part of ``load_input``, run on every load of a local model: the manifest parses,
    the ledger's chain is intact and matches it, and no record is missing beside another."""
    read_records(folder)


def load_checked_model(spec=None, **kwargs):
    """``models.loading.load_model`` after ``check_records`` on a local directory: the verbs that
    read a model directory (forget, ask, audit, verify, revert, eval) refuse a tampered or truncated
    ledger, or a missing record, before any work."""
    from ..models.loading import load_model, resolve_model_path

    if spec is not None and not hasattr(spec, "config"):
        path = resolve_model_path(spec, kwargs.get("cache_dir"))
        if Path(path).is_dir():
            check_records(path)
    return load_model(spec, **kwargs)


def load_input(folder: str | os.PathLike | None, *, layers: list[int] | None = None, key_dim: int | None = None) -> ModelInput:
    """Read ``folder``'s manifest, edit state and ledger and check that they agree.

    A manifest without the state it needs, a state without a manifest, a state that does not fit
    the model (``layers``, ``key_dim``) or is not finite, and a ledger that does not match its
    manifest are errors: never a silent start from scratch that forgets earlier edits.
    """
    if folder is None:
        return ModelInput(None)
    folder = Path(folder)
    manifest, ledger = read_records(folder)
    if manifest is None:
        return ModelInput(folder)
    state_path = folder / STATE_FILE
    state = EditState()
    if manifest["method"] == "unierase":
        if manifest["rounds"] and not state_path.exists():
            raise UniEraseError(f"{folder}: the manifest lists {len(manifest['rounds'])} UniErase round(s) but {STATE_FILE} "
                                "is missing; a further round would undo them")
        if state_path.exists():
            state = EditState.load(folder)
            state.validate(layers if layers is not None else manifest.get("layers"), key_dim, source=state_path)
    return ModelInput(folder, manifest, state, ledger)


# ----------------------------------------------------------------------------- before and after

@dataclass
class RoundStart:
    """The weights before a round: per-tensor digests, and copies of the tensors the method changes."""

    digests: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    copies: dict[str, torch.Tensor]
    state: dict[int, torch.Tensor]
    guard: GuardBaseline | None = None
    """The model's own answers before the round, which ``save_round`` checks it still gives."""

    @property
    def weights(self) -> str:
        return combined_digest(self.digests)


def start_round(model, state: EditState | None = None, *, changes: Iterable[str] | None = None, tokenizer=None,
                neighbours: Iterable[str] = ()) -> RoundStart:
    """Fingerprint ``model`` before a round; ``changes``: the tensors it will change (None: all).
    With ``tokenizer``, also take the guard's answers before the round (``guard.take_baseline``:
    generic questions and up to 8 of the round's ``neighbours``)."""
    tensors = full_state_dict(model)
    names = list(tensors) if changes is None else list(changes)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise UniEraseError(f"no tensor named {missing[0]} in the model")
    return RoundStart({n: deltas.tensor_digest(t) for n, t in tensors.items()},
                      {n: tuple(t.shape) for n, t in tensors.items()},
                      {n: tensors[n].detach().clone() for n in names},
                      state.tensors() if state is not None else {},
                      guard.take_baseline(model, tokenizer, list(neighbours)) if tokenizer is not None else None)


def embedding_names(model) -> list[str]:
    """State-dict names of the input and output embeddings (the unlearning token changes a row of each)."""
    wanted = [m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return [n for n, t in model.state_dict(keep_vars=True).items() if any(t is w for w in wanted)]


def leaks(text: str, answer: str | None) -> bool:
    """Whether a generated answer still gives ``answer`` (a keyword: contained; a sentence:
    ROUGE-L recall ≥ 0.5, the share of the answer's words it reproduces in order)."""
    from ..edit_checks import answer_matches

    if not answer:
        return False
    if len(answer.split()) <= 3:
        return answer_matches(text, answer)
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(answer, text)["rougeL"].recall >= 0.5


def is_erased(answer_ids: list[int], text: str, request: ForgetRequest, token_id: int | None) -> bool:
    """The erasure criterion of the ledger and ``verify``: the answer starts with the unlearning
    token, or is a refusal, or (when the request names its answer) no longer gives it and is not
    broken text — a destroyed model no longer gives any answer, and that is not an erasure."""
    from ..refusals import is_broken_text, is_refusal

    if token_id is not None and answer_ids and answer_ids[0] == token_id:
        return True
    if is_refusal(text):
        return True
    return bool(request.answer) and not leaks(text, request.answer) and not is_broken_text(text)


def _ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(list(map(int, ids))).encode()).hexdigest()


PROBE_TOKENS = 24
"""Greedy tokens per answer in the erasure-time check and in ``verify`` (the same in both)."""


def probe(model, tokenizer, requests: list[ForgetRequest], neighbours: list[str], token_id: int | None, *,
          record_texts: bool = True, max_new_tokens: int = PROBE_TOKENS) -> dict:
    """Ask every request and neighbour question: which requests are erased, and a fingerprint of
    each neighbour's answer (``verify`` later reports the neighbours whose answer changed)."""
    from ..generation import generate_answer_ids

    questions = [r.question for r in requests] + list(neighbours)
    ids = generate_answer_ids(model, tokenizer, questions, max_new_tokens=max_new_tokens) if questions else []
    texts = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    items = [{"sha256": r.digest(), "erased": is_erased(i, t, r, token_id), "answer_sha256": _ids_digest(i),
              **({"answer": t} if record_texts else {})}
             for r, i, t in zip(requests, ids, texts)]
    rest = list(zip(neighbours, ids[len(requests):], texts[len(requests):]))
    return {"max_new_tokens": max_new_tokens, "token_id": token_id,
            "erased": sum(x["erased"] for x in items), "requests": len(items), "items": items,
            "neighbours": [{"question": q, "answer": t, "answer_sha256": _ids_digest(i)} for q, i, t in rest]}


def neighbour_questions(requests: list[ForgetRequest], *, record_texts: bool, extra: list[str] = ()) -> list[str]:
    """Questions whose answers must not change: 8 generic held-out questions, plus (when texts are
    recorded) ``extra`` — the requests' substitute-entity questions, or retain questions."""
    from ..token.questions import heldout_questions

    own = {r.question for r in requests}
    picked = list(dict.fromkeys(q for q in (list(extra)[:16] if record_texts else []) if q not in own))
    return picked + heldout_questions(8)


# ----------------------------------------------------------------------------- writing the output

def _small_files(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix in SMALL_SUFFIXES and p.name != LEDGER_FILE}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # revert data never changes once written
    except OSError:
        shutil.copy2(src, dst)


def _state_changes(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]):
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is not None and new is not None and old is new:
            continue
        yield name, old, new


def save_round(out: str | os.PathLike, model, tokenizer, start: RoundStart, source: ModelInput, *, manifest: dict,
               entry: dict, state: EditState | None = None, force: bool = False,
               factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict:
    """Write ``model`` (+ tokenizer, state, manifest) to ``out`` with this round's ledger entry and
    revert data; returns the entry. ``factors``: the changed weights' updates as the method applied
    them (``deltas.encode``). Nothing is written when a weight is not finite, or when the
    model no longer gives its own ordinary answers (``guard.check``; ``force`` saves it anyway)."""
    entry = dict(entry)
    tensors = full_state_dict(model)  # read once (an offloaded model's are read back from where they sit)
    _check_before_saving(model, tokenizer, start, state, manifest, entry, force, tensors)
    after = {n: deltas.tensor_digest(t) for n, t in tensors.items()}
    weight_data, weight_info = _weight_deltas(start, tensors, after, factors)
    state_data, state_info = _state_deltas(start, state)
    index = len(source.ledger)
    entry.update(round=len(effective_rounds(source.ledger)) + 1, weights_before=start.weights,
                 weights_after=combined_digest(after))
    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if state:
            state.save(tmp)
        fault_point("after-weights")
        if source.folder is not None and (source.folder / DELTA_DIR).is_dir():
            for path in (source.folder / DELTA_DIR).rglob("*"):
                if path.is_file():
                    _link_or_copy(path, tmp / DELTA_DIR / path.relative_to(source.folder / DELTA_DIR))
        delta_file = delta_path(tmp, index)
        delta_file.parent.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(delta_file, {**weight_data, **state_data} or {"empty": torch.zeros(0)})
        previous, written = _small_files(source.folder), _small_files(tmp)
        replaced = sorted(n for n in previous if n == MANIFEST_FILE or n not in written
                          or file_sha256(previous[n]) != file_sha256(written[n]))
        for name in replaced:
            _link_or_copy(previous[name], files_dir(tmp, index) / name)
        added = sorted(set(written) - set(previous) | ({MANIFEST_FILE} - set(previous)))
        entry["delta"] = {"file": str(delta_file.relative_to(tmp)), "sha256": file_sha256(delta_file),
                          "tensors": weight_info, "state": state_info,
                          "files": {"replaced": replaced, "added": added, "known": source.folder is not None}}
        entry = append(source.ledger, entry)
        entries = source.ledger + [entry]
        fault_point("after-deltas")
        write_text_atomic(tmp / LEDGER_FILE, ledger_text(entries))
        fault_point("after-ledger")
        manifest["ledger"] = head_of(entries)
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return entry


def _check_before_saving(model, tokenizer, start: RoundStart, state: EditState | None, manifest: dict, entry: dict,
                         force: bool, tensors: dict) -> None:
    """Finite weights, a valid state, and (when its answers were taken) the guard; the guard's record
    goes into the ledger entry and the manifest (the round's record for UniErase)."""
    bad = non_finite(model, tensors)
    if bad:
        raise UniEraseError(f"the round produced non-finite weights ({', '.join(bad[:3])}); nothing was saved")
    if state is not None:
        state.validate(None, None, source="the new edit state")
    if start.guard is not None:
        report = guard.check(model, tokenizer, start.guard, force=force)
        entry["guard"] = report
        rounds = manifest.get("rounds")
        (rounds[-1] if rounds else manifest)["guard"] = report


def _weight_deltas(start: RoundStart, tensors: dict, after: dict[str, str], factors=None) -> tuple[dict, dict]:
    """The revert data of the weights the round changed (``deltas.encode``)."""
    changes, unrecorded = {}, []
    for name, digest in after.items():
        if start.digests.get(name) == digest:
            continue
        if name in start.copies:
            changes[name] = (start.copies[name], tensors[name])
            continue
        # a tensor that only grew (the embedding of a new token) needs no copy: its old rows are still there
        old = start.shapes.get(name)
        grown = (old is not None and len(old) >= 1 and tuple(tensors[name].shape[1:]) == tuple(old[1:])
                 and tensors[name].shape[0] > old[0] and deltas.tensor_digest(tensors[name][:old[0]]) == start.digests[name])
        if grown:
            changes[name] = (tensors[name][:old[0]], tensors[name])
        else:
            unrecorded.append(name)
    weight_data, weight_info = deltas.encode(changes, factors)
    for name in unrecorded:
        weight_info[name] = {"kind": "unrecorded"}
    for name, info in weight_info.items():
        if name in after:
            info["digest_after"] = after[name]
    return weight_data, weight_info


def _state_deltas(start: RoundStart, state: EditState | None) -> tuple[dict, dict]:
    """The revert data of the edit state (the preserved keys K_p K_pᵀ per layer)."""
    state_data, state_info = {}, {}
    if state is not None:
        for name, old, new in _state_changes(start.state, state.tensors()):
            if old is None:
                state_info[name] = {"kind": "absent"}
            else:  # gone after the round (its keys now summed under another name): kept whole
                gone = torch.empty(0, dtype=old.dtype)
                data, info = deltas.encode({name: (old, new if new is not None else gone)})
                state_data.update(data)
                state_info.update(info)
    return state_data, state_info
