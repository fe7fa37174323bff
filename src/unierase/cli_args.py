"""Command-line arguments shared by several sub-commands (kept apart from ``cli`` so that the
baselines and the evaluation can register their sub-commands without importing it)."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser, *, device_map: bool = True) -> None:
    """--model, --cache-dir and (optionally) --device-map, with the same meaning everywhere."""
    parser.add_argument("--model", default=None,
                        help="local Hugging Face directory or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache for the converted default model, trained tokens and key statistics "
                             "(default: $UNIERASE_CACHE or ~/.cache/unierase)")
    if device_map:
        parser.add_argument("--device-map", default=None,
                            help="accelerate device map, e.g. 'auto' to spread a large model over GPUs (default: CPU)")
