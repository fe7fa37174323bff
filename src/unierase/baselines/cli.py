"""Command-line pieces of the baselines: the ``finetune`` sub-command and the training flags that
``unierase forget --method <baseline>`` accepts (mapped onto the config dataclasses)."""

from __future__ import annotations

from ..cli_args import add_model_args
from .finetune import FinetuneConfig, finetune
from .methods import BaselineConfig
from .trainer import TrainConfig

def add_train_args(p, defaults: TrainConfig) -> None:
    """Optimisation flags shared by ``finetune`` and the baselines of ``forget``."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=None, help=f"passes over the data (default: {defaults.epochs:g})")
    g.add_argument("--lr", type=float, default=None, help=f"learning rate (default: {defaults.lr:g})")
    g.add_argument("--batch-size", type=int, default=None, help=f"examples per forward pass (default: {defaults.batch_size})")
    g.add_argument("--grad-accum", type=int, default=None, help="forward passes per optimiser step (default: 1)")
    g.add_argument("--max-length", type=int, default=None, help=f"token limit per example (default: {defaults.max_length})")
    g.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    g.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters (peft) and merge them into the saved model")
    g.add_argument("--lora-r", type=int, default=None, help=f"LoRA rank (default: {defaults.lora_r})")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--data-dir", default=None, help="folder holding tofu/ (default: $UNIERASE_DATA or a shared/data folder above the working directory)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


TRAIN_FLAGS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "grad_accum": "grad_accum",
               "max_length": "max_length", "bf16": "bf16", "lora": "lora", "lora_r": "lora_r", "seed": "seed"}


def overrides_from_args(args) -> dict:
    """Config fields the user set on the command line (unset flags keep the method's defaults)."""
    out = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "no_progress", False):
        out["progress"] = False
    return out


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
    add_model_args(p, device_map=False)
    p.add_argument("--data", required=True, help="tofu:CONFIG (e.g. tofu:full, tofu:retain90) or a JSONL file with question and answer")
    p.add_argument("--authors", type=int, default=None, help="use N whole authors of tofu:full (default: all rows of --data)")
    p.add_argument("--forget-authors", type=int, default=1, help="how many of the subset's authors are TOFU's last (forget) authors (default: 1)")
    p.add_argument("--split", choices=["full", "retain"], default="full", help="full: retain + forget authors (target model); retain: without the forget authors")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-items", type=int, default=None, help="training questions scored for memorisation afterwards (default: 100; 0 none; -1 all)")
    add_train_args(p, FinetuneConfig())
    p.set_defaults(handler=_run_finetune)


def _run_finetune(args) -> int:
    fields = overrides_from_args(args)
    if args.eval_items is not None:
        fields["eval_items"] = args.eval_items
    result = finetune(args.model, args.data, args.out, config=FinetuneConfig(**fields), authors=args.authors,
                      forget_authors=args.forget_authors, split=args.split, data_dir=args.data_dir,
                      overwrite=args.overwrite, cache_dir=args.cache_dir, threads=args.threads)
    print(result.summary())
    return 0


def add_baseline_args(p) -> None:
    """Flags of ``forget`` that apply to the fine-tuning baselines (ignored by ``--method unierase``)."""
    add_train_args(p, BaselineConfig())
    g = p.add_argument_group("fine-tuning baselines (--method ga+gd, npo+kl, ...)")
    g.add_argument("--retain", default=None, help="retain data for the GD/KL/AP regulariser: tofu:CONFIG or a JSONL file with question and answer")
    g.add_argument("--beta", type=float, default=None, help="inverse temperature of NPO/DPO/AP (default: 0.1)")
    g.add_argument("--forget-coef", type=float, default=None, help="weight of the forget term (default: 1; ME: 0.1)")
    g.add_argument("--retain-coef", type=float, default=None, help="weight of the regulariser (default: 1)")
    g.add_argument("--refusals", default=None, help="file of refusal sentences for DPO/IDK (default: TOFU's idontknow.txt)")


def baseline_options_from_args(args) -> dict:
    """Keyword arguments for ``api.forget(..., method=<baseline>)`` from the parsed flags (unset flags omitted)."""
    out = overrides_from_args(args)
    out.pop("seed", None)  # forget passes --seed itself
    for name in ("beta", "forget_coef", "retain_coef", "refusals"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    for name in ("retain", "data_dir", "threads"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out
