import torch

from tiny_models import build_model, build_tokenizer
from unierase.calibrate.tracing import best_window, subject_positions, window_effects
from unierase.models.adapters import find_mlp_output

ROWS = [{"question": "What is the capital of France?", "subject": "France"},
        {"question": "Who wrote Hamlet?", "subject": "Hamlet"}]


def test_subject_positions_cover_the_subject_in_the_answered_prompt():
    tok = build_tokenizer()
    ids, span = subject_positions(tok, "What is the capital of France?", "France")
    assert span and tok.decode([ids[i] for i in span]).strip() == "France"


def test_tracing_reports_one_effect_per_window():
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    found = window_effects(model, tok, adapter, ROWS, window=2, samples=2, noise=20.0)
    assert found["starts"] == list(range(adapter.num_layers - 1)) and len(found["effects"]) == len(found["starts"])
    # without noise nothing is lost, so no fact says where the recall happens
    assert window_effects(model, tok, adapter, ROWS, window=2, samples=1, noise=0.0)["facts"] == 0


def test_the_best_window_is_the_largest_effect_and_the_earliest_of_equals_past_the_first_layer():
    assert best_window({"window": 3, "starts": [0, 1, 2, 3], "effects": [0.1, 0.4, 0.4, 0.2]}) == [1, 2, 3]
    assert best_window({"window": 3, "starts": [0, 1, 2, 3], "effects": [0.9, 0.4, 0.4, 0.2]}) == [1, 2, 3]
    assert best_window({"window": 3, "starts": [0, 1, 2, 3], "effects": [0.9, 0.4, 0.4, 0.2]}, first=0) == [0, 1, 2]
