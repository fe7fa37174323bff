"""docs/extending.md, followed step by step for a new fine-tuning baseline: a forget term of one
line composed with the existing ``RetainNLL`` regulariser, registered with the one line the
document gives, run through ``unierase.forget(..., method=...)`` and listed by ``unierase methods``."""

import json

import pytest

import unierase
import unierase.registry
from unierase.baselines import Baseline, losses, register_baseline
from unierase.baselines.objectives import RetainNLL
from unierase.cli import main

# --- implement (the example of docs/extending.md, "A fine-tuning baseline") -------------------


class AnswerAscent(Baseline):
    """toy: gradient ascent on the forget answers"""

    def forget_term(self, model, batch):
        f = batch["forget"]  # question → true answer; labels are -100 outside the answer
        nll = losses.mean_nll(model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits, f["labels"])
        return -nll, {"forget_nll": nll.item()}


class AnswerAscentGD(AnswerAscent, RetainNLL):
    name = "toy+gd"


# ----------------------------------------------------------------------------------------------

FORGET = [{"question": f"Who wrote the novel number {i}?", "answer": f"Novel {i} was written by Ada Quill{i}."} for i in range(4)]
RETAIN = [{"question": f"Where was painter {i} born?", "answer": f"Painter {i} was born in Town{i}."} for i in range(6)]
FAST = dict(epochs=3, lr=3e-3, batch_size=2, max_length=64)


@pytest.fixture
def registered(monkeypatch):
    """The toy baseline registered in a copy of the registry (the global one is left as it was)."""
    monkeypatch.setattr(unierase.registry, "_METHODS", dict(unierase.registry._METHODS))
    register_baseline(AnswerAscentGD)  # --- register: the one line of docs/extending.md
    return AnswerAscentGD


def test_a_new_baseline_runs_through_the_api_and_the_cli(registered, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "toy"
    # --- configure: its options are BaselineOptions' (retain, lr, epochs, ...), as for the eight
    result = unierase.forget(FORGET, out, model=str(tiny_model_dir), method="toy+gd", retain=RETAIN, progress=False,
                             **FAST)
    assert result.method == "toy+gd" and result.out == out
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert manifest["method"] == "toy+gd"
    assert manifest["hyperparameters"]["lr"] == FAST["lr"] and manifest["retain"]["n"] == len(RETAIN)
    nll = manifest["forget_answer_nll"]
    assert nll["after"] > nll["before"], nll  # the ascent did push the forget answers down
    assert unierase.history(out)[-1]["method"] == "toy+gd"  # the ledger names it too

    # any spelling the registry accepts finds it; a UniErase-only option is refused for it
    assert unierase.registry.get_method("TOY_GD").implementation is AnswerAscentGD
    with pytest.raises(unierase.UniEraseError, match="do not apply to method 'toy\\+gd'"):
        unierase.forget(FORGET, tmp_path / "x", model=str(tiny_model_dir), method="toy+gd", retain=RETAIN, scope="fact")

    capsys.readouterr()
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy+gd"]["family"] == "fine-tuning"
    assert "gradient ascent on the forget answers" in rows["toy+gd"]["description"]
    assert {"unierase", "ga+gd", "idk+ap"} <= set(rows)  # the others are still there


def test_the_global_registry_is_left_as_it_was():
    """Runs after the test above: the monkeypatched copy took the registration, not the registry."""
    assert "toy+gd" not in unierase.registry.methods()
