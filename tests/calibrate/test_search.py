from unierase.calibrate.search import MARGIN, better, merged, score, stages

GOOD = {"forget": 1.0, "known_still_correct": 1.0, "teacher_forced_agreement": 0.97, "rewordings": 0.5, "token_ban": 0.1,
        "well_formed_refusals": 1.0, "token_in_other_answers": 0.0, "seconds_per_request": 2.0}


def trial(**changes):
    fig = {**GOOD, **changes}
    return {"figures": fig, "score": score(fig)}


def test_keeping_the_rest_of_the_model_comes_before_a_higher_score():
    wrecks = trial(teacher_forced_agreement=0.5, rewordings=0.0, token_ban=0.0)
    assert wrecks["score"] > trial()["score"] - 1  # it may even score near the careful one
    assert not better(wrecks, trial()) and better(trial(), wrecks)


def test_erasing_comes_before_keeping_the_rest_of_the_model():
    """Gemma's calibration at stop 46 kept a threshold that erased 5 of 12 facts because it alone met
    the locality bounds; a setting that stops erasing must not win on locality."""
    erases_and_spills = trial(known_still_correct=0.86, teacher_forced_agreement=0.93)
    keeps_but_barely_erases = trial(forget=0.42, well_formed_refusals=0.42)
    assert better(erases_and_spills, keeps_but_barely_erases)
    assert not better(keeps_but_barely_erases, erases_and_spills)


def test_a_change_must_beat_the_current_recipe_by_more_than_the_margin():
    current = trial()
    assert not better(trial(rewordings=0.5 - MARGIN / 2), current)
    assert better(trial(rewordings=0.5 - 2 * MARGIN), current)


def test_candidates_merge_over_the_best_so_far_and_layers_are_tried_only_when_they_differ():
    assert merged({"values": {"steps": 20}, "ridge": 0.2}, {"values": {"lr": 0.5}}) == \
        {"values": {"steps": 20, "lr": 0.5}, "ridge": 0.2}
    five = [4, 5, 6, 7, 8]
    assert stages(five, five, 30)[0].candidates == []
    assert stages([2, 3, 4, 5, 6], five, 30)[0].candidates == [{"layers": [2, 3, 4, 5, 6]}]
    # a default narrower than five layers is also tried widened, within the model's depth
    assert stages([3, 4, 5], [2, 3, 4], 18)[0].candidates == [{"layers": [3, 4, 5]}, {"layers": [2, 3, 4, 5, 6]}]
    assert stages([2, 3], [2, 3], 4)[0].candidates == []  # no room below the last layer
    assert stages([1, 2], [1, 2], 6)[0].candidates == [{"layers": [1, 2, 3, 4, 5]}]
