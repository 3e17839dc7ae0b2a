"""The judge, fairness and model-averaging sub-commands parse their options and write their outputs."""

import json
from pathlib import Path

from alignlab.cli import main
from tests.conftest import write_records

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_evaluate_judge_with_a_reward(tmp_path):
    out = tmp_path / "judge"
    reward = tmp_path / "reward.yaml"
    reward.write_text("name: keywords\ninclude: [wonderful, loved]\n")
    data = write_records(tmp_path / "pairs.jsonl", [
        {"prompt": "The film is", "chosen": " wonderful", "rejected": " dull"},
        {"prompt": "I watched it and", "chosen": " loved it", "rejected": " left early"}])
    assert main(["evaluate", "judge", str(data), "--reward", str(reward), "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["pairs"] == 2 and result["consistency"] == 1.0 and result["accuracy"] == 1.0
    assert (out / "judges.png").exists()


def test_evaluate_judge_with_the_embedded_model(tmp_path):
    out = tmp_path / "judge"
    assert main(["evaluate", "judge", str(EXAMPLES / "judge_pairs.jsonl"), "--model", "alignlab/tiny-llama",
                 "--biases", "bandwagon", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["pairs"] == 24 and 0 <= result["consistency"] <= 1 and set(result["robustness"]) == {"bandwagon"}
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert result["consistency"] == sum(v["consistent"] for v in verdicts) / 24


def test_evaluate_fairness_on_the_example_set(tmp_path):
    out = tmp_path / "fairness"
    assert main(["evaluate", "fairness", str(EXAMPLES / "fairness_comments.jsonl"),  # the embedded model
                 "--answers", " A", " B", "--instruction", "--fpr-target", "0.25", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["records"] == 24 and set(result["methods"]) == {"prompt", "instruction", "group_thresholds"}
    assert (out / "fairness.png").exists()


def test_diagnose_average_command(tmp_path, small_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    aligned = tmp_path / "aligned"
    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(aligned)
    AutoTokenizer.from_pretrained(small_model_dir).save_pretrained(aligned)
    prompts = write_records(tmp_path / "prompts.jsonl", [{"prompt": "The film is"}, {"prompt": "I watched"}])
    out = tmp_path / "average"
    assert main(["diagnose", "average", "--pre", str(small_model_dir), "--aligned", str(aligned),
                 "--prompts", str(prompts), "--general-text", str(EXAMPLES / "general_text.jsonl"),
                 "--reward", "length", "--alphas", "0", "1", "--block-alphas", "0", "1", "--blocks", "2",
                 "--max-new-tokens", "4", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    by_alphas = {tuple(point["alphas"]): point for point in result["points"]}
    assert by_alphas[(1.0, 1.0)]["tax"] == 0.0  # the pre model itself
    assert by_alphas[(0.0, 0.0)]["tax"] != 0.0  # the perturbed model
    assert len(by_alphas) == 4 and (out / "average.png").exists()
