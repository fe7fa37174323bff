"""The ``finetune`` sub-command (its training flags generated from ``options.TrainOptions``; the
baselines' flags of ``forget`` are generated from ``options.BaselineOptions`` by ``unierase.cli``)."""

from __future__ import annotations

from ..cli_args import add_model_args, add_option_fields, options_from_args
from .finetune import FinetuneConfig, finetune
from .options import TrainOptions


def add_finetune_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on question/answer pairs (the TOFU target and retain models)",
        description=(
            "Fine-tune with the answer-only loss in the model's chat format and save a checkpoint with "
            "unierase_manifest.json (settings, wall time, memorisation ROUGE-L). --data tofu:full --authors N "
            "--forget-authors K trains on N whole TOFU authors whose last K are TOFU's final authors (the target "
            "model); add --split retain to leave those K out (the retain model)."
        ),
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="tofu:CONFIG (e.g. tofu:full, tofu:retain90) or a JSONL file with question and answer")
    p.add_argument("--authors", type=int, default=None, help="use N whole authors of tofu:full (default: all rows of --data)")
    p.add_argument("--forget-authors", type=int, default=1, help="how many of the subset's authors are TOFU's last (forget) authors (default: 1)")
    p.add_argument("--split", choices=["full", "retain"], default="full", help="full: retain + forget authors (target model); retain: without the forget authors")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-items", type=int, default=None, help="training questions scored for memorisation afterwards (default: 100; 0 none; -1 all)")
    g = p.add_argument_group("training")
    add_option_fields(g, TrainOptions, defaults=FinetuneConfig())
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_finetune)


def _run_finetune(args) -> int:
    options = TrainOptions(**options_from_args(args, TrainOptions))
    fields = options.config_fields()
    if args.seed is not None:
        fields["seed"] = args.seed
    if args.no_progress:
        fields["progress"] = False
    if args.eval_items is not None:
        fields["eval_items"] = args.eval_items
    result = finetune(args.model, args.data, args.out, config=FinetuneConfig(**fields), authors=args.authors,
                      forget_authors=args.forget_authors, split=args.split, data_dir=options.data_dir,
                      overwrite=args.overwrite, cache_dir=args.cache_dir, threads=options.threads,
                      dtype=args.dtype, device_map=args.device_map)
    if result.manifest is not None:  # the first of several processes reports
        print(result.summary())
    return 0
