"""Anyprefer (Zhou et al., ICLR 2025): the round loop with deterministic stub players, the pair choice, the
rotating feedback, the toy's genre tool and lexicon judge, and the examples shipped for the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.data.anyprefer import (
    DEFAULT_CANDIDATES,
    DEFAULT_MAX_ROUNDS,
    GENRES,
    FeedbackState,
    PairResult,
    anyprefer_pair,
    best_and_worst,
    contradictions,
    genre_facts,
    judge_margin,
    judge_penalty,
    lexicon_judge,
    pair_record,
    rotate_feedback,
)
from alignlab.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
X = 'Write a review of the horror film "The Long Night".'


def echo_generate(prompt: str, x: str, count: int) -> list[str]:
    """Candidate i under prompt p is "p|i": the prompt is readable back from every candidate."""
    return [f"{prompt}|{i}" for i in range(count)]


def spread_judge(spreads: dict[str, float]):
    """Scores candidate i of target prompt p as i · spreads[p] (so the margin is (C−1) · spreads[p])."""
    def judge(x, candidates, judge_prompt, knowledge):
        return [int(y.split("|")[1]) * spreads[y.split("|")[0]] for y in candidates]
    return judge


def run(spreads: dict[str, float], threshold: float, **kwargs) -> PairResult:
    prompts = kwargs.pop("target_prompts", list(spreads))
    return anyprefer_pair(X, prompts, kwargs.pop("judge_prompts", ["j0"]), echo_generate, [], spread_judge(spreads),
                          judge_margin, threshold, **kwargs)


def test_defaults_match_the_reimplementation():
    assert (DEFAULT_CANDIDATES, DEFAULT_MAX_ROUNDS) == (5, 3)


def test_accepted_on_round_one_when_the_reward_reaches_the_threshold():
    result = run({"a": 2.0, "b": 9.0}, threshold=8.0)  # C = 5: scores 0,2,4,6,8 → R = 8 ≥ 8
    assert (result.accepted, result.rounds, result.reward) == (True, 1, 8.0)
    assert (result.chosen, result.rejected) == ("a|4", "a|0")
    assert (result.target_prompt, result.judge_prompt) == ("a", "j0")
    assert result.history == [{"round": 1, "target_index": 0, "judge_index": 0, "scores": [0.0, 2.0, 4.0, 6.0, 8.0],
                               "chosen_index": 4, "rejected_index": 0, "reward": 8.0}]


def test_feedback_rotates_and_the_first_accepted_round_is_returned():
    result = run({"a": 1.0, "b": 1.5, "c": 3.0, "d": 5.0}, threshold=8.0, max_rounds=4)
    # margins 4, 6, 12: the third prompt is the first to reach 8; "d" (20) is never tried
    assert (result.accepted, result.rounds, result.reward, result.target_prompt) == (True, 3, 12.0, "c")
    assert (result.chosen, result.rejected) == ("c|4", "c|0")
    assert [entry["target_index"] for entry in result.history] == [0, 1, 2]
    assert [entry["reward"] for entry in result.history] == [4.0, 6.0, 12.0]


def test_max_rounds_respected_and_the_best_round_kept_when_none_is_accepted():
    calls = []

    def generate(prompt, x, count):
        calls.append(prompt)
        return echo_generate(prompt, x, count)

    result = anyprefer_pair(X, ["a", "b", "c", "d"], ["j0"], generate, [], spread_judge(
        {"a": 1.0, "b": 1.5, "c": 1.0, "d": 9.0}), judge_margin, threshold=8.0, candidates=3, max_rounds=3)
    assert calls == ["a", "b", "c"]  # margins 2, 3, 2
    assert (result.accepted, result.rounds, result.reward) == (False, 3, 3.0)
    assert (result.chosen, result.rejected, result.target_prompt) == ("b|2", "b|0", "b")
    assert pair_record(result) == {"prompt": X, "chosen": "b|2", "rejected": "b|0", "reward": 3.0, "accepted": False,
                                   "rounds": 3, "target_prompt": "b", "judge_prompt": "j0"}


def test_best_round_ties_go_to_the_earliest_round():
    result = run({"a": 1.0, "b": 1.0}, threshold=100.0, max_rounds=2)
    assert (result.target_prompt, result.rounds, result.accepted) == ("a", 2, False)


def test_tools_run_once_and_their_knowledge_reaches_the_judge():
    seen, tool_calls = [], []

    def tool(x):
        tool_calls.append(x)
        return {"genre": "horror"}

    def judge(x, candidates, judge_prompt, knowledge):
        seen.append((judge_prompt, knowledge))
        return [0.0] * (len(candidates) - 1) + [1.0]

    anyprefer_pair(X, ["a"], ["j0", "j1"], echo_generate, [tool, str.upper], judge, judge_margin, 5.0, max_rounds=2)
    assert tool_calls == [X]
    assert seen == [("j0", [{"genre": "horror"}, X.upper()]), ("j1", [{"genre": "horror"}, X.upper()])]


def test_custom_feedback_receives_the_round_state():
    states = []

    def feedback(state):
        states.append(state)
        return 0, 1

    run({"a": 1.0}, threshold=8.0, judge_prompts=["j0", "j1"], candidates=2, max_rounds=2, feedback=feedback)
    assert states == [FeedbackState(round=1, target_index=0, judge_index=0, reward=1.0, n_target_prompts=1,
                                    n_judge_prompts=2, scores=[0.0, 1.0])]


def test_feedback_outside_the_prompt_lists_is_a_config_error():
    with pytest.raises(ConfigError, match="outside"):
        run({"a": 1.0}, threshold=8.0, max_rounds=2, feedback=lambda state: (1, 0))


def test_rounds_without_a_usable_pair_are_counted_not_scored():
    def same(prompt, x, count):
        return ["same"] * count if prompt == "a" else echo_generate(prompt, x, count)

    rewards = []
    result = anyprefer_pair(X, ["a", "b"], ["j"], same, [], lambda x, ys, p, q: [float(i) for i in range(len(ys))],
                            judge_margin, 8.0, max_rounds=2,
                            feedback=lambda state: rewards.append(state.reward) or rotate_feedback(state))
    assert rewards == [float("-inf")]
    assert result.history[0]["reward"] is None and result.history[0]["chosen_index"] is None
    assert (result.degenerate_rounds, result.chosen, result.reward, result.accepted) == (1, "b|4", 4.0, False)


def test_no_usable_pair_in_any_round():
    result = anyprefer_pair(X, ["a"], ["j"], lambda p, x, c: ["same"] * c, [], lambda x, ys, p, q: [1.0] * len(ys),
                            judge_margin, 0.0, max_rounds=2)
    assert (result.chosen, result.rejected, result.accepted, result.degenerate_rounds) == (None, None, False, 2)
    assert result.reward == float("-inf") and pair_record(result)["reward"] is None


@pytest.mark.parametrize(("candidates", "scores", "expected"), [
    (["a", "b", "c"], [1.0, 3.0, 2.0], (1, 0)),
    (["a", "b", "c", "d"], [2.0, 5.0, 5.0, 2.0], (1, 0)),  # ties: first index at both ends
    (["a", "b", "c"], [1.0, 1.0, 1.0], None),  # all equal: y⁺ = y⁻
    (["same", "same"], [2.0, 1.0], None),  # identical texts
    (["a", "b", "a"], [3.0, 2.0, 1.0], None),  # best and worst are the same text
    (["only"], [1.0], None),
    ([], [], None),
])
def test_best_and_worst(candidates, scores, expected):
    assert best_and_worst(candidates, scores) == expected


def test_best_and_worst_rejects_mismatched_or_nan_scores():
    with pytest.raises(ConfigError, match="2 scores for 3 candidates"):
        best_and_worst(["a", "b", "c"], [1.0, 2.0])
    with pytest.raises(ConfigError, match="NaN"):
        best_and_worst(["a", "b"], [1.0, float("nan")])


def feedback_state(target: int, judge: int, n_target: int, n_judge: int) -> FeedbackState:
    return FeedbackState(1, target, judge, 0.0, n_target, n_judge, [])


def test_rotate_feedback_is_an_odometer():
    order, indices = [(0, 0)], (0, 0)
    for _ in range(6):
        indices = rotate_feedback(feedback_state(*indices, 3, 2))
        order.append(indices)
    assert order == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 0)]
    assert rotate_feedback(feedback_state(0, 0, 1, 3)) == (0, 1)  # one target prompt: the judge's moves each round
    assert rotate_feedback(feedback_state(0, 0, 1, 1)) == (0, 0)


def test_judge_margin():
    assert judge_margin(X, "y+", "y-", [0.25, -0.5, 1.0]) == 1.5
    with pytest.raises(ConfigError):
        judge_margin(X, "y+", "y-", [])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"candidates": 1}, "at least 2 candidates"),
    ({"max_rounds": 0}, "max_rounds of at least 1"),
    ({"target_prompts": []}, "at least one target prompt"),
    ({"judge_prompts": []}, "at least one judge prompt"),
])
def test_bad_settings_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as raised:
        run({"a": 1.0}, threshold=8.0, **kwargs)
    assert "\n" not in str(raised.value)


def test_nan_threshold_or_reward_is_a_config_error():
    with pytest.raises(ConfigError, match="threshold"):
        run({"a": 1.0}, threshold=float("nan"))
    with pytest.raises(ConfigError, match="NaN"):
        anyprefer_pair(X, ["a"], ["j"], echo_generate, [], spread_judge({"a": 1.0}),
                       lambda x, yp, ym, s: float("nan"), 1.0)


@pytest.mark.parametrize(("instruction", "facts"), [
    (X, {"genre": "horror", "title": "The Long Night"}),
    ('Write a review of the Western film "Comedy of Errors at Dawn".', {"genre": "western",
                                                                          "title": "Comedy of Errors at Dawn"}),
    ("Write a review of a dramatic film.", {"genre": None, "title": None}),
    ('Review "Untitled".', {"genre": None, "title": "Untitled"}),
])
def test_genre_facts(instruction, facts):
    assert genre_facts(instruction) == facts


@pytest.mark.parametrize(("response", "count"), [
    ("A terrifying horror film.", 0),
    ("Part horror, part Comedy, and a little romance.", 2),
    ("A dramatic, thrilling ride.", 0),  # whole words only: "dramatic" is not "drama"
    ("Too much drama; drama everywhere.", 2),  # every mention counts
    ("The Long Night of Comedy was not a comedy.", 2),
    ("A horror-comedy.", 1),
])
def test_contradictions(response, count):
    assert contradictions(response, {"genre": "horror", "title": "The Long Night"}) == count


def test_contradictions_skip_the_title_and_unknown_genres():
    facts = {"genre": "horror", "title": "The Western Sky"}
    assert contradictions("The Western Sky is a western-free horror.", facts) == 1
    assert contradictions("A comedy and a drama.", {"genre": None, "title": None}) == 0


def fixed_sentiment(texts: list[str]) -> list[float]:
    return [0.9 if "great" in text else 0.1 for text in texts]


def test_lexicon_judge_by_hand():
    judge = lexicon_judge(fixed_sentiment, penalty=0.5)
    candidates = ["A great horror film.", "A great comedy, a great drama.", "A dull horror film."]
    knowledge = [genre_facts(X)]
    assert judge(X, candidates, "be strict", knowledge) == pytest.approx([0.9, 0.9 - 2 * 0.5, 0.1])
    assert judge(X, candidates, "0.25", knowledge) == pytest.approx([0.9, 0.9 - 2 * 0.25, 0.1])
    assert judge(X, candidates, "anything", []) == pytest.approx([0.9, 0.9, 0.1])  # no tool facts: no penalty


def test_lexicon_judge_rejects_bad_penalties_and_sentiment_counts():
    with pytest.raises(ConfigError, match="penalty"):
        lexicon_judge(fixed_sentiment, penalty=-1.0)
    with pytest.raises(ConfigError, match="penalty"):
        judge_penalty("-2", 0.5)
    with pytest.raises(ConfigError, match="1 scores for 2 texts"):
        lexicon_judge(lambda texts: [0.0])(X, ["a", "b"], "", [])


def test_the_toy_end_to_end():
    """Prompt "mixed" yields genre-confused candidates (margin 0.5 under penalty 0.5); "clean" yields one great and
    one dull review (margin 0.8): with threshold 0.6 feedback moves to "clean" and round 2 is accepted."""
    outputs = {"mixed": ["A great horror film.", "A great horror comedy."],
               "clean": ["A great horror film.", "A dull horror film."]}
    result = anyprefer_pair(X, ["mixed", "clean"], ["0.5"], lambda p, x, c: outputs[p][:c], [genre_facts],
                            lexicon_judge(fixed_sentiment), judge_margin, threshold=0.6, candidates=2)
    assert (result.accepted, result.rounds, result.target_prompt) == (True, 2, "clean")
    assert (result.chosen, result.rejected, result.reward) == ("A great horror film.", "A dull horror film.",
                                                               pytest.approx(0.8))
    assert result.history[0]["reward"] == pytest.approx(0.5)


def test_shipped_examples_parse():
    records = [json.loads(line) for line in (EXAMPLES / "film_prompts.jsonl").read_text().splitlines()]
    facts = [genre_facts(record["prompt"]) for record in records]
    assert len(records) >= 20 and all(fact["genre"] in GENRES and fact["title"] for fact in facts)
    assert all(contradictions(fact["title"], {"genre": fact["genre"], "title": None}) == 0 for fact in facts)
    assert {fact["genre"] for fact in facts} == set(GENRES)
    prompts = [line for line in (EXAMPLES / "target_prompts.txt").read_text().splitlines() if line.strip()]
    assert len(prompts) >= 3
