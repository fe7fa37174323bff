"""When training is sharded (FSDP2), and what the sharded path refuses, in one line each."""

import pytest

from unierase.baselines import sharding
from unierase.baselines.trainer import TrainConfig
from unierase.storage import UniEraseError


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(sharding.distributed, "rank_and_size", lambda: (0, 2))
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_never_shards():
    assert not sharding.requested(TrainConfig(fsdp=True))


def test_the_flag_or_an_accelerate_fsdp_launch_shards(two_processes):
    assert not sharding.requested(TrainConfig())
    assert sharding.requested(TrainConfig(fsdp=True))
    two_processes.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding.requested(TrainConfig())


@pytest.mark.parametrize("env, config, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, TrainConfig(), "DeepSpeed is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, TrainConfig(), "fsdp_version: 2"),
    ({}, TrainConfig(fsdp=True, lora=True), "--lora with sharding"),
])
def test_what_the_sharded_path_refuses(two_processes, env, config, message):
    for name, value in env.items():
        two_processes.setenv(name, value)
    with pytest.raises(UniEraseError, match=message):
        sharding.requested(config)


def test_the_launchers_mixed_precision_is_honoured(two_processes):
    assert not sharding.wants_bf16(TrainConfig())
    two_processes.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert sharding.wants_bf16(TrainConfig())
    two_processes.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(UniEraseError, match="fp16 is not supported"):
        sharding.wants_bf16(TrainConfig())


@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma2"])
@pytest.mark.parametrize("bf16", [False, True])
def test_gather_gives_back_the_model_that_was_sharded(process_group, arch, bf16):
    """Sharded (one process is enough for the path) and gathered: the same weights in the same dtype,
    the same buffers and the same logits, whether the head is tied (llama) or not, Linear or Conv1D."""
    import copy

    import torch

    from tiny_models import build_model

    model = build_model(arch, 400)
    if bf16:
        model = model.to(torch.bfloat16)
    before = copy.deepcopy(model)
    sharding.shard(model, bf16=bf16)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master copy is fp32 either way
    plain = sharding.gather(model)
    assert type(plain) is type(before)
    assert {k: (v.dtype, v.shape) for k, v in plain.state_dict().items()} == \
        {k: (v.dtype, v.shape) for k, v in before.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), before.state_dict().values()))
    assert {k: b.dtype for k, b in plain.named_buffers()} == {k: b.dtype for k, b in before.named_buffers()}
    ids = torch.tensor([[5, 17, 42, 7]])
    assert torch.equal(plain(input_ids=ids).logits, before(input_ids=ids).logits)
    if getattr(before.config, "tie_word_embeddings", False):
        assert plain.get_output_embeddings().weight is plain.get_input_embeddings().weight
