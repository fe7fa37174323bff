"""Several processes (torch.distributed with gloo on the CPU, as ``accelerate launch``/``torchrun``
start them): the key statistics shared among 2 processes equal one process's."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from unierase.cli import main
from tiny_models import save_tiny_model

FAST = ["--stats-tokens", "3000", "--no-progress"]


def _entry(cache):
    (folder,) = [p for p in (cache / "stats").iterdir() if p.is_dir()]
    return folder, {p.name: load_file(p) for p in sorted(folder.glob("layer*.safetensors"))}


def test_statistics_over_two_processes_equal_one_process(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    assert main(["stats", "--model", str(model), "--cache-dir", str(tmp_path / "one"), *FAST]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "unierase", "-q", "stats", "--model", str(model), "--cache-dir", str(tmp_path / "two"), *FAST],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count('"processes": 2') == 1, run.stdout  # only the first process reports (and writes)
    (one_folder, one), (two_folder, two) = _entry(tmp_path / "one"), _entry(tmp_path / "two")
    assert one_folder.name == two_folder.name and one.keys() == two.keys()  # the same cache entry
    for name in one:
        for key, value in one[name].items():
            other = two[name][key]
            if key.endswith("count"):
                assert torch.equal(value, other), (name, key, value, other)
            else:  # the same keys summed in other batches and order: fp32 products, fp64 sums
                error = float((other - value).norm() / value.norm())
                assert error < 1e-5, (name, key, error)


def test_other_verbs_refuse_several_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["ask", "What is the capital of France?"]) == 2
    assert "runs in one process" in capsys.readouterr().err
