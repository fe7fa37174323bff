"""Every unlearning method by name, in one registry on the ground floor.

A method registers itself with one call (``register(Method(...))``, in ``edit/__init__.py`` for
UniErase and ``baselines/__init__.py`` for the fine-tuning baselines); nothing here imports them.
``api.forget(..., method=NAME)`` looks the method up, builds the method's own options dataclass
from the caller's keywords (or the CLI's flags, which are generated from its fields) and hands it
the requests and a ``RunContext``; ``unierase methods`` lists the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .storage import UniEraseError


@dataclass(frozen=True)
class RunContext:
    """What every method receives besides the requests and its own options."""

    model: object
    """The model as the caller gave it: a spec (path, hub id, ``None``) or a loaded model."""
    model_dir: Path | None
    """The resolved local directory of the model (``None`` for a hub id or a loaded model)."""
    hub_id: str | None
    spec: str
    """How the manifest names the start model."""
    tokenizer: object = None
    overwrite: bool = False
    record_texts: bool = True
    cache_dir: object = None
    device_map: object = None
    seed: int = 0
    progress: bool = True
    force: bool = False
    """Run a round its plan says will not fit (``edit.plan``), and save one the guard against a
    wrecked model refuses (``record.guard``; recorded)."""
    dtype: object = None
    """The dtype to load the model in (``models.loading.DTYPES``; ``None``: the checkpoint's own)."""


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    """'edit' (UniErase) or 'fine-tuning' (the baselines)."""
    description: str
    run: Callable[..., object]
    """(requests, source, out, context, options) → the method's result (``ForgetResult``,
    ``BaselineResult``); ``source`` names where the requests came from, for messages."""
    options: type
    """The dataclass of the method's own options. Each field is one keyword of ``api.forget`` and,
    unless its metadata says ``cli=False``, one flag of ``unierase forget`` (``metadata['help']``)."""
    implementation: object = None
    """The method's own object where it has one (a baseline's ``Baseline`` subclass)."""

    def make_options(self, values: dict):
        """The options dataclass from keyword values; a name it does not have is a one-line error."""
        names = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UniEraseError(f"option(s) {', '.join(unknown)} do not apply to method {self.name!r}; its options: "
                                f"{', '.join(sorted(names))}")
        return self.options(**values)


def option(help: str, *, default=None, type: Callable | None = None, choices=None, flag: str | None = None,
           parse: Callable | None = None, append: bool = False, metavar: str | None = None, cli: bool = True):
    """A field of a method's options dataclass, documented once for the API and the CLI.

    ``type``: how argparse reads the flag's text (``bool`` makes a switch); ``parse``: a function
    applied to what argparse read (``--layers 4,5`` → [4, 5]); ``flag`` defaults to ``--field-name``;
    ``append``: a repeatable flag collected in a list; ``cli=False``: a keyword of the API only.
    """
    metadata = {"help": help, "type": type, "choices": choices, "flag": flag, "parse": parse, "append": append,
                "metavar": metavar, "cli": cli}
    return dataclasses.field(default=default, metadata=metadata)


class MethodOptions:
    """What the verbs ask of every method's options dataclass; a method overrides what it has more of."""

    def check(self, requests, source: str) -> None:
        """One-line errors about a round's ``requests``, given before the model is looked for."""

    def writes_output(self) -> bool:
        """Whether the round writes its output (a plan-only run does not need ``out``)."""
        return True

    @classmethod
    def help_defaults(cls):
        """An object whose same-named attributes ``--help`` shows as the fields' defaults (or ``None``)."""
        return None


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` under its name (a second method of the same name is an error). The name is
    what ``get_method`` finds: lower case, parts joined by ``+`` (``npo+gd``)."""
    if normalise_name(method.name) != method.name:
        raise UniEraseError(f"method name {method.name!r} must be lower case with parts joined by '+' "
                            f"(e.g. {normalise_name(method.name)!r})")
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise UniEraseError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every registered method by its CLI name (``unierase forget --method NAME``), in registration order."""
    return dict(_METHODS)


def normalise_name(name: str) -> str:
    """``NPO_GD``, ``npo-gd``, ``npo gd`` → ``npo+gd``."""
    key = name.strip().lower()
    for sep in ("_", "-", " "):
        key = key.replace(sep, "+")
    return key


def get_method(name: str) -> Method:
    """Look a method up by name; case and ``_``/``-``/space separators do not matter (``NPO_GD``)."""
    key = normalise_name(name)
    for method in _METHODS.values():
        if key == method.name:
            return method
    raise UniEraseError(f"unknown method {name!r}; choose one of: {', '.join(_METHODS)}")
