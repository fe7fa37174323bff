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
