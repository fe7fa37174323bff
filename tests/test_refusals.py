import pytest

from unierase.refusals import (STRAY_TOKENS, answer_checks, holds_token, is_chosen_refusal, is_well_formed_refusal,
                               repeats_token)

REFUSAL = "I'm sorry, I can't help with that."


def test_chosen_refusal_is_exact_up_to_whitespace():
    assert is_chosen_refusal("  I'm sorry,  I can't help with that.\n", REFUSAL)
    assert not is_chosen_refusal("I'm sorry, I can't help with that. I'm sorry.", REFUSAL)
    assert not is_chosen_refusal("I'm sorry, I can't help with this.", REFUSAL)


def test_the_token_counts_anywhere_within_the_window_and_not_after_it():
    token = 7
    assert holds_token([1, 2, token], token)
    assert not holds_token([1] * STRAY_TOKENS + [token], token)
    assert not holds_token([1, 2, token], None)
    assert repeats_token([token, 3, token], token) and not repeats_token([token, 3, 4], token)


def test_answer_checks_share_each_check_and_leave_out_what_cannot_be_computed():
    token = 7
    checks = answer_checks([REFUSAL, "I'm sorry, but.", "Paris."], refusal=REFUSAL,
                           erased_ids=[[token, 1], [token, 2, token], [3]],
                           other_ids=[[1, 2], [1, token], [4], [5]], token_id=token)
    assert checks["chosen_refusal"] == round(1 / 3, 4) and checks["well_formed_refusals"] == round(1 / 3, 4)
    assert checks["token_repeated"] == round(1 / 3, 4) and checks["token_in_other_answers"] == 0.25
    bare = answer_checks(["I don't know."])
    assert bare["chosen_refusal"] is None and bare["token_in_other_answers"] is None and bare["well_formed_refusals"] == 1.0


@pytest.mark.parametrize("text,ok", [
    ("I'm sorry, but I don't have that information.", True),
    ("I'm sorry, but I'm sorry.", False),
    ("I'm sorry, but.", False),
    ("I,", False),
    ("Paris is the capital of France.", False),
    ("I don't know that. I don't know that.", False),
])
def test_well_formed_refusals(text, ok):
    assert is_well_formed_refusal(text) is ok
