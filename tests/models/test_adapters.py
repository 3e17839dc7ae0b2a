"""LoRA adapters: only they train, the reference is the base model with them disabled, merge-and-save."""

import json

import pytest
import torch
from safetensors.torch import load_file

from alignlab.cli import main
from alignlab.config import config_from_dict
from alignlab.errors import ConfigError
from alignlab.models.adapters import reference_context, with_lora
from alignlab.models.loading import load_model
from alignlab.models.scoring import completion_logps, completion_token_kl
from alignlab.train import train
from tests.conftest import quick_config, random_llama, run_history

DPO = {"name": "dpo", "beta": 0.5}
TARGETS = ["q_proj", "o_proj"]
"""Not peft's default for Llama (q_proj, v_proj): a run that dropped the setting would adapt other layers."""


def lora_config(model_dir, data, out, reference_mode="precompute", **train_settings):
    config = quick_config(model_dir, data, out, DPO, {"mode": reference_mode}, max_steps=3, **train_settings)
    config.adapter.r, config.adapter.alpha, config.adapter.target_modules = 4, 8.0, TARGETS
    return config


def test_disabled_adapters_give_the_base_model_exactly():
    base = random_llama(vocab_size=53, seed=1)
    input_ids = torch.randint(0, 53, (2, 9), generator=torch.Generator().manual_seed(0))
    attention_mask, completion_mask = torch.ones_like(input_ids), torch.ones_like(input_ids)
    completion_mask[:, :3] = 0
    expected = completion_logps(base, input_ids, attention_mask, completion_mask)
    adapted = with_lora(base, r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # as after training
    moved = completion_logps(adapted, input_ids, attention_mask, completion_mask)
    assert not torch.allclose(moved, expected)
    with reference_context(adapted):
        torch.testing.assert_close(completion_logps(adapted, input_ids, attention_mask, completion_mask), expected)
    torch.testing.assert_close(completion_logps(adapted, input_ids, attention_mask, completion_mask), moved)
    # token-level KL of the adapted policy against itself as the reference: the reference pass is the base model
    token_kl = completion_token_kl(adapted, adapted, input_ids, attention_mask, completion_mask)
    torch.testing.assert_close(token_kl.policy[0].detach(), moved)
    torch.testing.assert_close(token_kl.reference[0], expected)
    assert (token_kl.kl[0][completion_mask.bool()] < 0).all()  # −KL(π_ref ‖ π_θ) < 0 wherever they differ


@pytest.mark.parametrize("reference_mode", ["precompute", "model"])
def test_lora_run_trains_only_adapters_and_merges(small_model_dir, pairs_file, tmp_path, reference_mode):
    said = []
    result = train(lora_config(small_model_dir, pairs_file, tmp_path / "run", reference_mode), log=said.append)
    assert any(line.startswith("LoRA adapters of rank 4 on ['q_proj', 'o_proj']: ") and line.endswith(
        " parameters train; the reference is the base model (adapters disabled)") for line in said)
    assert (f"{result.final_dir} holds the LoRA adapters; `alignlab merge {result.final_dir} --out DIR` folds them "
            "into the base model") in said
    history = run_history(result.run_dir)
    assert history[0]["loss"] == pytest.approx(torch.nn.functional.softplus(torch.tensor(0.0)).item(), abs=1e-5)
    assert history[-1]["loss"] < history[0]["loss"]
    final = result.final_dir
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    adapters = load_file(str(final / "adapter_model.safetensors"))
    assert adapters and all("lora_" in name for name in adapters)
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in adapters} == set(TARGETS)
    card = (final / "README.md").read_text()
    assert "library_name: peft" in card and "for 3 steps (LoRA adapters: fold them into the base model" in card
    assert any(value.abs().max() > 0 for name, value in adapters.items() if "lora_B" in name)

    merged_dir = tmp_path / "merged"
    assert main(["merge", str(final), "--out", str(merged_dir), "--base", str(small_model_dir)]) == 0
    merged = load_model(str(merged_dir))
    base = load_file(str(small_model_dir / "model.safetensors"))
    merged_weights = load_file(str(merged_dir / "model.safetensors"))
    assert set(merged_weights) == set(base)
    changed = {name for name in base if not torch.equal(merged_weights[name], base[name])}
    assert changed and {name.split(".")[-2] for name in changed} == set(TARGETS)
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == "llama"

    # the merged model scores like the trained model with its adapters
    input_ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    attention_mask, completion_mask = torch.ones_like(input_ids), torch.ones_like(input_ids)
    completion_mask[:, :4] = 0
    result.model.eval()
    torch.testing.assert_close(completion_logps(merged, input_ids, attention_mask, completion_mask),
                               completion_logps(result.model, input_ids, attention_mask, completion_mask),
                               atol=1e-5, rtol=1e-5)


def test_lora_reference_model_mode_shares_the_weights(small_model_dir, pairs_file, tmp_path, monkeypatch):
    """In reference mode `model` with adapters the reference is the policy object itself (never a deep copy)."""
    import copy

    copies = []
    original = copy.deepcopy

    def counting_deepcopy(value, *args, **kwargs):
        if isinstance(value, torch.nn.Module):
            copies.append(type(value).__name__)
        return original(value, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)
    train(lora_config(small_model_dir, pairs_file, tmp_path / "lora", "model"), log=lambda *_: None)
    assert copies == []
    full = quick_config(small_model_dir, pairs_file, tmp_path / "full", DPO, {"mode": "model"}, max_steps=1)
    train(full, log=lambda *_: None)
    assert copies == ["LlamaForCausalLM"]  # without adapters the reference is a frozen copy


def test_adapter_config_is_checked():
    with pytest.raises(ConfigError, match=r"adapter\.r must be 0"):
        config_from_dict({"adapter": {"r": -1}})
    with pytest.raises(ConfigError, match=r"adapter.target_modules\[1\]: expected str"):
        config_from_dict({"adapter": {"r": 4, "target_modules": ["q_proj", 3]}})
    with pytest.raises(ConfigError, match=r"unknown config key 'adapter\.alpah'\. Did you mean 'alpha'"):
        config_from_dict({"adapter": {"alpah": 4}})
    with pytest.raises(ConfigError, match="sync_ref"):
        config_from_dict({"adapter": {"r": 4}, "reference": {"mode": "model", "sync_ref": True}})


def test_merge_refuses_a_folder_without_adapters(tmp_path, capsys):
    assert main(["merge", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
