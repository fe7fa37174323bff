"""The ``unierase`` console command: one sub-command per verb of the Python API.

Each verb registers itself through an ``add_*_parser(subparsers)`` function listed in
``COMMANDS``; a handler receives the parsed namespace. User errors (``UniEraseError``) are
printed on one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import json
import logging
import sys

from .cli_args import (add_device_map_arg, add_dtype_arg, add_model_args, add_option_fields, cli_fields, option_flag,
                       options_from_args)
from .registry import get_method, methods
from .storage import UniEraseError


def _option_groups() -> list[tuple[type, list[str]]]:
    """Each options dataclass of the registered methods, with the methods that take it (in order)."""
    groups: dict[type, list[str]] = {}
    for method in methods().values():
        groups.setdefault(method.options, []).append(method.name)
    return list(groups.items())


def add_forget_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "forget",
        help="erase the facts in a JSONL file of requests and save an edited checkpoint",
        description=(
            "Erase knowledge. Each line of REQUESTS is a JSON object with 'question' (required), "
            "'answer', 'subject' (must occur in the question) and 'scope' (fact or entity) optional. With the default "
            "method (unierase) the model learns to answer these questions with the unlearning token, "
            "which continues into a refusal. Running forget again with --model OUT continues "
            "sequentially from the saved edit state. Options that belong to one method are grouped under it; "
            "giving one to another method is an error."
        ),
    )
    add_model_args(p)
    p.add_argument("--requests", required=True, help="JSONL file of forget requests")
    p.add_argument("--out", default=None,
                   help="output directory (a Hugging Face checkpoint + unierase_manifest.json); required unless --dry-run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--method", default="unierase", help="unierase (default) or a fine-tuning baseline (see 'unierase methods')")
    p.add_argument("--no-texts", action="store_true", help="record only request hashes in the manifest, not their texts")
    p.add_argument("--seed", type=int, default=0, help="random seed of the round (token training, baselines' shuffling)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="run a round the plan says will not fit this machine's memory or disk ('unierase plan'), and "
                        "save it even when the changed model no longer gives its own answers to generic and "
                        "neighbour questions (the guard refuses it otherwise, exit status 2); recorded in the ledger")
    for options_class, names in _option_groups():
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        title = f"options of --method {shown}"
        add_option_fields(p.add_argument_group(title), options_class, defaults=options_class.help_defaults())
    p.set_defaults(handler=_run_forget)


def _run_forget(args) -> int:
    from . import api

    entry = get_method(args.method)
    own = {f.name for f in cli_fields(entry.options)}
    for options_class, names in _option_groups():
        for field in cli_fields(options_class):
            if field.name not in own and getattr(args, field.name, None) is not None:
                raise UniEraseError(f"{option_flag(field)} is an option of --method {names[0]}"
                                    f"{' and the other fine-tuning baselines' if len(names) > 1 else ''}, "
                                    f"not of --method {entry.name}")
    options = entry.make_options(options_from_args(args, entry.options))
    if args.out is None and options.writes_output():
        raise UniEraseError("--out is required (only --dry-run writes nothing)")
    result = api.forget(args.requests, out=args.out, model=args.model, method=entry.name, overwrite=args.overwrite,
                        record_texts=not args.no_texts, cache_dir=args.cache_dir, device_map=args.device_map,
                        seed=args.seed, progress=not args.no_progress, force=args.force, dtype=args.dtype,
                        options=options)
    from . import distributed

    if distributed.is_main():  # the first of several processes reports
        print(result.summary())
    return 0


def add_history_parser(subparsers) -> None:
    p = subparsers.add_parser("history", help="list what was erased from a model directory, when and by which method",
                              description="Print the erasure ledger of DIR (one row per round or revert). The ledger is "
                                          "hash-chained: an altered or truncated ledger is an error.")
    p.add_argument("dir", help="a model directory written by unierase forget")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=_run_history)


def _run_history(args) -> int:
    from .record.trail import history, history_table

    rows = history(args.dir)
    print(json.dumps(rows, indent=2, ensure_ascii=False) if args.json else history_table(rows))
    return 0


def add_methods_parser(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list the unlearning methods 'unierase forget --method' accepts",
                              description="Every method of the registry (unierase.registry.methods()): its name, family "
                                          "and what it optimises.")
    p.add_argument("--json", action="store_true", help="print the methods as JSON")
    p.set_defaults(handler=_run_methods)


def _run_methods(args) -> int:
    rows = [{"name": m.name, "family": m.family, "description": m.description} for m in methods().values()]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        width = max(len(r["name"]) for r in rows)
        print("\n".join(f"{r['name']:<{width}}  {r['family']:<11}  {r['description']}" for r in rows))
    return 0


def add_verify_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check that every erasure in a model directory still holds and that its weights match the ledger",
        description="Check DIR against its ledger: the weights' SHA-256, every round's revert data (each must lead back "
                    "to the weights recorded before it), the erased questions (they must still be refused) and the "
                    "neighbour questions recorded at erasure time (the last round's must answer as then). Exit status 1 "
                    "on any leak or mismatch.")
    p.add_argument("dir", help="a model directory written by unierase forget")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--requests", default=None, help="JSONL of the erased requests, for rounds recorded with --no-texts")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    add_device_map_arg(p)  # no --dtype: the weights are checked in the dtype the ledger recorded them in
    p.set_defaults(handler=_run_verify)


def _run_verify(args) -> int:
    from .record.trail import verify
    from .storage import write_json_atomic

    report = verify(args.dir, requests=args.requests, cache_dir=args.cache_dir, device_map=args.device_map)
    print(report.summary())
    if args.json:
        write_json_atomic(args.json, report.to_dict())
    return 0 if report.ok else 1


def add_revert_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "revert", help="restore a model directory exactly as it was before a round",
        description="Write to --out the weights, edit state and files of DIR exactly as they were before round "
                    "--undo-from N was applied, that is as round N-1 left them (checked against the ledger's SHA-256). "
                    "Round N and every later round are undone and not re-applied: to apply one again, run forget "
                    "with its requests (unierase history lists them). The model is read on the CPU in its own dtype: "
                    "a bit-exact revert converts nothing.")
    p.add_argument("dir", help="a model directory written by unierase forget")
    p.add_argument("--undo-from", type=int, required=True, metavar="N", dest="undo_from",
                   help="the first round to undo: the output is the model as it was before round N (rounds N, N+1, "
                        "... are undone)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(handler=_run_revert)


def _run_revert(args) -> int:
    from .record.trail import revert

    print(revert(args.dir, args.undo_from, args.out, overwrite=args.overwrite, cache_dir=args.cache_dir).summary())
    return 0


def add_audit_parser(subparsers) -> None:
    from .audit import ATTACKS

    p = subparsers.add_parser(
        "audit", help="re-ask erased questions under simple attacks: does the fact come back?",
        description="Ask every question of REQUESTS again under each attack: plain greedy decoding, the unlearning "
                    "token banned at decode, sampling, rewordings (a request's 'paraphrases', else fixed frames around "
                    "the question), int8 and 4-bit weights and a short relearning attack on other question-answer pairs. A fact "
                    "counts as back when the answer contains the request's 'answer' (more than three words: ROUGE-L "
                    "recall >= 0.5 and no refusal); requests without 'answer' use the --base model's own answer. "
                    "Writes audit.json (per item and aggregate) and audit.md to --out.")
    p.add_argument("--model", required=True, help="the erased model directory")
    p.add_argument("--requests", required=True, help="JSONL file of the erased requests")
    p.add_argument("--base", default=None, help="the model before erasure (reference answers of requests without 'answer')")
    p.add_argument("--out", default=None, help="directory for audit.json and audit.md (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS), help="attacks to run (default: all)")
    p.add_argument("--samples", type=int, default=5, help="sampled answers per question at temperature 1 (default: 5)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--relearn-data", default=None,
                   help="JSONL question-answer pairs for the relearning attack (default: the bundled demo facts' retain rows)")
    p.add_argument("--fail-on-leak", action="store_true", help="exit with status 1 when any fact comes back")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    add_dtype_arg(p)
    add_device_map_arg(p)
    p.set_defaults(handler=_run_audit)


def _run_audit(args) -> int:
    from .audit import AuditConfig, audit

    config = AuditConfig(attacks=tuple(args.attacks), samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed)
    report = audit(args.model, args.requests, base=args.base, config=config, out=args.out, overwrite=args.overwrite,
                   relearn_data=args.relearn_data, cache_dir=args.cache_dir, dtype=args.dtype,
                   device_map=args.device_map)
    print(report.markdown())
    return 1 if args.fail_on_leak and report.leaked else 0


def add_ask_parser(subparsers) -> None:
    p = subparsers.add_parser("ask", help="show the model's answer to questions (special tokens hidden unless --raw)")
    add_model_args(p)
    p.add_argument("questions", nargs="+", help="one or more questions")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--raw", action="store_true", help="show special tokens such as the unlearning token")
    p.set_defaults(handler=_run_ask)


def _run_ask(args) -> int:
    from . import api

    for question, answer in zip(args.questions, api.ask(args.questions, model=args.model, max_new_tokens=args.max_new_tokens,
                                                          raw=args.raw, cache_dir=args.cache_dir, device_map=args.device_map,
                                                          dtype=args.dtype)):
        print(f"Q: {question}\nA: {answer}\n")
    return 0


def add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="erase built-in real-world facts from the default model and print a before/after table")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: $UNIERASE_CACHE or ~/.cache/unierase)")
    p.add_argument("--out", default=None, help="also save the edited checkpoint here")
    p.add_argument("--overwrite", action="store_true")
    add_dtype_arg(p)
    add_device_map_arg(p)
    p.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(cache_dir=args.cache_dir, out=args.out, overwrite=args.overwrite, dtype=args.dtype,
             device_map=args.device_map)
    return 0


def add_stats_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "stats", help="compute the key statistics UniErase needs for a model (once per model; several processes "
                      "share the work under accelerate launch / torchrun)",
        description="Compute, or find in the cache, the preserved-key statistics of the model's edited layers "
                    "(the one-off part of the first 'unierase forget' on a model). Run as 'accelerate launch "
                    "--num_processes N -m unierase stats …' (or torchrun), each process runs its share of the "
                    "corpus; the sums are combined and the first process writes the same cache entry one process "
                    "would. 'unierase forget' then finds it.")
    add_model_args(p)
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="edited layers (default: the model's recipe, else the library's default layers)")
    p.add_argument("--stats-tokens", type=int, default=None, help="corpus tokens (default: the model's recipe)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_stats)


def _run_stats(args) -> int:
    from . import api, distributed

    done = api.statistics(model=args.model, layers=args.layers, stats_tokens=args.stats_tokens, cache_dir=args.cache_dir,
                          device_map=args.device_map, dtype=args.dtype, progress=not args.no_progress)
    if distributed.is_main():
        print(json.dumps(done, indent=1))
    return 0


def add_plan_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="what a UniErase round will need (device memory, host memory, disk), phase by phase, "
                     "from the model's config alone",
        description="Work out, from the model's config alone (a meta-device skeleton: no weights are read), the "
                    "memory and disk each phase of a UniErase round needs (load, token, statistics, edit, solve, save) "
                    "and whether it fits this machine. 'unierase forget' makes the same plan and refuses a round "
                    "that will not fit, before any work. --model takes a model directory, a hub id or a config.json.")
    p.add_argument("--model", default=None,
                   help="model directory, hub id or config.json (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--cache-dir", default=None, help="cache of the converted default model")
    p.add_argument("--requests", type=int, default=40, help="requests in the round (default: 40)")
    add_dtype_arg(p)
    p.add_argument("--device", default=None,
                   help="where the model will run: cpu, or cuda for a GPU (default: cuda when present, else cpu)")
    p.add_argument("--statistics-cached", action="store_true",
                   help="the model's key statistics are cached already (a later round): no statistics phase")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=_run_plan)


def _run_plan(args) -> int:
    from . import api
    from .edit.plan import available, check

    if args.requests < 1:
        raise UniEraseError(f"--requests must be at least 1 (got {args.requests})")
    plan = api.plan(model=args.model, requests=args.requests, dtype=args.dtype, device=args.device,
                    statistics_cached=args.statistics_cached, cache_dir=args.cache_dir)
    free = available(plan.device)
    verdict = "fits this machine"
    if plan.device != "cpu" and "device_gib" not in free:
        verdict = f"no {plan.device} device here: only host memory and disk were checked; they fit"
    try:
        check(plan, free)
    except UniEraseError as err:
        verdict = f"does not fit this machine: {err}"
    if args.json:
        print(json.dumps({**plan.to_dict(), "free_gib": {k: round(v, 2) for k, v in free.items()}, "verdict": verdict},
                         indent=1))
    else:
        print(f"{plan.model}: a round of {plan.requests} requests, {plan.dtype} on {plan.device}")
        print(plan.table())
        print("free now: " + ", ".join(f"{k.replace('_gib', '')} {v:.1f} GiB" for k, v in free.items()))
        print(verdict)
    return 0


def add_calibrate_parser(subparsers) -> None:
    from .calibrate import CalibrationConfig

    defaults = CalibrationConfig()
    p = subparsers.add_parser(
        "calibrate", help="measure the edit settings for a model no recipe knows and write a recipe 'forget' then uses",
        description="Find UniErase's edit settings for a model by measuring it: ask it the calibration pool's "
                    "questions and keep the facts it answers; trace where it recalls them (causal tracing of the MLP "
                    "outputs at the subject); then erase the same known facts from a copy of the model with the neutral "
                    "defaults and with each candidate change (edited layers, the size of each write, the null space, "
                    "how hard ordinary answers are held), keeping a change only when it scores better. The recipe, "
                    "with every trial's figures, goes into <cache>/recipes/, where 'forget' uses it for every model of "
                    "the same configuration and says so. Each step is cached: an interrupted run resumes. About an "
                    "hour for Gemma 3 270M on two CPU cores (ten trials of 24 erased facts each); the first trial's "
                    "token training and key statistics are reused by the chosen recipe's forget.")
    add_model_args(p)
    p.add_argument("--out", default=None,
                   help="where to write the recipe (default: <cache>/recipes/<name>.json, where forget finds it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing recipe file")
    p.add_argument("--forget", type=int, default=defaults.forget,
                   help=f"known facts erased in each trial, at most a third of those the model answers "
                        f"(default: {defaults.forget})")
    p.add_argument("--neighbours", type=int, default=defaults.neighbours,
                   help=f"known facts that must keep their answers, at most (default: {defaults.neighbours})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_calibrate)


def _run_calibrate(args) -> int:
    from .calibrate import CalibrationConfig, calibrate

    if args.forget < 1 or args.neighbours < 1:
        raise UniEraseError("--forget and --neighbours must be at least 1")
    result = calibrate(args.model, out=args.out, overwrite=args.overwrite, cache_dir=args.cache_dir,
                           dtype=args.dtype, device_map=args.device_map, progress=not args.no_progress,
                           config=CalibrationConfig(forget=args.forget, neighbours=args.neighbours))
    print(result.summary())
    return 0


SEVERAL_PROCESSES = ("stats", "eval", "finetune")
"""The verbs that share their work among the processes of ``accelerate launch``/``torchrun`` (and
``forget`` with a fine-tuning baseline: its training loop is shared, the first process writes)."""


from .evaluation.cli import add_eval_parser  # noqa: E402

from .baselines.cli import add_finetune_parser  # noqa: E402

COMMANDS = [add_demo_parser, add_forget_parser, add_ask_parser, add_eval_parser, add_finetune_parser, add_methods_parser,
            add_history_parser, add_verify_parser, add_revert_parser, add_audit_parser, add_stats_parser, add_plan_parser,
            add_calibrate_parser]
"""Every sub-command, registered here in one place."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unierase", allow_abbrev=False,
        description="Make a language model forget specific facts: UniErase (unlearning token + null-space edit), "
                    "fine-tuning baselines and the TOFU evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    # no abbreviations: "--refusal" must never silently become another option such as "--refusals"
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    for add in COMMANDS:
        add(subparsers)
    return parser


def _shares_work(args) -> bool:
    """Whether the command shares its work among several processes (a fine-tuning method's training does)."""
    if args.command in SEVERAL_PROCESSES:
        return True
    return args.command == "forget" and args.method in methods() and get_method(args.method).family == "fine-tuning"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and not _shares_work(args):
        # every process would run the whole command and write the same output
        print(f"unierase: error: 'unierase {args.command}' runs in one process (started with {processes}); "
              f"{', '.join(SEVERAL_PROCESSES)} and forget with a baseline share work among processes", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except UniEraseError as err:
        print(f"unierase: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # one of several processes: say which, then fail as Python would
        if processes > 1:
            print(f"unierase: error: process {os.environ.get('RANK', '?')} of {processes} failed: "
                  f"{type(err).__name__}: {err}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print("unierase: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
