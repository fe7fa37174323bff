"""Fully sharded training (torch's FSDP2, ``fully_shard``): each of N processes holds 1/N of the
weights, gradients and AdamW state instead of a whole copy (DDP).

Asked for by ``TrainConfig.fsdp`` (``--fsdp``) or by launching with an accelerate FSDP config
(``accelerate launch --config_file examples/accelerate/fsdp2.yaml``, which sets
``ACCELERATE_USE_FSDP``); both go through the same ``fully_shard`` calls accelerate itself makes
for FSDP2, here on a CPU (gloo) as well as on GPUs. Each decoder block is a unit (gathered for its
forward and backward, freed after), then the rest of the model.

With ``bf16`` the shards are kept in fp32 — the optimiser's master weights — and each unit is
gathered in bf16 for compute, gradients reduced in fp32 (``MixedPrecisionPolicy``); a model loaded
in bf16 is upcast shard by shard and saved back in bf16. After training, ``gather`` builds the
first process's plain copy of the trained model from the full state dict (on the CPU, then moved to
the device the model came from): the one that is evaluated and saved.
"""

from __future__ import annotations

import os

import torch

from .. import distributed
from ..models.adapters import decoder_blocks
from ..storage import UniEraseError


def requested(config) -> bool:
    """Whether this run shards its model: several processes, and ``config.fsdp`` or an accelerate
    FSDP launch. Refuses what the sharded path does not do (LoRA, FSDP version 1, DeepSpeed)."""
    if distributed.rank_and_size()[1] < 2:
        return False
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise UniEraseError("DeepSpeed is not supported here (and not installed); launch with an FSDP config "
                            "(examples/accelerate/fsdp2.yaml) for the same sharding of weights, gradients and optimiser state")
    from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if from_launcher and os.environ.get("FSDP_VERSION", "2") != "2":
        raise UniEraseError("the accelerate config asks for FSDP version 1; set fsdp_version: 2 (torch's fully_shard)")
    wanted = bool(config.fsdp) or from_launcher
    if wanted and config.lora:
        raise UniEraseError("--lora with sharding is not supported: LoRA's trainable state is small, run it without "
                            "--fsdp (each process then holds the frozen model and the adapters)")
    return wanted


def wants_bf16(config) -> bool:
    """bf16 compute: ``config.bf16``, or an accelerate launch whose config says ``mixed_precision: bf16``
    (fp16 is refused: its loss scaling is not done here)."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher == "fp16":
        raise UniEraseError("mixed_precision fp16 is not supported (no loss scaling here); use bf16 or no")
    return bool(config.bf16) or launcher == "bf16"


def _policy(bf16: bool):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model, *, bf16: bool = False) -> torch.device:
    """Shard ``model`` in place over the processes (each decoder block, then the root) and return
    the device it computes on: this process's GPU where there are GPUs, else the CPU. Parameters
    are held in fp32 when ``bf16`` (master weights; the model's own dtype is kept for ``gather``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    first = next(model.parameters())
    model._unierase_home = (first.dtype, first.device)
    if torch.cuda.is_available():  # each process its own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    mesh = init_device_mesh(device.type, (distributed.rank_and_size()[1],))
    policy = _policy(bf16)
    for block in decoder_blocks(model):
        if bf16:
            block.float()  # one block at a time: the fp32 master copy is made shard by shard
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if bf16:  # the rest (embeddings, final norm, head) before it is sharded in turn
        for param in model.parameters():
            if not isinstance(param, DTensor) and param.dtype != torch.float32:
                param.data = param.data.float()
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return device


def gather(model):
    """The trained weights of a sharded ``model`` as a plain model on the first process (``None`` on
    the others), in the dtype and on the device the model had before ``shard``. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not distributed.is_main():
        return None
    dtype, device = model._unierase_home
    plain_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # fully_shard subclassed it
    with torch.device("meta"):
        plain = plain_class(model.config)
    missing, unexpected = plain.load_state_dict(state, assign=True, strict=False)
    for name, buffer in model.named_buffers():  # buffers are not sharded (rotary frequencies, …)
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner).register_buffer(leaf, buffer.detach().to("cpu", copy=True),
                                                   persistent=leaf not in plain.get_submodule(owner)._non_persistent_buffers_set)
    if getattr(model.config, "tie_word_embeddings", False):
        plain.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    still_meta = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing or unexpected or still_meta:
        raise UniEraseError(f"gathering the sharded model failed: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                            f"unfilled {still_meta[:3]}")
    plain.generation_config = model.generation_config
    for param in plain.parameters():  # parameters only: buffers keep their dtype, as a loaded model's do
        param.data = param.data.to(dtype)
    return plain.to(device).eval()
