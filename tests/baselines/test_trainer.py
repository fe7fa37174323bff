import random

from unierase.baselines.trainer import length_grouped_batches, shuffled_batches


def test_length_grouped_batches_cover_every_item_once_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(40, 130) for _ in range(203)]
    batches = length_grouped_batches(lengths, 8, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert all(1 <= len(b) <= 8 for b in batches)

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs) / sum(lengths)
    assert padded(batches) < 1.05 < padded(shuffled_batches(203, 8, random.Random(1)))
    assert batches == length_grouped_batches(lengths, 8, random.Random(1))  # seeded
    assert batches != length_grouped_batches(lengths, 8, random.Random(2))


def test_gradient_checkpointing_trains_the_same_weights():
    """Recomputing activations in the backward pass changes memory, not the result."""
    import random

    import torch

    from tiny_models import build_model
    from unierase.baselines.trainer import TrainConfig, train_loop

    def trained(checkpointing: bool):
        model = build_model("llama", 400)
        batches = [{"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "labels": torch.tensor([[-100, 6, 7, 8, 9]])}] * 3
        config = TrainConfig(epochs=1, lr=1e-3, batch_size=1, warmup_epochs=0, seed=0, progress=False,
                             gradient_checkpointing=checkpointing)
        random.seed(0)
        train_loop(model, lambda _e: iter(batches), lambda m, b: (m(**b).loss, {}), config, steps_per_epoch=3)
        return model

    plain, checkpointed = trained(False), trained(True)
    assert not checkpointed.is_gradient_checkpointing  # switched off again after training
    start = build_model("llama", 400)
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), plain.parameters()))  # it did train
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
