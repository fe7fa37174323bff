"""benchmarks/gpu_check.py --tiny: the prepared GPU check's steps on tiny models on the CPU, so the
script a GPU session runs once is known to work before that session."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_runs_its_steps_on_tiny_models(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # its sibling modules, as when it runs from benchmarks/
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    record = module.main(["--tiny", "--sizes", "2", "--results", str(tmp_path / "gpu_check.json")])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["tiny"] and set(saved) >= {"edit/2", "delta", "split", "baseline", "baseline_fsdp", "commit"}
    edit = record["edit/2"]
    assert edit["requests"] == 2 and edit["timings_s"]["edit"] > 0 and edit["round_plan"]["peak_device_gib"] >= 0
    assert record["delta"]["relative_gap"] <= record["delta"]["bound"]
    assert record["split"]["relative_gap"] <= record["split"]["bound"]
    assert record["baseline"]["seconds"] > 0
    assert record["baseline_fsdp"]["seconds"] > 0 and record["baseline_fsdp"]["gathered_dtype"] == "torch.float32"
