"""TOFU data location and subsets, the finetune verb and the CLI flags of the baselines."""

import json

import pytest

from unierase.baselines.data import find_data_dir, parse_data_spec, refusal_for, tofu_subset
from unierase.baselines.finetune import FinetuneConfig, finetune
from unierase.cli import build_parser, main
from unierase.record.manifest import SCHEMA_VERSION
from unierase.storage import UniEraseError


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIERASE_DATA", raising=False)
    (tmp_path / "shared" / "data" / "tofu").mkdir(parents=True)
    deep = tmp_path / "repo" / "src"
    deep.mkdir(parents=True)
    assert find_data_dir(start=deep) == tmp_path / "shared" / "data"
    monkeypatch.setenv("UNIERASE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UniEraseError, match="UNIERASE_DATA"):
        find_data_dir()
    with pytest.raises(UniEraseError, match="does not exist"):
        find_data_dir(tmp_path / "missing")


def test_tofu_subset_keeps_forget_last(shared_data):
    subset = tofu_subset(3, 1, shared_data)
    full = parse_data_spec("tofu:full", shared_data)
    forget01 = parse_data_spec("tofu:forget01", shared_data)
    assert subset.retain == full[:40] and subset.forget == full[-20:]
    assert subset.forget == forget01[-20:]  # TOFU's last author
    assert subset.describe()["forget_authors"] == "199-199"
    assert parse_data_spec("tofu:full[0:20]", shared_data) == full[:20]
    with pytest.raises(UniEraseError, match="not found"):
        parse_data_spec("tofu:nonsense", shared_data)
    with pytest.raises(UniEraseError, match="forget authors"):
        tofu_subset(2, 2, shared_data)


def test_refusal_choice_is_stable():
    refusals = ["a", "b", "c", "d"]
    assert refusal_for("Who is X?", refusals) == refusal_for("Who is X?", list(refusals))


def test_finetune_memorises_and_records(tiny_model_dir, tmp_path, qa_rows, forget_file):
    config = FinetuneConfig(epochs=20, lr=3e-3, batch_size=4, warmup_epochs=0, eval_items=2, eval_max_new_tokens=8,
                            progress=False, max_length=64)
    result = finetune(str(tiny_model_dir), str(forget_file), tmp_path / "ft", config=config)
    manifest = json.loads((tmp_path / "ft" / "unierase_manifest.json").read_text())
    assert manifest["method"] == "finetune" and manifest["data"]["n_items"] == len(qa_rows[0])
    assert manifest["schema"] == SCHEMA_VERSION and manifest["base_model"]["fingerprint"]  # the one manifest schema
    losses = manifest["train"]["loss_per_epoch"]
    assert losses[-1] < losses[0]
    assert 0 <= manifest["memorisation"]["rougeL_recall"] <= 1
    assert "fine-tuned" in result.summary()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unierase.baselines.finetune import memorisation
    from unierase.requests import ForgetRequest

    items = [ForgetRequest(**r) for r in qa_rows[0]]
    mem = memorisation(AutoModelForCausalLM.from_pretrained(tmp_path / "ft"), AutoTokenizer.from_pretrained(tmp_path / "ft"),
                       items, n=-1, max_new_tokens=4, groups={"first": items[:1], "rest": items[1:]})
    assert mem["items"] == 4 and mem["groups"]["first"]["items"] == 1 and mem["groups"]["rest"]["items"] == 3


def test_finetune_bad_input(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": "A."}\n{"question": \n')
    assert main(["finetune", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    noans = tmp_path / "noans.jsonl"
    noans.write_text('{"question": "Q?"}\n')
    with pytest.raises(UniEraseError, match="no 'answer'"):
        finetune(str(tiny_model_dir), str(noans), tmp_path / "o")
    with pytest.raises(UniEraseError, match="needs --authors"):
        finetune(str(tiny_model_dir), "tofu:full", tmp_path / "o", split="retain")
    assert main(["finetune", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(tmp_path / "o"),
                 "--epochs", "0"]) == 2


def test_forget_flags_reach_the_baseline(monkeypatch, tmp_path):
    """The forget command forwards the baseline flags to api.forget (only for baselines)."""
    api = pytest.importorskip("unierase.api", reason="the API module (forget dispatch) is not present")
    seen = {}

    class Result:
        def summary(self):
            return "ok"

    def fake_forget(requests, **kwargs):
        seen.update(kwargs)
        return Result()

    monkeypatch.setattr(api, "forget", fake_forget)
    argv = ["forget", "--requests", "r.jsonl", "--out", str(tmp_path / "o"), "--method", "npo+kl", "--retain", "tofu:retain90",
            "--epochs", "2", "--lr", "1e-5", "--lora", "--beta", "0.2", "--threads", "1"]
    assert main(argv) == 0
    options = seen["options"]
    assert seen["method"] == "npo+kl" and options.retain == "tofu:retain90" and options.epochs == 2
    assert options.lr == 1e-5 and options.lora is True and options.beta == 0.2 and options.threads == 1
    assert options.forget_coef is None
    seen.clear()
    assert main(["forget", "--requests", "r.jsonl", "--out", str(tmp_path / "o")]) == 0
    assert not hasattr(seen["options"], "epochs") and seen["method"] == "unierase"
    # an option of another method is refused, never dropped
    assert main(["forget", "--requests", "r.jsonl", "--out", str(tmp_path / "o"), "--epochs", "2"]) == 2
    assert main(["forget", "--requests", "r.jsonl", "--out", str(tmp_path / "o"), "--method", "ga+gd",
                 "--scope", "entity"]) == 2
    assert build_parser().parse_args(["finetune", "--data", "tofu:full", "--out", "x"]).authors is None
