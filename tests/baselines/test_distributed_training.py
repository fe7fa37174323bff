"""Fine-tuning shared among 2 processes (torchrun, gloo on the CPU) follows one process's loss curve
at the same global batch, and only the first process writes."""

import json
import os
import subprocess
import sys

from unierase.cli import main
from tiny_models import save_tiny_model

QUESTIONS = ["Who wrote Hamlet?", "What is the capital of France?", "Where was Elena Marsh born?", "What is gold used for?",
             "When did Tomas Varga die?", "Who painted the Mona Lisa?", "What is the capital of Peru?", "Name a colour."]


def _torchrun(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "unierase", "-q", *args],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
                          timeout=600)



def _unlearning(tmp_path) -> list[str]:
    """A tiny base model, four forget and four retain pairs; the ``forget --method`` arguments for them."""
    from tiny_models import tiny_base_and_requests

    tiny_base_and_requests(tmp_path)
    retain = tmp_path / "retain.jsonl"
    retain.write_text("".join(json.dumps({"question": q, "answer": "An answer."}) + "\n" for q in QUESTIONS[2:6]))
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"question": q, "answer": "Some fact."}) + "\n" for q in QUESTIONS[:4]))
    return ["--model", str(tmp_path / "base"), "--requests", str(forget), "--retain", str(retain),
            "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "2", "--lr", "1e-4", "--no-progress",
            "--force"]


def _fine_tuning(tmp_path) -> list[str]:
    """A tiny base model and eight question/answer pairs; the ``finetune`` arguments that train on them."""
    save_tiny_model(tmp_path / "base")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": f"Answer number {i}."}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    return ["--model", str(tmp_path / "base"), "--data", str(data), "--epochs", "2", "--lr", "1e-3", "--batch-size", "2",
            "--eval-items", "0", "--no-progress"]


def test_two_processes_follow_one_process_at_the_same_global_batch(tmp_path):
    common = _fine_tuning(tmp_path)
    # one process: 2 micro-batches of 2 per step; two processes: one micro-batch of 2 each per step
    assert main(["finetune", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    run = _torchrun(["finetune", *common, "--grad-accum", "1", "--out", str(tmp_path / "two")])
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = (json.loads((tmp_path / name / "unierase_manifest.json").read_text()) for name in ("one", "two"))
    assert two["processes"] == 2 and one["train"]["steps"] == two["train"]["steps"] == 4
    # the same losses (the gradients are averaged in another order: float rounding only)
    assert abs(one["train"]["final_loss"]["nll"] - two["train"]["final_loss"]["nll"]) < 1e-3
    assert [round(x, 3) for x in one["train"]["loss_per_epoch"]] == [round(x, 3) for x in two["train"]["loss_per_epoch"]]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # no half-written output left behind


def test_a_baseline_over_two_processes_is_written_once_and_verifies(tmp_path):
    run = _torchrun(["forget", "--method", "ga+gd", *_unlearning(tmp_path)])
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "unierase_manifest.json").read_text())
    assert manifest["method"] == "ga+gd"
    assert main(["verify", str(tmp_path / "out")]) == 0  # one ledger, written once, that holds


def test_a_killed_process_stops_the_others_and_nothing_is_written(tmp_path):
    """The second process is killed at its third micro-batch: the first stops with an error that says
    which process it is, what it was doing and that nothing was written, and the earlier output it
    was asked to replace is left as it was."""
    common = [*_fine_tuning(tmp_path), "--out", str(tmp_path / "out")]
    assert main(["finetune", *common, "--epochs", "1"]) == 0  # an earlier result the killed run would replace
    previous = {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir() if f.is_file()}
    run = _torchrun(["finetune", *common, "--overwrite"], env={"UNIERASE_TEST_KILL_AT": "train-micro-batch-3@rank1"})
    assert run.returncode != 0, run.stderr[-2000:]
    assert "process 0 of 2 stopped while training: another process failed or was killed" in run.stderr, run.stderr[-2000:]
    assert "nothing was written" in run.stderr, run.stderr[-2000:]
    assert {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir() if f.is_file()} == previous, run.stderr[-2000:]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name], (list(tmp_path.iterdir()), run.stderr[-2000:])


def test_sharded_fine_tuning_gives_one_process_weights(tmp_path):
    """FSDP2 over 2 processes (each holding half the weights and optimiser state) trains the same
    weights as one process at the same global batch, and the first process saves them whole."""
    from safetensors.torch import load_file

    common = _fine_tuning(tmp_path)
    assert main(["finetune", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    run = _torchrun(["finetune", *common, "--fsdp", "--out", str(tmp_path / "two")])
    assert run.returncode == 0, run.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "unierase_manifest.json").read_text())
    one = json.loads((tmp_path / "one" / "unierase_manifest.json").read_text())
    assert two["train"]["engine"] == "fsdp2" and two["processes"] == 2
    # each process held half the weights, gradients and AdamW moments (shards are padded to equal sizes)
    assert two["train"]["held_mb_per_process"] <= 0.55 * one["train"]["held_mb_per_process"]
    one_w, two_w = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    assert sorted(one_w) == sorted(two_w)
    # float rounding only (the gradients are reduced in another order); the training moved them far more
    assert max((one_w[k] - two_w[k]).abs().max().item() for k in one_w) < 1e-5
    base_w = load_file(tmp_path / "base" / "model.safetensors")
    assert max((one_w[k] - base_w[k]).abs().max().item() for k in one_w) > 1e-4


def test_a_sharded_kl_baseline_in_bf16_keeps_the_checkpoint_dtype_and_verifies(tmp_path):
    """NPO+KL with the reference sharded too, bf16 compute over fp32 master shards of a bf16
    checkpoint: saved once, in bf16, and its ledger holds."""
    from safetensors.torch import load_file

    run = _torchrun(["forget", "--method", "npo+kl", *_unlearning(tmp_path), "--fsdp", "--bf16", "--dtype", "bfloat16"])
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "unierase_manifest.json").read_text())
    assert manifest["train"]["engine"] == "fsdp2" and manifest["reference"] == "frozen copy of the start model"
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {__import__("torch").bfloat16}
    assert main(["verify", str(tmp_path / "out")]) == 0
