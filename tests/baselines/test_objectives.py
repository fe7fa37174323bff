"""The eight baselines on a tiny random Llama: each runs, writes a checkpoint + manifest, and the
forget-answer likelihood goes down; bad input is refused with a one-line error."""

import json

import pytest

from unierase.baselines import BASELINES, baseline_class, make_config, run_baseline
from unierase.registry import get_method

METHODS = [cls.name for cls in BASELINES]
from unierase.requests import ForgetRequest
from unierase.storage import UniEraseError

FORGET = [{"question": f"Who wrote the novel number {i}?", "answer": f"Novel {i} was written by Ada Quill{i}."} for i in range(4)]
RETAIN = [{"question": f"Where was painter {i} born?", "answer": f"Painter {i} was born in Town{i}."} for i in range(6)]
REQUESTS = [ForgetRequest(**r) for r in FORGET]
RETAIN_REQ = [ForgetRequest(**r) for r in RETAIN]
FAST = dict(epochs=3, lr=3e-3, batch_size=2, warmup_epochs=0, progress=False, max_length=64)


def uniform_kl_on_forget(path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from unierase.baselines import losses
    from unierase.baselines.trainer import collate, encode_pairs

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    batch = collate(encode_pairs(tokenizer, [(r.question, r.answer) for r in REQUESTS], 64), tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return losses.uniform_kl(logits, batch["labels"]).item()


def test_registry_has_the_eight_methods():
    assert sorted(METHODS) == sorted(["ga+gd", "ga+kl", "npo+gd", "npo+kl", "me+gd", "dpo+gd", "dpo+kl", "idk+ap"])
    assert get_method("NPO_GD").name == "npo+gd" and baseline_class("NPO_GD").name == "npo+gd"
    with pytest.raises(UniEraseError, match="not a fine-tuning baseline"):
        baseline_class("unierase")
    assert make_config("me+gd").forget_coef == 0.1
    assert make_config("ga+gd").forget_coef == 1.0
    with pytest.raises(UniEraseError, match="unknown method"):
        get_method("gradient-magic")
    with pytest.raises(UniEraseError, match="unknown baseline setting"):
        make_config("ga+gd", learning_rate=1.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_runs_and_lowers_forget_likelihood(method, tiny_model_dir, tokenizer, tmp_path):
    out = tmp_path / method
    # ME's effect is checked on its own (the GD term on a random model sharpens every distribution).
    extra = {"retain_coef": 0.0, "forget_coef": 1.0} if method == "me+gd" else {}
    if method in ("idk+ap", "dpo+gd", "dpo+kl"):
        # fixed refusals, so the result does not depend on whether the TOFU data is found
        refusals = tmp_path / "refusals.txt"
        refusals.write_text("I don't know.\n")
        extra["refusals"] = str(refusals)
    if method == "idk+ap":
        extra["retain_coef"] = 0.0  # on a random tiny model the AP term (refusals below true answers) fights the IDK term
    # the refusal methods teach the tiny model to refuse everything at these fast settings: the guard
    # against a wrecked model refuses to save it, and saves it (recorded) when forced
    refuses = method in ("idk+ap", "dpo+gd", "dpo+kl")
    if refuses:
        with pytest.raises(UniEraseError, match="the round was not saved"):
            run_baseline(method, str(tiny_model_dir), REQUESTS, out, retain=RETAIN_REQ, **FAST, **extra)
        assert not out.exists()
    result = run_baseline(method, str(tiny_model_dir), REQUESTS, out, retain=RETAIN_REQ, force=refuses, **FAST, **extra)
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert manifest["guard"]["forced"] is refuses and manifest["guard"]["collapsed"] is refuses
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert manifest["method"] == method
    for key in ("unierase_version", "schema", "base_model", "requests", "hyperparameters", "timings_s", "peak_memory_mb"):
        assert key in manifest
    assert manifest["requests"][0]["sha256"] == REQUESTS[0].digest()
    assert manifest["hyperparameters"]["lr"] == FAST["lr"]
    nll = manifest["forget_answer_nll"]
    assert {"first", "last"} <= set(manifest["train"])  # the training record keeps its first and last step
    if method == "idk+ap":
        # IDK teaches the refusal; the true answer is not targeted directly.
        assert nll["refusal_after"] < nll["refusal_before"], nll
    elif method == "me+gd":
        # ME pushes the answer positions towards the uniform distribution (a random model is near it already).
        assert uniform_kl_on_forget(out, tokenizer) < uniform_kl_on_forget(tiny_model_dir, tokenizer)
    else:
        assert nll["after"] > nll["before"], nll
    assert method in result.summary()


def test_lora_option_and_kl_without_copy(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    run_baseline("npo+kl", str(tiny_model_dir), REQUESTS, out, retain=RETAIN_REQ, lora=True, lora_r=4,
                 **{**FAST, "lr": 1e-2})
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert manifest["reference"] == "start model with LoRA adapters disabled"
    assert manifest["forget_answer_nll"]["after"] > manifest["forget_answer_nll"]["before"]
    assert not any("lora" in p.name for p in out.iterdir())  # merged into a plain checkpoint


def test_seed_makes_runs_reproducible(tiny_model_dir, tmp_path):
    a = run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "a", retain=RETAIN_REQ, seed=3, **FAST)
    b = run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "b", retain=RETAIN_REQ, seed=3, **FAST)
    assert a.manifest["forget_answer_nll"]["after"] == pytest.approx(b.manifest["forget_answer_nll"]["after"], rel=1e-5)


def test_bad_input(tiny_model_dir, tmp_path):
    with pytest.raises(UniEraseError, match="needs retain data"):
        run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "x", **FAST)
    with pytest.raises(UniEraseError, match="needs the answer"):
        run_baseline("npo+gd", str(tiny_model_dir), [ForgetRequest("Who?")], tmp_path / "x", retain=RETAIN_REQ, **FAST)
    with pytest.raises(UniEraseError, match="no forget requests"):
        run_baseline("ga+gd", str(tiny_model_dir), [], tmp_path / "x", retain=RETAIN_REQ, **FAST)
    with pytest.raises(UniEraseError, match="learning rate"):
        run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "x", retain=RETAIN_REQ, **{**FAST, "lr": -1})
    with pytest.raises(UniEraseError, match="not found"):
        run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "x", retain=str(tmp_path / "missing.jsonl"), **FAST)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    with pytest.raises(UniEraseError, match="already exists"):
        run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "taken", retain=RETAIN_REQ, **FAST)
    # idk+ap needs no answers on the forget side (forced: at these settings the tiny model learns to refuse
    # everything, which the guard against a wrecked model would rightly refuse to save)
    run_baseline("idk+ap", str(tiny_model_dir), [ForgetRequest("Who wrote novel 1?")], tmp_path / "idk",
                 retain=RETAIN_REQ, force=True, **FAST)


def test_retain_spec_from_file(tiny_model_dir, tmp_path, retain_file):
    run_baseline("ga+gd", str(tiny_model_dir), REQUESTS, tmp_path / "o", retain=str(retain_file), **FAST)


def test_cli_forget_with_a_baseline(tiny_model_dir, tmp_path, forget_file, retain_file, capsys):
    from unierase.cli import main

    out = tmp_path / "cli"
    common = ["forget", "--model", str(tiny_model_dir), "--requests", str(forget_file), "--out", str(out),
              "--epochs", "1", "--lr", "1e-3", "--batch-size", "2", "--no-progress"]
    assert main(common + ["--method", "dpo+kl", "--retain", str(retain_file)]) == 0
    assert "dpo+kl" in capsys.readouterr().out
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert manifest["method"] == "dpo+kl" and manifest["hyperparameters"]["epochs"] == 1
    # bad input: one-line errors, exit status 2, the earlier output untouched
    assert main(common + ["--method", "npo+gd", "--retain", str(retain_file)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(common + ["--method", "npo+gd", "--overwrite"]) == 2
    assert "needs retain data" in capsys.readouterr().err
    assert main(common + ["--method", "magic", "--overwrite", "--retain", str(retain_file)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert json.loads((out / "unierase_manifest.json").read_text())["method"] == "dpo+kl"
