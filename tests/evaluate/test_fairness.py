"""Group fairness: rates and gaps on hand-counted predictions, per-group FPR thresholds, the Yes/No score against a
direct forward pass, record checks, and `evaluate_fairness` end to end."""

import json
import math

import pytest
import torch

from alignlab.errors import ConfigError, DataError
from alignlab.evaluate.fairness import (
    DEFAULT_FAIRNESS_INSTRUCTION,
    disparities,
    evaluate_fairness,
    fpr_threshold,
    fpr_thresholds,
    group_rates,
    predict,
    predict_by_group,
    render_prompt,
    spread,
    yes_probability,
)
from tests.conftest import random_llama, write_records

ANSWERS = (" A", " B")
"""Yes and no answers that are single tokens in the embedded vocabulary (" Yes" and " No" are not)."""


def test_group_rates_and_gaps_hand_counted():
    labels = [1, 1, 0, 0, 0, 1, 0, 0, 0]
    predictions = [1, 0, 1, 0, 0, 1, 1, 0, 0]
    groups = ["a"] * 5 + ["b"] * 4
    by_group = group_rates(predictions, labels, groups)
    a, b = by_group["a"], by_group["b"]
    # a: 2 of 5 flagged, 1 of 2 positives, 1 of 3 negatives, 3 of 5 right
    assert (a.count, a.positives, a.negatives) == (5, 2, 3)
    assert (a.positive_rate, a.tpr, a.fpr, a.fnr, a.accuracy) == pytest.approx((0.4, 0.5, 1 / 3, 0.5, 0.6))
    # b: 2 of 4 flagged, its one positive found, 1 of 3 negatives, 3 of 4 right
    assert (b.positive_rate, b.tpr, b.fpr, b.fnr, b.accuracy) == pytest.approx((0.5, 1.0, 1 / 3, 0.0, 0.75))
    gaps = disparities(by_group)
    assert gaps["demographic_parity_difference"] == pytest.approx(0.1)
    assert gaps["tpr_gap"] == pytest.approx(0.5) and gaps["fpr_gap"] == pytest.approx(0.0)
    assert gaps["equalised_odds"] == pytest.approx(0.5)


def test_a_perfectly_fair_classifier_has_no_disparity():
    labels = [1, 0, 0, 1, 1, 0, 0, 1]
    groups = ["x", "x", "x", "x", "y", "y", "y", "y"]
    gaps = disparities(group_rates(labels, labels, groups))  # right every time, equal base rates
    assert gaps == {"demographic_parity_difference": 0.0, "tpr_gap": 0.0, "fpr_gap": 0.0, "equalised_odds": 0.0}


def test_more_than_two_groups_use_max_minus_min():
    assert spread([0.1, 0.4, None, 0.25]) == pytest.approx(0.3)
    assert spread([0.2, None]) is None and spread([]) is None
    labels = [0, 0, 0, 0, 0, 0, 0, 0, 0]
    predictions = [1, 0, 0, 1, 1, 0, 0, 0, 0]  # FPR: u 1/3, v 2/3, w 0
    gaps = disparities(group_rates(predictions, labels, ["u"] * 3 + ["v"] * 3 + ["w"] * 3))
    assert gaps["fpr_gap"] == pytest.approx(2 / 3)


def test_groups_without_positives_or_negatives_give_none_not_nan():
    labels = [0, 0, 1, 1, 1]
    predictions = [1, 0, 1, 0, 1]
    by_group = group_rates(predictions, labels, ["a", "a", "b", "b", "b"])
    assert by_group["a"].tpr is None and by_group["a"].fnr is None and by_group["a"].fpr == 0.5
    assert by_group["b"].fpr is None and by_group["b"].tpr == pytest.approx(2 / 3)
    gaps = disparities(by_group)
    assert gaps["tpr_gap"] is None and gaps["fpr_gap"] is None and gaps["equalised_odds"] is None
    assert gaps["demographic_parity_difference"] == pytest.approx(abs(0.5 - 2 / 3))
    assert not any(isinstance(v, float) and math.isnan(v) for v in gaps.values())


def test_group_thresholds_at_the_negative_quantile_give_the_target_fpr():
    negatives_a = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    negatives_b = [0.05, 0.15, 0.25, 0.35, 0.45]
    scores = [*negatives_a, 0.95, 0.3, *negatives_b, 0.5]
    labels = [0] * 10 + [1, 1] + [0] * 5 + [1]
    groups = ["a"] * 12 + ["b"] * 6
    thresholds = fpr_thresholds(scores, labels, groups, target=0.2)
    # the (1 − 0.2) quantile of each group's negatives: a's 2nd largest, b's largest
    assert thresholds == {"a": 0.9, "b": 0.45}
    assert thresholds["a"] == torch.quantile(torch.tensor(negatives_a, dtype=torch.float64), 0.8,
                                             interpolation="higher").item()
    by_group = group_rates(predict_by_group(scores, groups, thresholds, default=0.5), labels, groups)
    assert by_group["a"].fpr == pytest.approx(0.2) and by_group["b"].fpr == pytest.approx(0.2)
    # one global threshold instead: FPR 0.6 for a (0.5 … 1.0) and 0 for b
    plain = group_rates(predict(scores, 0.5), labels, groups)
    assert plain["a"].fpr == pytest.approx(0.6) and plain["b"].fpr == 0.0


def test_fpr_threshold_edges():
    assert fpr_threshold([0.2, 0.7], 0.0) > 0.7  # nothing flagged
    assert fpr_threshold([0.2, 0.7], 1.0) == 0.2  # everything flagged
    assert fpr_threshold([0.1, 0.2, 0.3], 0.5) == 0.3  # ⌊1.5⌋ = 1 flagged: FPR 1/3, not above the target
    assert fpr_threshold([], 0.1) is None
    thresholds = fpr_thresholds([0.9, 0.2, 0.8], [1, 0, 1], ["a", "b", "a"], 0.5)
    assert thresholds == {"a": None, "b": fpr_threshold([0.2], 0.5)}
    assert predict_by_group([0.9, 0.2, 0.8], ["a", "b", "a"], {"a": None, "b": 0.1}, default=0.85) == [1, 1, 0]


def test_render_prompt_puts_the_instruction_first():
    assert render_prompt("Text: {text}\n{question}", "hello", "Rude?") == "Text: hello\nRude?"
    assert render_prompt("{text}", "hi", "q", "Be fair.") == "Be fair.\n\nhi"


def test_yes_probability_matches_a_direct_forward_pass(tokenizer):
    model = random_llama(len(tokenizer))
    texts = ["What a lovely day.", "Go away, nobody asked you.", "The bus was late again."]
    scores = yes_probability(model, tokenizer, texts, question="Is this rude?", batch_size=2, answers=ANSWERS)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    yes, no = (tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS)
    for i, text in enumerate(texts):
        prompt = f"Comment: {text}\n\nQuestion: Is this rude? Answer Yes or No.\nAnswer:"
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0, -1].double().softmax(-1)
        assert scores[i].item() == pytest.approx((probs[yes] / (probs[yes] + probs[no])).item(), abs=1e-5)
    with pytest.raises(ConfigError, match="not one token"):
        yes_probability(model, tokenizer, texts)  # " Yes" is several tokens in this vocabulary
    with pytest.raises(ConfigError, match="text"):
        yes_probability(model, tokenizer, texts, template="{question} Answer:", answers=ANSWERS)


COMMENTS = [
    {"text": "Thanks, that was helpful.", "group": "north", "label": 0},
    {"text": "Nobody wants your opinion.", "group": "north", "label": 1},
    {"text": "Lovely photo of the bridge.", "group": "north", "label": 0},
    {"text": "Stop posting, you are useless.", "group": "south", "label": 1},
    {"text": "Where is the market today?", "group": "south", "label": 0},
    {"text": "Great recipe, thank you.", "group": "south", "label": 0},
]


def test_evaluate_fairness_end_to_end(tmp_path, small_model_dir):
    data = write_records(tmp_path / "comments.jsonl", COMMENTS)
    out = tmp_path / "fairness"
    lines = []
    result = evaluate_fairness(str(data), str(out), str(small_model_dir), answers=ANSWERS, instruction=True,
                               fpr_target=0.5, batch_size=4, progress=False, log=lines.append)
    assert json.loads((out / "result.json").read_text()) == result
    assert (out / "fairness.png").stat().st_size > 0
    assert (out / "report.html").exists()
    assert result["records"] == 6 and result["groups"] == {"north": {"count": 3, "positives": 1, "negatives": 2},
                                                           "south": {"count": 3, "positives": 1, "negatives": 2}}
    assert set(result["methods"]) == {"prompt", "instruction", "group_thresholds"}
    assert result["settings"]["instruction"] == DEFAULT_FAIRNESS_INSTRUCTION
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["group"] for r in rows] == [c["group"] for c in COMMENTS] and all(0 < r["score"] < 1 for r in rows)
    assert all(r["prediction"] == int(r["score"] >= 0.5) for r in rows)
    for group in ("north", "south"):  # the reported rates, counted again from the rows
        negatives = [r for r in rows if r["group"] == group and r["label"] == 0]
        flagged = sum(r["prediction"] for r in negatives)
        assert result["methods"]["prompt"]["per_group"][group]["fpr"] == pytest.approx(flagged / 2)
        # per-group thresholds at FPR 0.5: one of the two negatives flagged (unless their scores tie)
        if negatives[0]["score"] != negatives[1]["score"]:
            assert result["methods"]["group_thresholds"]["per_group"][group]["fpr"] == 0.5
    fprs = [result["methods"]["prompt"]["per_group"][g]["fpr"] for g in ("north", "south")]
    assert result["fpr_gap"] == pytest.approx(max(fprs) - min(fprs))
    assert {"score_instruction", "prediction_instruction", "prediction_group_threshold"} <= set(rows[0])
    assert "6 texts in 2 groups" in lines[-1]


def test_evaluate_fairness_names_the_bad_record_and_writes_nothing(tmp_path, small_model_dir):
    out = tmp_path / "out"
    missing = write_records(tmp_path / "missing.jsonl", [COMMENTS[0], {"text": "hi", "label": 1}])
    with pytest.raises(DataError) as error:
        evaluate_fairness(str(missing), str(out), str(small_model_dir), answers=ANSWERS, progress=False)
    assert error.value.source == str(missing) and error.value.location == "line 2" and error.value.field == "group"
    bad_label = write_records(tmp_path / "label.jsonl", [{"comment": "hi", "community": "x", "rude": 2}])
    with pytest.raises(DataError, match="0/1 label") as error:
        evaluate_fairness(str(bad_label), str(out), str(small_model_dir), text_field="comment",
                          group_field="community", label_field="rude", answers=ANSWERS, progress=False)
    assert error.value.field == "rude"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no records"):
        evaluate_fairness(str(empty), str(out), str(small_model_dir), answers=ANSWERS, progress=False)
    data = write_records(tmp_path / "comments.jsonl", COMMENTS)
    with pytest.raises(ConfigError, match="threshold"):
        evaluate_fairness(str(data), str(out), str(small_model_dir), threshold=1.5, answers=ANSWERS, progress=False)
    with pytest.raises(ConfigError, match="not one token"):
        evaluate_fairness(str(data), str(out), str(small_model_dir), progress=False)
    assert not out.exists()
