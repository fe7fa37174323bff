"""edit/plan.py: the memory and disk of each phase of a round, from the model's config alone."""

import json
import math
from pathlib import Path

import pytest
import torch

from unierase.edit.config import EditConfig
from unierase.edit.plan import GIB, Shape, check, load_config, plan_round
from unierase.edit.values import ValueConfig
from unierase.storage import UniEraseError

CONFIGS = Path(__file__).resolve().parent.parent / "data" / "configs"


def test_the_shape_of_a_real_config_comes_from_a_meta_skeleton():
    shape = Shape.of(load_config(CONFIGS / "llama-3.1-8b.json"))
    assert shape.parameters == 8_030_261_248 and shape.key_dim == 14336 and shape.layers == 32
    assert shape.kv_dim == 1024 and not shape.tied and shape.vocab == 128256


def test_the_figures_follow_their_formulas():
    """Hand-computed: a tied 2-layer model, m = 8, fp32 on the CPU; the statistics' moment sums are
    3 m × m fp64 matrices per edited layer and the state holds the keys as rows while they are fewer than m."""
    shape = Shape(parameters=1000, hidden=4, key_dim=8, layers=2, vocab=10, kv_dim=4, tied=True)
    config = EditConfig(layers=[1], num_prefixes=0)
    plan = plan_round(shape, dtype=torch.float32, device="cpu", requests=1, config=config)
    phases = {p.name: p for p in plan.phases}
    weights = (1000 + 10 * 4) * 4
    assert phases["load"].device_gib == round(weights / GIB, 2)
    assert phases["statistics"].disk_gib == round((3 * 64 * 8 + 2 * 64 * 8) / GIB, 2)
    state = 8 * 8 * 8  # 1 + 104 keys > m: the m × m form
    revert = 8 * 4 * 4 + 2 * 4 * 4 + state + 80 * 10  # the old matrix is smaller than the passes' factors
    assert plan.state_and_revert_gib == round((state + revert) / GIB, 3)
    assert phases["load"].host_gib == 0  # on the CPU, one memory


@pytest.mark.parametrize("dtype,factor", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 4)])
def test_the_sequential_record_grows_with_what_was_erased(dtype, factor):
    """Hand-computed on an 8B-wide layer: one key row per request (+ its soft rows) in the model's
    dtype (fp32 for wider ones) while fewer than m; the revert data the passes' factors at the weight's precision (fp32 for fp16)
    plus what rounding lost."""
    from unierase.edit.plan import FIX_BYTES, PASS_REQUESTS, TOKENIZER_BYTES_PER_TOKEN

    h, m = 4096, 14336
    shape = Shape(parameters=10 ** 9, hidden=h, key_dim=m, layers=2, vocab=10, kv_dim=4, tied=False)
    b = torch.empty(0, dtype=dtype).element_size()
    for requests in (10, 100):
        plan = plan_round(shape, dtype=dtype, device="cpu", requests=requests,
                          config=EditConfig(layers=[1], soft_state_rows=1))
        state = (requests + requests) * m * min(b, 4)  # a 16-bit model's rows in its dtype
        delta = min(math.ceil(PASS_REQUESTS * requests) * (m + h) * factor + FIX_BYTES * m * h, m * h * b)
        files = TOKENIZER_BYTES_PER_TOKEN * 10
        assert plan.state_and_revert_gib == round((state + delta + 2 * h * b + files) / GIB, 3)


def test_micro_batches_and_cached_statistics_shrink_the_plan():
    shape = Shape.of(load_config(CONFIGS / "qwen2.5-7b.json"))
    whole = plan_round(shape, dtype=torch.bfloat16, device="cuda", requests=400)
    batched = plan_round(shape, dtype=torch.bfloat16, device="cuda", requests=400,
                         config=EditConfig(values=ValueConfig(micro_batch=8)))
    edit = {p.name: p for p in whole.phases}["edit"].device_gib
    assert {p.name: p for p in batched.phases}["edit"].device_gib < edit / 10
    cached = plan_round(shape, dtype=torch.bfloat16, device="cuda", requests=40, statistics_cached=True)
    assert "statistics" not in [p.name for p in cached.phases]


def test_a_phase_that_will_not_fit_is_named_with_its_figure():
    shape = Shape.of(load_config(CONFIGS / "llama-3.1-70b.json"))
    plan = plan_round(shape, dtype=torch.bfloat16, device="cuda", requests=40)
    with pytest.raises(UniEraseError, match=r"the load phase needs about 131\.4 GiB of cuda memory"):
        check(plan, {"device_gib": 80.0, "host_gib": 1000.0, "disk_gib": 1000.0})
    check(plan, {"device_gib": 1000.0, "host_gib": 1000.0, "disk_gib": 1000.0})
    # the weights already loaded are not needed a second time
    check(plan_round(shape, dtype=torch.bfloat16, device="cpu", requests=1, statistics_cached=True),
          {"host_gib": 300.0, "disk_gib": 1000.0}, resident_gib=131.5)


def test_unierase_plan_prints_every_phase_for_a_config_file(capsys):
    from unierase.cli import main

    assert main(["plan", "--model", str(CONFIGS / "llama-3.1-8b.json"), "--device", "cuda", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in out["phases"]] == ["load", "token", "statistics", "edit", "solve", "save"]
    assert out["dtype"] == "bfloat16" and out["requests"] == 40 and "verdict" in out
    assert main(["plan", "--model", str(CONFIGS / "llama-3.1-8b.json"), "--requests", "0"]) == 2


def test_the_largest_micro_batch_that_fits_is_found():
    """A round too large for the device's memory at once runs its value optimisation in the largest
    micro-batches that fit (``forget`` chooses it when ``values.micro_batch`` is not set)."""
    from unierase.edit.plan import fitting_micro_batch

    shape = Shape.of(load_config(CONFIGS / "llama-3.1-8b.json"))

    def plan_for(size):
        config = EditConfig(values=ValueConfig(micro_batch=size))
        return plan_round(shape, dtype=torch.bfloat16, device="cuda", requests=400, config=config)

    def edit(size):
        return {p.name: p for p in plan_for(size).phases}["edit"].device_gib

    size = fitting_micro_batch(plan_for, 400, 40.0)
    assert size is not None and edit(size) <= 40.0 < edit(size + 1)
    assert fitting_micro_batch(plan_for, 400, 1e4) is None  # all at once fits
    assert fitting_micro_batch(plan_for, 400, 1.0) is None  # not even one request fits: the check refuses
