"""What a UniErase round will need, phase by phase, worked out from the model's config alone.

The model is built on the ``meta`` device (shapes, no weights), so an 8B or 70B model is planned in
a second on any machine. Each phase's figure is the sum of the tensors that phase holds at once in
the code as it is (weights, moment sums, activations kept for a backward pass, caches), with the
activation constants below; ``benchmarks/plan_check.py`` compares the figures with what a run
measures. ``check`` refuses a round up front, naming the phase and the figure, when a phase needs
more than the devices it will run on have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..record.edit_state import row_dtype_for
from ..storage import UniEraseError
from .applied import recorded_dtype
from .config import EditConfig

GIB = 2 ** 30
SAVED_PER_TOKEN_LAYER = (16, 4)
"""Elements a decoder layer keeps per token for a backward pass, as (× hidden, × MLP width):
the attention's inputs and outputs, norms and residuals (~16 h) and the MLP's gate, up,
activation and product (~4 m)."""
FORWARD_PER_TOKEN_LAYER = (4, 3)
"""The same for a pass without gradient (one layer's temporaries at a time)."""
TOKEN_SEQUENCE = 64
"""Tokens of a question + ``[UNL]`` refusal the token is trained on."""
VALUE_SEQUENCE = 48
"""Tokens from the key token on (the question's rest, the refusal and the end of turn) a value step runs."""
VALUE_PREFIX = 24
"""Tokens before the key token whose key/value cache a value step reuses."""
STATS_SEQUENCE, STATS_BATCH = 128, 16
"""Corpus sequences of the statistics pass (``stats.accumulate_key_moments``)."""
MOMENT_FAMILIES = 4
"""Moment sums on the device when C₀ is built: corpus, question, own-answer and refusal keys (the
first three are cached, one layer at a time through the host)."""
SOFT_KEYS_PER_REQUEST = 4 + 4 * (1 + 24)
"""Keys per request the round's soft constraint adds to the sequential state at the defaults
(4 neutral questions, 4 substitutes with 24 answer tokens each)."""
PASS_REQUESTS = 4.6
"""Requests the passes of a round solve for, per request: each further pass solves again for those
not reached yet, and every pass's factors are revert data. Set high, so the revert figure is an
upper bound (``benchmarks/plan_check.py`` compares it with written rounds)."""
FIX_BYTES = 0.07
"""Revert data per edited weight entry besides the factors (``record.deltas``: what rounding lost where
the update crossed powers of two). Set high, like ``PASS_REQUESTS``."""
TOKENIZER_BYTES_PER_TOKEN = 80
"""The tokenizer files a first round replaces (the token is added), copied beside the revert data,
per vocabulary entry: above SmolLM2's and Llama 3's."""


@dataclass(frozen=True)
class Shape:
    """The figures of a model that the plan needs, read from a ``meta``-device skeleton."""

    parameters: int
    hidden: int
    key_dim: int
    """m: the width of the MLP output projection's input (the edited keys)."""
    layers: int
    vocab: int
    kv_dim: int
    tied: bool

    @classmethod
    def of(cls, config) -> "Shape":
        """From a config alone: its model built on the ``meta`` device (no memory, no weights)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.of_model(model)

    @classmethod
    def of_model(cls, model) -> "Shape":
        """From a model (loaded, or a ``meta`` skeleton)."""
        from ..models.adapters import find_mlp_output

        config = model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = getattr(text, "num_attention_heads", 1)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv = getattr(text, "num_key_value_heads", None) or heads
        adapter = find_mlp_output(model)
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        return cls(parameters=sum(p.numel() for p in model.parameters()), hidden=text.hidden_size,
                   key_dim=adapter.key_dim(0), layers=adapter.num_layers, vocab=inp.weight.shape[0],
                   kv_dim=kv * head_dim, tied=out is not None and out.weight is inp.weight)


def load_config(model: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None):
    """The config of ``model``: a model directory or hub id, a ``config.json`` file, or ``None`` (the
    default model)."""
    from transformers import AutoConfig

    if model is not None and Path(model).is_file():
        data = json.loads(Path(model).read_text())
        if "model_type" not in data:
            raise UniEraseError(f"{model}: a model config needs a 'model_type' field")
        return AutoConfig.for_model(**data)
    from ..models.loading import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(model, cache_dir))


@dataclass
class Phase:
    name: str
    device_gib: float
    """Memory on the model's device (the host's own memory when that device is the CPU)."""
    host_gib: float
    """Host memory besides the device's (0 where the device is the CPU: it is all in ``device_gib``)."""
    disk_gib: float
    """Disk this phase writes (caches, the checkpoint and its records)."""
    what: str
    """What dominates the figure."""


@dataclass
class Plan:
    model: str
    dtype: str
    device: str
    requests: int
    phases: list[Phase]
    state_and_revert_gib: float
    """The sequential state after the round plus the round's revert data (kept beside the checkpoint)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def peak(self, field: str) -> Phase:
        return max(self.phases, key=lambda p: getattr(p, field))

    def table(self) -> str:
        rows = [f"{'phase':<12} {'device GiB':>10} {'host GiB':>9} {'disk GiB':>9}  what dominates"]
        rows += [f"{p.name:<12} {p.device_gib:>10.2f} {p.host_gib:>9.2f} {p.disk_gib:>9.2f}  {p.what}" for p in self.phases]
        rows.append(f"sequential state + revert data after the round: {self.state_and_revert_gib * 1024:.0f} MiB")
        return "\n".join(rows)


def _bytes_of(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def plan_round(shape: Shape, *, dtype: torch.dtype = torch.float32, device: str = "cpu", requests: int = 40,
               config: EditConfig | None = None, token_batch: int = 8, statistics_cached: bool = False,
               token_cached: bool = False, model: str = "") -> Plan:
    """The memory and disk of each phase of a round of ``requests`` requests on a model of ``shape``
    loaded in ``dtype`` on ``device`` (``cpu`` or an accelerator), at ``config`` (the defaults)."""
    config = config or EditConfig()
    b, h, m, n_layers, vocab = _bytes_of(dtype), shape.hidden, shape.key_dim, shape.layers, shape.vocab
    edited = len(config.resolved_layers(n_layers))
    untie = shape.tied  # the token's own output row unties the output layer: one more vocab × hidden matrix
    weights = (shape.parameters + (vocab * h if untie else 0)) * b
    saved = SAVED_PER_TOKEN_LAYER[0] * h + SAVED_PER_TOKEN_LAYER[1] * m
    forward = FORWARD_PER_TOKEN_LAYER[0] * h + FORWARD_PER_TOKEN_LAYER[1] * m
    square = m * m * 8  # one m × m fp64 matrix
    on_cpu = device == "cpu"

    def phase(name, device_bytes, host_bytes, disk_bytes, what):
        if on_cpu:  # one memory: the host's
            device_bytes, host_bytes = device_bytes + host_bytes, 0
        return Phase(name, round(device_bytes / GIB, 2), round(host_bytes / GIB, 2), round(disk_bytes / GIB, 2), what)

    phases = [phase("load", weights, 0, 0, "the weights (+ the untied output layer)")]
    if not token_cached:
        tokens = token_batch * TOKEN_SEQUENCE
        phases.append(phase("token", weights + tokens * n_layers * saved * b + 2 * tokens * vocab * 4, 0, 0,
                            "activations kept for the backward pass through every layer, fp32 logits"))
    basis = edited * square  # Û per edited layer (at most m columns)
    if not statistics_cached:
        moments = MOMENT_FAMILIES * edited * square
        phases.append(phase(
            "statistics", weights + moments + 3 * square + STATS_BATCH * STATS_SEQUENCE * forward * b,
            (MOMENT_FAMILIES - 1) * square, (MOMENT_FAMILIES - 1 + 2) * edited * square,
            f"{MOMENT_FAMILIES} m × m fp64 moment sums per edited layer, then C₀ and its eigh layer by layer "
            "(cached through the host one layer at a time)"))
    rows = min(requests, config.values.micro_batch or requests) * (1 + config.num_prefixes + config.num_suffixes)
    z_layer = max(config.resolved_layers(n_layers))
    value_graph = rows * VALUE_SEQUENCE * (n_layers - z_layer) * saved * b
    prefix_cache = rows * VALUE_PREFIX * n_layers * 2 * shape.kv_dim * b
    logits = rows * (2 + VALUE_SEQUENCE // 2) * vocab * 4
    held = basis + (edited * square if config.solver == "memit" else 0)  # Û (and C₀ for MEMIT) per layer
    hard_rows = requests  # one key per request: its plain and prefixed keys averaged (``keys._collect``)
    soft_rows = requests * SOFT_KEYS_PER_REQUEST
    if config.soft_state_rows is not None:  # their principal directions only
        soft_rows = min(soft_rows, math.ceil(config.soft_state_rows * requests))
    state_rows = hard_rows + soft_rows
    row = _bytes_of(row_dtype_for(dtype))
    state = edited * (state_rows * m * row if state_rows <= m else m * m * 8)  # key rows, or the fp64 sum
    # the edited weights at the round's start, and W₀ + Σ ΔW in fp64 while a pass applies its update
    applying = edited * m * h * b + 2 * m * h * 8
    phases.append(phase("edit", weights + held + value_graph + prefix_cache + logits + applying, state, 0,
                        "the value optimisation's graph through the layers above the edit, Û per layer"))
    phases.append(phase("solve", weights + held + 2 * square + applying, state, 0,
                        "Û and the r × r system of one layer (fp64), the sequential state on the host"))
    # ΔW as the passes' own factors plus what rounding lost, or the old matrix where that is smaller; the token's
    # rows; the old state where the round turned its rows into the sum; the tokenizer files it replaced
    factor = _bytes_of(recorded_dtype(dtype))
    fixes = FIX_BYTES * m * h
    delta = edited * min(math.ceil(PASS_REQUESTS * requests) * (m + h) * factor + fixes, m * h * b)
    revert = delta + (2 * h * b) + (state if state_rows > m else 0) + TOKENIZER_BYTES_PER_TOKEN * vocab
    phases.append(phase("save", weights, state + edited * m * h * b + 2 * vocab * h * b, weights + state + revert,
                        "the checkpoint, the sequential state and the round's revert data"))
    return Plan(model, str(dtype).replace("torch.", ""), device, requests, phases, round((state + revert) / GIB, 3))


def available(device: str, out: str | os.PathLike | None = None) -> dict[str, float]:
    """GiB free now: on the accelerator (``device_gib``), in host memory and on the disk of ``out``."""
    free: dict[str, float] = {}
    if device.startswith("cuda") and torch.cuda.is_available():
        free["device_gib"] = torch.cuda.mem_get_info(torch.device(device))[0] / GIB
    host = _available_host_bytes()
    if host is not None:
        free["host_gib"] = host / GIB
    folder = Path(out) if out is not None else Path.cwd()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free["disk_gib"] = shutil.disk_usage(folder).free / GIB
    return free


def fitting_micro_batch(plan_for, requests: int, free_gib: float) -> int | None:
    """The largest value-optimisation micro-batch (``ValueConfig.micro_batch``) whose edit phase fits
    ``free_gib``, for ``plan_for(micro_batch) → Plan``; ``None`` when all requests fit at once or
    not even one does."""
    def edit_gib(size):
        return next(p.device_gib for p in plan_for(size).phases if p.name == "edit")

    if edit_gib(None) <= free_gib or edit_gib(1) > free_gib:
        return None
    low, high = 1, requests  # edit_gib(low) fits, edit_gib(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if edit_gib(mid) <= free_gib else (low, mid)
    return low


def _available_host_bytes() -> int | None:
    """Memory the system can give without swapping (Linux: MemAvailable, counting reclaimable caches)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # a platform without these
        return None


def check(plan: Plan, free: dict[str, float], resident_gib: float = 0.0) -> None:
    """Refuse, naming the phase and the figure, when a phase needs more than ``free`` has;
    ``resident_gib``: what is held already (the loaded weights), not needed a second time."""
    for p in plan.phases:
        device = max(0.0, p.device_gib - resident_gib)
        needs = {"disk_gib": p.disk_gib, "host_gib": p.host_gib + (device if plan.device == "cpu" else 0),
                 "device_gib": device if plan.device != "cpu" else 0}
        for what, need in needs.items():
            if what in free and need > free[what]:
                where = {"disk_gib": "disk", "host_gib": "host memory", "device_gib": f"{plan.device} memory"}[what]
                raise UniEraseError(f"the {p.name} phase needs about {need:.1f} GiB of {where} ({p.what}); "
                                    f"{free[what]:.1f} GiB are free. 'unierase plan' shows every phase")
