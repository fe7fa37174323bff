import pytest

from unierase.requests import ForgetRequest, load_requests, parse_requests
from unierase.storage import UniEraseError


def write(tmp_path, text):
    path = tmp_path / "forget.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_with_blank_lines(tmp_path):
    path = write(tmp_path, '{"question": "Who wrote Hamlet?", "answer": "Shakespeare", "subject": "Hamlet"}\n\n{"question": "Q2?"}\n')
    reqs = load_requests(path)
    assert reqs == [ForgetRequest("Who wrote Hamlet?", "Shakespeare", "Hamlet"), ForgetRequest("Q2?")]
    assert reqs[0].digest() != reqs[1].digest() and len(reqs[0].digest()) == 64


@pytest.mark.parametrize("text,message", [
    ('{"question": "ok?"}\n{"question": "broken"\n', r"forget.jsonl:2: malformed JSON"),
    ('{"answer": "x"}\n', r"forget.jsonl:1: missing required field 'question'"),
    ('{"question": ""}\n', r"forget.jsonl:1: field 'question' must be a non-empty string"),
    ('{"question": "Who wrote Hamlet?", "subject": "Macbeth"}\n', r"forget.jsonl:1: field 'subject' 'Macbeth' does not occur"),
    ('["a list"]\n', r"forget.jsonl:1: expected a JSON object"),
    ('\n\n', r"contains no forget requests"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, text, message):
    with pytest.raises(UniEraseError, match=message):
        load_requests(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(UniEraseError, match="not found"):
        load_requests(tmp_path / "nope.jsonl")


def test_parse_python_items():
    assert parse_requests([{"question": "Q?"}])[0].question == "Q?"
    with pytest.raises(UniEraseError, match="item 2: missing required field 'question'"):
        parse_requests([{"question": "Q?"}, {}])
