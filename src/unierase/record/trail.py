"""Prove, check, undo: ``history``, ``verify`` and ``revert`` over a model directory's ledger.

- ``history``: what was erased, when and by which method (one row per ledger entry).
- ``verify``: do the current weights match the ledger, does every round's revert data still
  lead back to the weights recorded before it, do the erased questions still refuse, and do the
  neighbour questions recorded at erasure time still get the same answers?
- ``revert``: the weights, edit state and files exactly as they were before a round, checked
  against the digest the ledger recorded then. Rounds after the one reverted are undone too; to
  apply one of them again, run ``forget`` with its requests (the ledger keeps them) — a revert
  never replays later rounds by itself, since they were computed against weights that no longer
  exist.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .._version import __version__
from . import deltas
from .edit_state import STATE_FILE, EditState
from .ledger import (DELTA_DIR, LEDGER_FILE, append, combined_digest, delta_path, file_sha256, files_dir, head_of,
                     ledger_text, effective_rounds, round_status, weights_digests)
from ..models.loading import full_state_dict
from ..requests import ForgetRequest, load_requests
from .rounds import MANIFEST_FILE, _ids_digest, probe, read_records
from ..storage import (UniEraseError, atomic_directory, check_output_dir, locked_run, write_json_atomic,
                      write_text_atomic)


def _ledger_of(folder) -> tuple[dict, list[dict]]:
    manifest, ledger = read_records(folder)  # the edit state is read once, where it is used
    if manifest is None or not ledger:
        raise UniEraseError(f"{folder} has no erasure ledger (it was not written by unierase forget, or by a version "
                            "before the ledger)")
    return manifest, ledger


# ----------------------------------------------------------------------------- history

def history(folder) -> list[dict]:
    """One row per ledger entry: index, kind, round, method, time, requests, status, weights."""
    _, entries = _ledger_of(folder)
    status = round_status(entries)
    rows = []
    for e in entries:
        check = e.get("verification") or {}
        rows.append({
            "entry": e["index"], "kind": e["kind"], "round": e.get("round") if e["kind"] == "erase" else e.get("to_round"),
            "method": e.get("method"), "time": e.get("time"), "requests": len(e.get("requests", [])),
            "questions": [r.get("question") for r in e.get("requests", []) if r.get("question")],
            "erased_at_time": f"{check['erased']}/{check['requests']}" if check else None,
            "status": status.get(e["index"], "—" if e["kind"] == "revert" else "in force"),
            "weights_after": e.get("weights_after"), "hash": e["hash"],
        })
    return rows


def history_table(rows: list[dict]) -> str:
    lines = ["| entry | kind | round | method | time | requests | erased then | status | weights after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        what = "revert to" if r["kind"] == "revert" else ""
        lines.append(f"| {r['entry']} | {r['kind']} | {what} {r['round']} | {r['method']} | {r['time']} | {r['requests']} | "
                     f"{r['erased_at_time'] or ''} | {r['status']} | {str(r['weights_after'])[:12]} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- undoing rounds

def _delta_tensors(folder: Path, entry: dict) -> dict[str, torch.Tensor]:
    info = entry.get("delta") or {}
    path = folder / info.get("file", delta_path(folder, entry["index"]).relative_to(folder))
    if not path.is_file():
        raise UniEraseError(f"{path}: the revert data of round {entry.get('round')} (entry {entry['index']}) is missing")
    if file_sha256(path) != info.get("sha256"):
        raise UniEraseError(f"{path}: the revert data of round {entry.get('round')} does not match the ledger's checksum")
    try:
        return load_file(str(path))
    except Exception as err:
        raise UniEraseError(f"{path}: unreadable revert data ({err})") from None


def _undo(folder: Path, entry: dict, weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Turn ``weights`` and ``state`` (``EditState.tensors()``, after ``entry``) into what they were
    before it, in place."""
    tensors = _delta_tensors(folder, entry)
    info = entry["delta"]
    for name, item in info["tensors"].items():
        if item.get("kind") == "unrecorded":
            raise UniEraseError(f"round {entry.get('round')} changed {name} without revert data; it cannot be undone")
        if name not in weights:
            raise UniEraseError(f"the model has no tensor {name}, which round {entry.get('round')} changed")
        weights[name] = deltas.decode(name, weights[name], item, tensors)
    undo_state(state, info.get("state", {}), tensors)


def undo_state(state: dict[str, torch.Tensor], info: dict[str, dict], tensors: dict[str, torch.Tensor]) -> None:
    """Turn ``state`` (``EditState.tensors()`` after a round) into what it was before, in place, from
    the round's state revert data (``info``, ``tensors``)."""
    for name, item in info.items():
        if item.get("kind") == "absent":
            state.pop(name, None)
        else:  # a form the round replaced (key rows summed into K Kᵀ) was kept whole: nothing to start from
            state[name] = deltas.decode(name, state.get(name, torch.empty(0)), item, tensors)


def _tied_groups(model) -> list[list[str]]:
    """State-dict names that share one parameter (tied embeddings)."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return list(groups.values())


def _load_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Put ``weights`` into ``model``, shrinking the embedding where a round had grown it."""
    embed = model.get_input_embeddings()
    name = next(n for n, t in model.state_dict(keep_vars=True).items() if t is embed.weight)
    rows = weights[name].shape[0]
    if rows != embed.weight.shape[0]:
        model.resize_token_embeddings(rows)
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for group in _tied_groups(model):
            values = [weights[n] for n in group]
            if any(deltas.tensor_digest(v) != deltas.tensor_digest(values[0]) for v in values[1:]):
                raise UniEraseError(f"tied tensors {group} would differ after the revert")
            target = own[group[0]]
            if tuple(target.shape) != tuple(values[0].shape):
                raise UniEraseError(f"{group[0]}: shape {tuple(target.shape)} cannot take {tuple(values[0].shape)}")
            target.copy_(values[0])


@dataclass
class RevertResult:
    out: Path
    to_round: int
    undone: list[int]
    weights: str

    def summary(self) -> str:
        return (f"reverted {len(self.undone)} round(s) (ledger entries {self.undone}); {self.out} holds the model as it was "
                f"before round {self.to_round} (weights {self.weights[:12]}, checked against the ledger)")


def revert(folder, undo_from: int, out, *, overwrite: bool = False, cache_dir=None) -> RevertResult:
    """Write to ``out`` the model of ``folder`` as it was before round ``undo_from`` (bit for bit):
    rounds ``undo_from``, ``undo_from + 1``, … are undone."""
    from .rounds import load_checked_model as load_model

    folder = Path(folder)
    check_output_dir(out, overwrite, cache_dir=cache_dir)
    with locked_run(out, [folder]):
        job = _plan_revert(folder, undo_from)
        model, tokenizer = load_model(folder, cache_dir=cache_dir)
        _roll_back(job, model)
        _load_weights(model, job.weights)
        _retie_if_it_was_tied(job, model)
        revert_entry = append(job.entries, {"kind": "revert", "method": "revert", "version": __version__,
                                            "to_round": undo_from, "undone": [e["index"] for e in job.undo],
                                            "weights_before": job.current, "weights_after": job.restored})
        new_entries = job.entries + [revert_entry]
        with atomic_directory(out) as tmp:
            model.save_pretrained(tmp)
            _restore_files(job, tmp)
            if job.state:
                EditState.from_tensors(job.state).save(tmp)
            _copy_kept_deltas(job, tmp)
            write_text_atomic(tmp / LEDGER_FILE, ledger_text(new_entries))
            _write_reverted_manifest(job, tmp, new_entries, revert_entry)
        return RevertResult(Path(out), undo_from, revert_entry["undone"], job.restored)


@dataclass
class _Revert:
    """A revert in progress: the ledger, the rounds it undoes, and the weights and edit state rolled back."""

    folder: Path
    undo_from: int
    entries: list[dict]
    live: list[dict]
    """The rounds in force, in order; ``live[undo_from - 1:]`` are undone."""
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """``EditState.tensors()``, rolled back."""
    current: str = ""
    """Digest of the weights before the revert."""
    restored: str = ""
    """Digest of the weights after it (checked against the ledger)."""

    @property
    def undo(self) -> list[dict]:
        return self.live[self.undo_from - 1:]


def _plan_revert(folder: Path, undo_from: int) -> _Revert:
    """Read the ledger and check that round ``undo_from`` is in force and its start files were recorded."""
    manifest, entries = _ledger_of(folder)
    live = effective_rounds(entries)
    if not 1 <= undo_from <= len(live):
        raise UniEraseError(f"{folder} has rounds 1–{len(live)} in force; cannot undo from round {undo_from}")
    job = _Revert(folder, undo_from, entries, live)
    if not job.undo[0]["delta"]["files"].get("known", True):
        raise UniEraseError(f"round {undo_from} started from a model loaded from the hub; the files before it were not "
                            "recorded — load that model from the hub instead")
    return job


def _roll_back(job: _Revert, model) -> None:
    """Undo the rounds, newest first, on copies of the weights and edit state; both ends are checked
    against the ledger (the weights must be the ones it recorded last, and end as it recorded before)."""
    folder = job.folder
    job.weights = {n: t.detach().clone() for n, t in full_state_dict(model).items()}
    job.current = combined_digest({n: deltas.tensor_digest(t) for n, t in job.weights.items()})
    if job.current != job.entries[-1]["weights_after"]:
        raise UniEraseError(f"the weights in {folder} differ from those the ledger recorded after its last entry "
                            "(changed outside unierase); run unierase verify to see which")
    job.state = EditState.load(folder).tensors() if (folder / STATE_FILE).exists() else {}
    for entry in reversed(job.undo):
        _undo(folder, entry, job.weights, job.state)
    job.restored = combined_digest({n: deltas.tensor_digest(t) for n, t in job.weights.items()})
    if job.restored != job.undo[0]["weights_before"]:
        raise UniEraseError(f"undoing rounds {job.undo_from}–{len(job.live)} did not give back the weights recorded before "
                            f"round {job.undo_from}")


def _retie_if_it_was_tied(job: _Revert, model) -> None:
    """A round that gave the unlearning token its own output row untied the output layer; the model
    before it had one matrix for both, and is saved so again (bit for bit: one tensor, not two)."""
    config_file = None
    for entry in reversed(job.undo):  # as ``_restore_files``: the oldest undone round's copy wins
        if "config.json" in entry["delta"]["files"].get("replaced", []):
            config_file = files_dir(job.folder, entry["index"]) / "config.json"
    if config_file is None:
        return
    recorded = json.loads(config_file.read_text(encoding="utf-8"))
    tied = recorded.get("tie_word_embeddings", recorded.get("text_config", {}).get("tie_word_embeddings", False))
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if not tied or out is None or out.weight is emb.weight:
        return
    if deltas.tensor_digest(out.weight) != deltas.tensor_digest(emb.weight):
        raise UniEraseError("the model before the undone rounds had tied embeddings, but the restored output layer "
                            "differs from the input embedding")
    out.weight = emb.weight
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = True


def _restore_files(job: _Revert, tmp: Path) -> None:
    """The current small files, then each undone round's older versions (newest round first)."""
    folder = job.folder
    for path in folder.iterdir():
        if path.is_file() and path.name not in (LEDGER_FILE, STATE_FILE) and not path.name.endswith(".safetensors") \
                and path.name != "model.safetensors.index.json":
            shutil.copy2(path, tmp / path.name)
    for entry in reversed(job.undo):
        files = entry["delta"]["files"]
        for name in files.get("added", []):
            (tmp / name).unlink(missing_ok=True)
        for name in files.get("replaced", []):
            shutil.copy2(files_dir(folder, entry["index"]) / name, tmp / name)


def _copy_kept_deltas(job: _Revert, tmp: Path) -> None:
    """The revert data of the rounds still in force, so that they too can be undone later."""
    keep = {e["index"] for e in job.live[:job.undo_from - 1]}
    for path in (job.folder / DELTA_DIR).glob("entry-*"):
        if int(path.name[len("entry-"):len("entry-") + 4]) in keep:
            target = tmp / DELTA_DIR / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)


def _write_reverted_manifest(job: _Revert, tmp: Path, new_entries: list[dict], revert_entry: dict) -> None:
    """The restored manifest, pointing at the new ledger head and saying what was reverted."""
    restored_manifest = (tmp / MANIFEST_FILE)
    data = json.loads(restored_manifest.read_text(encoding="utf-8")) if restored_manifest.exists() else None
    if data is None:  # before the first round there was no manifest: keep one for the ledger
        data = {"method": "reverted", "note": f"the model as it was before round 1 of {job.folder}"}
    data["ledger"] = head_of(new_entries)
    data["reverted"] = {"from": str(job.folder), "to_round": job.undo_from, "undone": revert_entry["undone"]}
    write_json_atomic(restored_manifest, data)


# ----------------------------------------------------------------------------- verify

@dataclass
class VerifyReport:
    folder: str
    weights: dict
    rounds: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"folder": self.folder, "ok": self.ok, "weights": self.weights, "rounds": self.rounds, "problems": self.problems}

    def summary(self) -> str:
        lines = [f"weights: {'match the ledger' if self.weights['match'] else 'DO NOT match the ledger'} "
                 f"({self.weights['actual'][:12]})"]
        for r in self.rounds:
            lines.append(f"round {r['round']} (entry {r['entry']}, {r['method']}): erased {r['erased']} — "
                         f"revert data {r['revert_data']}; neighbours changed {r['neighbours_changed']}")
        lines += [f"PROBLEM: {p}" for p in self.problems] or ["every check passed"]
        return "\n".join(lines)


def verify(folder, *, requests=None, cache_dir=None, check_answers: bool = True, device_map=None) -> VerifyReport:
    """Check ``folder`` against its ledger (see the module docstring). ``requests``: a JSONL path or
    list of requests to re-ask for rounds recorded with ``--no-texts`` (matched by their hashes);
    ``device_map``: where the model is put (always in its own dtype: the digests are of its bytes)."""
    from .rounds import load_checked_model as load_model

    folder = Path(folder)
    with locked_run(None, [folder]):
        manifest, entries = _ledger_of(folder)
        live = effective_rounds(entries)
        model, tokenizer = load_model(folder, cache_dir=cache_dir, device_map=device_map)
        report = _weights_report(folder, weights_digests(model), entries, live)
        given = _given_requests(requests)
        token_id = (manifest.get("token") or {}).get("id")
        # the weights are rolled back round by round only when they are the ones the ledger recorded
        weights = {n: t.detach().to("cpu", copy=True) for n, t in full_state_dict(model).items()} if report.weights["match"] else None
        state = EditState.load(folder).tensors() if (folder / STATE_FILE).exists() else {}
        v = _Verification(folder, model, tokenizer, report, token_id, given, weights, state)
        for entry in reversed(live):
            row = {"round": entry["round"], "entry": entry["index"], "method": entry.get("method")}
            _check_revert_data(v, entry, row)
            reqs = _round_requests(entry, given)
            row["requests"], row["checked"] = len(entry.get("requests", [])), len(reqs)
            if check_answers:
                _check_erased(v, entry, reqs, row)
                _check_neighbours(v, entry, row, latest=entry is live[-1])
            else:
                row["erased"], row["neighbours_changed"] = "not checked", "not checked"
            report.rounds.insert(0, row)
        return report


@dataclass
class _Verification:
    """What ``verify`` carries from round to round as it walks the rounds in force, newest first."""

    folder: Path
    model: object
    tokenizer: object
    report: VerifyReport
    token_id: int | None
    given: dict[str, ForgetRequest]
    weights: dict[str, torch.Tensor] | None
    """The weights rolled back so far; None once they no longer match the ledger (no further check)."""
    state: dict[str, torch.Tensor]


def _weights_report(folder: Path, digests: dict[str, str], entries: list[dict], live: list[dict]) -> VerifyReport:
    """A report on whether the weights match the ledger; when not, which rounds' tensors were altered."""
    actual = combined_digest(digests)
    expected = entries[-1]["weights_after"]
    report = VerifyReport(str(folder), {"expected": expected, "actual": actual, "match": actual == expected})
    if actual != expected:
        last_change: dict[str, dict] = {}
        for entry in live:
            for name, item in entry["delta"]["tensors"].items():
                last_change[name] = {"round": entry["round"], "digest": item.get("digest_after")}
        altered = [n for n, c in last_change.items() if digests.get(n) != c["digest"]]
        rounds = sorted({last_change[n]["round"] for n in altered})
        report.weights["altered_tensors_of_rounds"] = {n: last_change[n]["round"] for n in altered}
        report.problems.append("the weights were changed outside unierase" +
                               (f": tensors last edited by round(s) {rounds} ({', '.join(altered[:3])})" if altered
                                else " (in tensors no round edited)"))
    return report


def _given_requests(requests) -> dict[str, ForgetRequest]:
    """The requests passed in (a JSONL path or a list), by their hashes."""
    if requests is None:
        return {}
    reqs = load_requests(requests) if isinstance(requests, (str, os.PathLike)) else \
        [r if isinstance(r, ForgetRequest) else ForgetRequest(**r) for r in requests]
    return {r.digest(): r for r in reqs}


def _check_revert_data(v: _Verification, entry: dict, row: dict) -> None:
    """Undo ``entry`` on the rolled-back weights: do they come back to the weights recorded before it?"""
    try:
        if v.weights is None:
            row["revert_data"] = "not checked (weights altered)"
        else:
            _undo(v.folder, entry, v.weights, v.state)
            ok = combined_digest({n: deltas.tensor_digest(t) for n, t in v.weights.items()}) == entry["weights_before"]
            row["revert_data"] = "ok" if ok else "does not lead back"
            if not ok:
                v.report.problems.append(f"round {entry['round']}: its revert data does not lead back to the weights before it")
                v.weights = None
    except UniEraseError as err:
        row["revert_data"] = f"broken ({err})"
        v.report.problems.append(f"round {entry['round']}: {err}")
        v.weights = None


def _round_requests(entry: dict, given: dict[str, ForgetRequest]) -> list[ForgetRequest]:
    """The round's requests that can be re-asked: recorded with their texts, or passed in (by hash)."""
    reqs = []
    for item in entry.get("requests", []):
        if item.get("question"):
            reqs.append(ForgetRequest(item["question"], item.get("answer"), item.get("subject"), item.get("scope"),
                                      tuple(item["paraphrases"]) if item.get("paraphrases") else None))
        elif item["sha256"] in given:
            reqs.append(given[item["sha256"]])
    return reqs


def _check_erased(v: _Verification, entry: dict, reqs: list[ForgetRequest], row: dict) -> None:
    """Re-ask the round's questions: one that answers again, or was never erased, is a problem."""
    check = probe(v.model, v.tokenizer, reqs, [], v.token_id)
    then = {i["sha256"]: i["erased"] for i in (entry.get("verification") or {}).get("items", [])}
    leaking = [r.question for r, c in zip(reqs, check["items"]) if not c["erased"]]
    row["erased"] = f"{len(reqs) - len(leaking)}/{len(reqs)}" + (
        f" (of {row['requests']}; pass --requests for the rest)" if len(reqs) < row["requests"] else "")
    row["leaking"] = leaking
    again = [r.question for r, c in zip(reqs, check["items"]) if not c["erased"] and then.get(r.digest(), True)]
    never = [q for q in leaking if q not in again]
    if again:
        v.report.problems.append(f"round {entry['round']}: {len(again)} erased question(s) answer again: "
                                 + "; ".join(again[:3]))
    if never:
        v.report.problems.append(f"round {entry['round']}: {len(never)} question(s) were never erased (not "
                                 "reached at erasure time; run forget again): " + "; ".join(never[:3]))


def _check_neighbours(v: _Verification, entry: dict, row: dict, *, latest: bool) -> None:
    """Re-ask the neighbour questions recorded at the round; a changed answer is a problem only for the
    latest round (an earlier round's answers were recorded on weights that later rounds changed)."""
    from ..generation import generate_answer_ids

    recorded = (entry.get("verification") or {}).get("neighbours", [])
    ids = generate_answer_ids(v.model, v.tokenizer, [n["question"] for n in recorded],
                              max_new_tokens=(entry.get("verification") or {}).get("max_new_tokens", 24)) \
        if recorded else []
    changed = [n["question"] for n, i in zip(recorded, ids) if _ids_digest(i) != n["answer_sha256"]]
    row["neighbours_changed"] = f"{len(changed)}/{len(recorded)}"
    row["changed_neighbours"] = changed
    if changed and latest:
        v.report.problems.append(f"{len(changed)} neighbour question(s) recorded at round {entry['round']} now "
                                 "answer differently: " + "; ".join(changed[:3]))
