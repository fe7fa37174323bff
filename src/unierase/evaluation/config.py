"""Configuration of one evaluation run (the fields mirror the ``unierase eval`` flags)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        model: local Hugging Face directory, hub id, or None for the embedded SmolLM2-135M-Instruct.
        out: output directory (per-item values, ``summary.json``, ``report.md``, saved stages).
        benchmark: only ``"tofu"``.
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        data: directory of TOFU ``<config>.jsonl`` files (or its parent holding ``tofu/``) or a hub
            dataset id; None = ``$UNIERASE_DATA``, else the hub id ``locuslab/TOFU``.
        ds_size: score only the first N items of every set (None = all items; 300 reproduces the
            original TOFU code). Recorded in the output.
        max_new_tokens: greedy generation length (TOFU: 200).
        batch_size: questions per batch for scoring and generation (1 = one item at a time).
        retain: the retain model (trained without the forget set) for Forget Quality: a model
            directory / hub id, an earlier ``unierase eval`` output directory, its
            ``per_item/forget.jsonl``, or a TOFU ``eval_log_forget.json``. None = no Forget Quality.
        reference: a reference model (e.g. the model before unlearning) for the share of retain
            answers left unchanged: a model directory / hub id or an earlier eval output directory.
        closer_look: also compute the closer-look family (token entropy, cosine, NLI, Forget
            Efficacy, 18-term Model Utility).
        paraphrase_leakage: also generate answers to the forget set's ``paraphrased_question``.
        membership: membership inference, the forget set's answers (members) against the holdout
            set of the same size (``holdout01`` for ``forget01``; non-members): LOSS, zlib, Min-K and
            Min-K++ AUCs, and PrivLeak against the retain model's AUCs (``evaluation/mia.py``).
        forget_scores: teacher-force the forget set's answers (its Probability and Truth ratio, and
            so Forget Quality). False leaves only its generations (forget ROUGE-L): Model Utility
            does not read them, and a run after every unlearning round need not pay for them.
        embedding_model: ``"auto"`` (the bundled all-MiniLM-L6-v2 if installed), a directory, or
            ``"none"``; used for the closer-look cosine similarity.
        nli_model: a local NLI sequence-classification directory; None = entailment absent.
        prompt_format: ``"chat"`` (the model's chat template, pinned date; error if it has none) or
            ``"plain"`` (``Question: … / Answer:``).
        scoring_mode: ``"shared"`` (prompt KV cache shared by the answers of a question) or ``"full"``.
        dtype: model dtype name (``float32``, ``bfloat16``, ``float16``).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"``); None = CPU.
        cache_dir: cache for the converted default model.
        threads: torch CPU threads (None = torch's default).
        overwrite: discard saved stages in ``out`` and start over (default: resume).
        plot: also write ``report.png``.
    """

    model: str | None = None
    out: str | None = None
    benchmark: str = "tofu"
    forget_split: str = "forget10"
    data: str | None = None
    ds_size: int | None = None
    max_new_tokens: int = 200
    batch_size: int = 16
    retain: str | None = None
    reference: str | None = None
    closer_look: bool = True
    paraphrase_leakage: bool = True
    membership: bool = True
    forget_scores: bool = True
    embedding_model: str | None = "auto"
    nli_model: str | None = None
    prompt_format: str = "chat"
    scoring_mode: str = "shared"
    dtype: str = "float32"
    device_map: str | None = None
    cache_dir: str | None = None
    threads: int | None = None
    overwrite: bool = False
    plot: bool = True

    def __post_init__(self):
        # checked on construction (and on every ``replace``): a bad setting fails before any loading
        from ..storage import UniEraseError

        checks = (
            (self.benchmark == "tofu", f"unknown benchmark {self.benchmark!r}; only 'tofu' is supported"),
            (self.prompt_format in ("chat", "plain"), f"prompt format must be 'chat' or 'plain', got {self.prompt_format!r}"),
            (self.scoring_mode in ("shared", "full"), f"scoring mode must be 'shared' or 'full', got {self.scoring_mode!r}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.max_new_tokens >= 1, f"max new tokens must be at least 1, got {self.max_new_tokens}"),
            (self.ds_size is None or self.ds_size >= 1, f"ds_size must be positive, got {self.ds_size}"),
        )
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise UniEraseError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)
