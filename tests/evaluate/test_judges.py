"""Judges: position bias and accuracy on hand-counted verdicts, the bias injections, the prompted judge against a
direct forward pass, the reward judge, and `evaluate_judge` end to end."""

import json

import pytest
import torch

from alignlab.errors import ConfigError, DataError
from alignlab.evaluate.judge_bias import (
    AUTHORITY_CUE,
    DISTRACTION_CUE,
    REFLECTION_CUE,
    Presentation,
    authority,
    bandwagon,
    distraction,
    favoured_position,
    position_bias,
    preference_accuracy,
    reflection,
    robustness,
)
from alignlab.evaluate.judges import PromptedJudge, RewardJudge, evaluate_judge, verdicts_from_margins
from alignlab.rewards import build
from tests.conftest import random_llama, write_records


@pytest.fixture(scope="module")
def judge_model_dir(tmp_path_factory, tokenizer):
    """A small random Llama with room for judge prompts (512 positions), saved with the embedded tokenizer."""
    folder = tmp_path_factory.mktemp("judge-model")
    model = random_llama(len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_judge_that_always_says_first_is_never_consistent():
    bias = position_bias(["first"] * 5, ["first"] * 5)
    assert (bias.pairs, bias.consistent, bias.primacy_pairs, bias.recency_pairs) == (5, 0, 5, 0)
    assert bias.consistency == 0.0 and bias.primacy == 1.0 and bias.recency == 0.0
    always_second = position_bias(["second"] * 3, ["second"] * 3)
    assert always_second.consistency == 0.0 and always_second.recency == 1.0 and always_second.primacy == 0.0


def test_an_order_invariant_judge_is_always_consistent():
    def longer_wins(first: str, second: str) -> str:  # looks at content only, never at the position
        return "first" if len(first) > len(second) else "second" if len(second) > len(first) else "tie"

    pairs = [("short", "a longer one"), ("the longest answer here", "mid"), ("same", "size")]
    ab = [longer_wins(a, b) for a, b in pairs]
    ba = [longer_wins(b, a) for a, b in pairs]
    bias = position_bias(ab, ba)
    assert bias.consistency == 1.0 and bias.consistent == 3
    assert bias.primacy is None and bias.recency is None  # no inconsistent pair to divide by


def test_position_bias_and_accuracy_hand_counted():
    ab = ["first", "second", "first", "tie", "second", "tie"]
    ba = ["second", "first", "first", "first", "second", "tie"]
    # consistent: pairs 0, 1, 5; primacy: pair 2; recency: pair 4; a tie in one order only: pair 3
    bias = position_bias(ab, ba)
    assert (bias.consistent, bias.primacy_pairs, bias.recency_pairs, bias.tie_mismatch_pairs) == (3, 1, 1, 1)
    assert bias.consistency == pytest.approx(0.5)
    assert bias.primacy == pytest.approx(1 / 3) and bias.recency == pytest.approx(1 / 3)
    # A (chosen) wins (A, B) at 0 and 2, and (B, A) at 0 and 4: 4 of 12 presentations; both orders only pair 0
    accuracy = preference_accuracy(ab, ba)
    assert accuracy.presentations == 12
    assert accuracy.accuracy == pytest.approx(4 / 12) and accuracy.both_orders == pytest.approx(1 / 6)
    assert accuracy.ties == pytest.approx(3 / 12)


def test_verdicts_are_checked():
    with pytest.raises(ValueError, match="unknown verdicts"):
        position_bias(["first", "A"], ["second", "first"])
    with pytest.raises(ValueError, match="2 verdicts"):
        preference_accuracy(["first", "tie"], ["second"])
    empty = position_bias([], [])
    assert empty.consistency is None and empty.pairs == 0


def test_injections_favour_one_response_and_leave_the_original_alone():
    shown = Presentation("Which fruit is yellow?", "A banana.", "A plum.")
    cued = bandwagon(shown, "second")
    assert cued.first == shown.first and cued.second == shown.second
    assert cued.question.startswith(shown.question) and "90%" in cued.question and "the second one" in cued.question
    assert authority(shown, "first") == Presentation(shown.question, f"A banana.\n\n{AUTHORITY_CUE}", "A plum.")
    assert reflection(shown, "second") == Presentation(shown.question, "A banana.", f"A plum.\n\n{REFLECTION_CUE}")
    # distraction goes to the response that is not favoured
    assert distraction(shown, "second") == Presentation(shown.question, f"A banana.\n\n{DISTRACTION_CUE}", "A plum.")
    assert shown == Presentation("Which fruit is yellow?", "A banana.", "A plum.")
    with pytest.raises(ValueError):
        authority(shown, "third")


def test_favoured_position_and_robustness_hand_counted():
    assert [favoured_position(v) for v in ("first", "second", "tie")] == ["second", "first", "second"]
    assert favoured_position("first", "first") == "first"
    before = ["first", "second", "tie", "first"]
    after = ["first", "first", "tie", "second"]
    favoured = ["second", "first", "second", "second"]
    result = robustness(before, after, favoured)
    # unchanged at 0 and 2; moved to the favoured response at 1 and 3
    assert (result.presentations, result.unchanged) == (4, 2)
    assert result.robustness == 0.5 and result.followed == 0.5


def test_verdicts_from_margins_with_a_tie_margin():
    margins = torch.tensor([0.3, -0.3, 0.1, -0.1, 0.0], dtype=torch.float64)
    assert verdicts_from_margins(margins, 0.1) == ["first", "second", "tie", "tie", "tie"]
    assert verdicts_from_margins(margins) == ["first", "second", "first", "second", "tie"]


def test_prompted_judge_compares_next_token_logprobs_of_a_and_b(tokenizer):
    model = random_llama(len(tokenizer), max_position_embeddings=512)
    judge = PromptedJudge(model, tokenizer, batch_size=2)
    questions = ["Which is a colour?", "Name a fruit.", "What is two plus two?"]
    firsts = ["Blue.", "A chair.", "Four."]
    seconds = ["A spoon.", "An apple, which is sweet.", "Five."]
    margins = judge.margins(questions, firsts, seconds)
    token_a, token_b = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (" A", " B"))
    assert len(token_a) == len(token_b) == 1
    for i, (q, a, b) in enumerate(zip(questions, firsts, seconds, strict=True)):
        ids = tokenizer(judge.render(q, a, b), add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            logps = model(input_ids=torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        assert margins[i].item() == pytest.approx((logps[token_a[0]] - logps[token_b[0]]).item(), abs=1e-4)
    expected = ["first" if m > 0 else "second" for m in margins.tolist()]
    assert judge.judge(questions, firsts, seconds) == expected
    wide = PromptedJudge(model, tokenizer, tie_margin=float(margins.abs().max()) + 1.0)
    assert wide.judge(questions, firsts, seconds) == ["tie"] * 3
    # in a chat turn the answer starts the assistant's message: "A" and "B" without a space
    chat = PromptedJudge(model, tokenizer, chat=True)
    assert chat.choices == ("A", "B")
    message = {"role": "user", "content": chat.render(questions[0], firsts[0], seconds[0])}
    text = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        logps = model(input_ids=torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in ("A", "B"))
    assert chat.margins(questions[:1], firsts[:1], seconds[:1]).item() == pytest.approx((logps[a] - logps[b]).item(),
                                                                                        abs=1e-4)


class Unsplit(torch.nn.Module):
    """A causal LM whose head the engine cannot split off: it scores whole rows (another layout)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **inputs):
        return self.inner(**inputs)


def test_answer_log_probs_are_the_same_in_every_layout(tokenizer):
    from alignlab.evaluate.judges import answer_logps

    model = random_llama(len(tokenizer), max_position_embeddings=512)
    prompts = [[5, 6, 7, 8], [9, 10]]
    packed = answer_logps(model, prompts, (11, 12), tokenizer.pad_token_id)
    rows = answer_logps(Unsplit(model), prompts, (11, 12), tokenizer.pad_token_id)
    with torch.no_grad():
        expected = [model(input_ids=torch.tensor([p])).logits[0, -1].log_softmax(-1)[[11, 12]] for p in prompts]
    assert torch.allclose(packed, torch.stack(expected), atol=1e-5)
    assert torch.allclose(rows, packed, atol=1e-5)


def test_prompted_judge_refuses_answers_that_are_not_one_token(tokenizer):
    assert len(tokenizer(" Yes", add_special_tokens=False)["input_ids"]) > 1  # in the embedded vocabulary
    with pytest.raises(ConfigError, match="not one token"):
        PromptedJudge(None, tokenizer, choices=(" Yes", " No"))
    with pytest.raises(ConfigError, match="share a token"):
        PromptedJudge(None, tokenizer, choices=(" A", " A"))
    with pytest.raises(ConfigError, match=r"missing field\(s\) \['second'\]"):
        PromptedJudge(None, tokenizer, template="{question} {first} Answer:")
    with pytest.raises(ConfigError, match="unknown field"):
        PromptedJudge(None, tokenizer, template="{question} {first} {second} {extra} Answer:")


def test_reward_judge_larger_score_wins_and_equal_is_a_tie():
    judge = RewardJudge(build("keywords", include=["good"]))
    verdicts = judge.judge(["q"] * 3, ["a good one", "meh", "plain"], ["meh", "so good", "plain too"])
    assert verdicts == ["first", "second", "tie"]
    assert judge.margins(["q"], ["good"], ["bad"]).tolist() == [1.0]


KEYWORD_PAIRS = [
    {"prompt": "Describe the soup.", "chosen": "A good, warm soup.", "rejected": "A cold soup."},
    {"prompt": "Rate the film.", "chosen": "Good.", "rejected": "Bad."},
    {"prompt": "How was the trip?", "chosen": "Very good indeed.", "rejected": "Long."},
    {"prompt": "Say something.", "chosen": "Plain words.", "rejected": "Other plain words."},
]


def test_evaluate_judge_with_a_reward_hand_counted(tmp_path):
    data = write_records(tmp_path / "pairs.jsonl", KEYWORD_PAIRS)
    # the judge counts 'good' and 'reflection': the reflection cue contains the second word, the others neither
    result = evaluate_judge(str(data), str(tmp_path / "out"), reward={"name": "keywords",
                            "include": ["good", "reflection"]}, progress=False, log=lambda *_: None)
    # (A, B): first, first, first, tie; (B, A): second, second, second, tie
    assert result["counts"]["ab"] == {"first": 3, "second": 0, "tie": 1}
    assert result["counts"]["ba"] == {"first": 0, "second": 3, "tie": 1}
    assert result["consistency"] == 1.0 and result["primacy"] is None and result["recency"] is None
    assert result["accuracy"] == 0.75 and result["accuracy_both_orders"] == 0.75 and result["ties"] == 0.25
    assert result["robustness"] == {"bandwagon": 1.0, "authority": 1.0, "distraction": 1.0, "reflection": 0.0}
    # the reflection cue turns the 6 wins into ties and the 2 ties into wins of the favoured (second) response
    assert result["followed"]["reflection"] == 0.25
    rows = [json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()]
    assert [r["chosen_wins"] for r in rows] == [2, 2, 2, 0]
    assert rows[3]["reflection"] == {"ab": "second", "ba": "second", "favoured_ab": "second", "favoured_ba": "second"}
    assert rows[0]["location"].endswith("pairs.jsonl:line 1")


def test_evaluate_judge_end_to_end_on_a_small_model(tmp_path, judge_model_dir):
    data = write_records(tmp_path / "pairs.jsonl", KEYWORD_PAIRS[:3])
    out = tmp_path / "judge"
    lines = []
    result = evaluate_judge(str(data), str(out), model=str(judge_model_dir), biases=["bandwagon", "reflection"],
                            batch_size=4, progress=False, log=lines.append)
    saved = json.loads((out / "result.json").read_text())
    assert saved == result
    assert (out / "judges.png").stat().st_size > 0
    assert (out / "report.html").exists()
    assert result["pairs"] == 3 and result["judge"] == "prompted" and result["settings"]["choices"] == [" A", " B"]
    for key in ("consistency", "primacy", "recency", "accuracy", "robustness", "counts"):
        assert key in result
    assert set(result["robustness"]) == {"bandwagon", "reflection"}
    rows = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert result["consistency"] == pytest.approx(sum(r["consistent"] for r in rows) / 3)
    assert result["accuracy"] == pytest.approx(sum(r["chosen_wins"] for r in rows) / 6)
    for row in rows:  # a verdict follows the sign of its margin (tie margin 0)
        assert row["ab"] == ("first" if row["margin_ab"] > 0 else "second" if row["margin_ab"] < 0 else "tie")
    unchanged = sum((r["bandwagon"]["ab"] == r["ab"]) + (r["bandwagon"]["ba"] == r["ba"]) for r in rows)
    assert result["robustness"]["bandwagon"] == pytest.approx(unchanged / 6)
    assert result["truncated_prompts"] == 0 and "pairs judged" in lines[-1]


def test_evaluate_judge_names_the_bad_record_and_writes_nothing(tmp_path):
    data = write_records(tmp_path / "pairs.jsonl", [KEYWORD_PAIRS[0], {"prompt": "p", "chosen": "c"}])
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        evaluate_judge(str(data), str(out), reward="length", progress=False)
    assert error.value.source == str(data) and error.value.location == "line 2" and error.value.field == "rejected"
    assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no records"):
        evaluate_judge(str(empty), str(out), reward="length", progress=False)
    messages = write_records(tmp_path / "chat.jsonl", [{"prompt": "p", "chosen": [{"role": "assistant",
                                                        "content": "x"}], "rejected": "y"}])
    with pytest.raises(DataError, match="expected a string"):
        evaluate_judge(str(messages), str(out), reward="length", progress=False)
    assert not out.exists()


def test_evaluate_judge_checks_its_settings_first(tmp_path):
    data = write_records(tmp_path / "pairs.jsonl", KEYWORD_PAIRS)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate_judge(str(data), str(out), progress=False)
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate_judge(str(data), str(out), model="m", reward="length", progress=False)
    with pytest.raises(ConfigError, match="unknown bias"):
        evaluate_judge(str(data), str(out), reward="length", biases=["flattery"], progress=False)
    with pytest.raises(ConfigError, match="tie_margin"):
        evaluate_judge(str(data), str(out), reward="length", tie_margin=-1.0, progress=False)
    with pytest.raises(ConfigError, match="favour"):
        evaluate_judge(str(data), str(out), reward="length", favour="chosen", progress=False)
    with pytest.raises(ConfigError, match="unknown reward"):
        evaluate_judge(str(data), str(out), reward="no-such-reward", progress=False)
    assert not out.exists()
