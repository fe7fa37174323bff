from tiny_models import build_model, build_tokenizer

from unierase import demo


def test_unedited_answers_are_computed_once_per_model_and_question_list(tmp_path, monkeypatch):
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    first = demo._base_answers(model, tok, questions, tmp_path)
    assert len(list((tmp_path / "demo").glob("*/base_answers.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cached answers should have been used")

    monkeypatch.setattr(demo, "snapshot", fail)
    again = demo._base_answers(model, tok, questions, tmp_path)
    assert again == first
    # another question list is another cache entry
    monkeypatch.undo()
    other = demo._base_answers(model, tok, questions[:1], tmp_path)
    assert other.questions == questions[:1]
    assert len(list((tmp_path / "demo").glob("*/base_answers.json"))) == 2
