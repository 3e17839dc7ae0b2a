import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab import ConfigError
from alignlab.config import config_from_dict
from alignlab.data import load_preferences, tokenize_preferences
from alignlab.models.loading import load_model
from alignlab.train import train
from alignlab.train.reference import cached_reference_logps


def make_config(model_dir, data, out, cache, scoring=None, eval_data=None, **train):
    settings = {"batch_size": 2, "lr": 1e-3, "warmup_ratio": 0.0, "progress": False, **train}
    return config_from_dict({
        "scoring": scoring or {},
        "model": {"path": str(model_dir)},
        "data": {"train": str(data), "eval": str(eval_data) if eval_data else None, "max_length": 64,
                 "max_prompt_length": 32},
        "objective": {"name": "dpo", "beta": 0.5},
        "reference": {"cache_dir": str(cache)},
        "train": settings,
        "out_dir": str(out),
    })


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loop_overfits_a_tiny_case(small_model_dir, pairs_file, tmp_path):
    config = make_config(small_model_dir, pairs_file, tmp_path / "run", tmp_path / "cache",
                         batch_size=8, max_steps=40, lr=3e-3)
    result = train(config, log=lambda *_: None)
    history = metrics(result.run_dir)
    assert len(history) == 40 and history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference
    assert history[-1]["loss"] < 0.05
    assert history[-1]["rewards/accuracies"] == 1.0
    assert history[-1]["rewards/margins"] > 3
    assert (result.final_dir / "model.safetensors").is_file() and (result.run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("stop", [3, 4])
def test_resume_continues_exactly(small_model_dir, pairs_file, tmp_path, stop):
    # 8 pairs, batch 2: 4 steps per epoch; 7 steps cross an epoch boundary. Stop mid-epoch (3) or at its end (4).
    straight = train(make_config(small_model_dir, pairs_file, tmp_path / "straight", tmp_path / "cache",
                                 max_steps=7), log=lambda *_: None)
    interrupted_dir = tmp_path / "interrupted"
    config = make_config(small_model_dir, pairs_file, interrupted_dir, tmp_path / "cache", max_steps=7,
                         save_every=stop, keep_checkpoints=5)
    train(config, log=lambda *_: None)
    for later in (interrupted_dir / "checkpoints").iterdir():  # as if killed right after step `stop`
        if later.name != f"step-{stop}":
            shutil.rmtree(later)
    shutil.rmtree(interrupted_dir / "final")
    resumed = train(config, resume=True, log=lambda *_: None)
    expected, got = weights(straight.final_dir), weights(resumed.final_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resuming from step {stop}"
    assert [m["step"] for m in metrics(interrupted_dir)] == list(range(1, 8))
    assert [m["loss"] for m in metrics(interrupted_dir)] == [m["loss"] for m in metrics(straight.run_dir)]


def test_frozen_reference_model_gives_the_same_training_as_the_cache(small_model_dir, pairs_file, tmp_path):
    cached = train(make_config(small_model_dir, pairs_file, tmp_path / "a", tmp_path / "cache", max_steps=3),
                   log=lambda *_: None)
    config = make_config(small_model_dir, pairs_file, tmp_path / "b", tmp_path / "cache", max_steps=3)
    config.reference.mode = "model"
    frozen = train(config, log=lambda *_: None)
    for a, b in zip(metrics(cached.run_dir), metrics(frozen.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    # reference batches are padded differently in the two modes: float noise, amplified a little by Adam
    for name, value in weights(cached.final_dir).items():
        torch.testing.assert_close(weights(frozen.final_dir)[name], value, atol=1e-4, rtol=1e-3)


def test_reference_cache_is_reused_and_invalidated(small_model_dir, pairs_file, tmp_path, tokenizer):
    model = load_model(str(small_model_dir))
    examples = load_preferences(str(pairs_file))
    pairs, _ = tokenize_preferences(examples, tokenizer, max_length=64, max_prompt_length=32)
    first, path, hit = cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    assert not hit
    again, same_path, hit = cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    assert hit and same_path == path and torch.equal(again.values[0], first.values[0])
    truncated, _ = tokenize_preferences(examples, tokenizer, max_length=12, max_prompt_length=6)
    _, other_path, hit = cached_reference_logps(model, truncated, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    assert not hit and other_path != path
    with torch.no_grad():
        model.model.norm.weight.add_(0.01)
    changed, weights_path, hit = cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path,
                                                        False)
    assert not hit and weights_path not in (path, other_path)
    assert not torch.equal(changed.values[0], first.values[0])
    assert len(first.values[0]) == sum(len(p.chosen) for p in pairs)


def test_gradient_accumulation_matches_one_large_batch(small_model_dir, pairs_file, tmp_path):
    large = train(make_config(small_model_dir, pairs_file, tmp_path / "large", tmp_path / "cache",
                              batch_size=4, max_steps=2), log=lambda *_: None)
    accumulated = train(make_config(small_model_dir, pairs_file, tmp_path / "acc", tmp_path / "cache",
                                    batch_size=2, grad_accum=2, max_steps=2), log=lambda *_: None)
    # the epoch order is the same permutation, so micro-batches 2 + 2 hold the same examples as one batch of 4
    for a, b in zip(metrics(large.run_dir), metrics(accumulated.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    for name, value in weights(large.final_dir).items():
        torch.testing.assert_close(weights(accumulated.final_dir)[name], value, atol=1e-5, rtol=1e-4)


def test_evaluation_every_n_steps_and_fresh_run_guard(small_model_dir, pairs_file, tmp_path):
    config = make_config(small_model_dir, pairs_file, tmp_path / "run", tmp_path / "cache",
                         max_steps=4, eval_every=2, save_every=4, eval_data=pairs_file)
    train(config, log=lambda *_: None)
    evals = [m for m in metrics(tmp_path / "run") if "eval/loss" in m]
    assert [m["step"] for m in evals] == [2, 4, 4]  # every 2 steps, and once at the end
    assert evals[-1]["eval/rewards/accuracies"] >= 0.0 and "eval/rewards/margins" in evals[-1]
    assert evals[-1] == evals[-2]  # the same weights evaluated twice at step 4; values against a hand-run evaluation:
    # tests/train/test_loop_mechanics.py::test_evaluation_values_match_a_hand_run_evaluation
    with pytest.raises(ConfigError) as caught:
        train(config, log=lambda *_: None)
    assert str(caught.value) == (f"{tmp_path / 'run'} already holds checkpoints of an earlier run; pass --resume to "
                                 "continue it, or choose another out_dir (--out)")


@pytest.mark.parametrize("engine", [{"share_prefix": False}, {"padding_free": False}, {"recompute_head": True}])
def test_engine_settings_train_alike(small_model_dir, pairs_file, tmp_path, engine):
    """The default engine (shared prompts, padding-free rows, kept logits) trains like each alternative.
    With batches of 4 the first and fifth batches of these pairs pack into 3 rows."""
    settings = {"max_steps": 3, "batch_size": 4}
    default = train(make_config(small_model_dir, pairs_file, tmp_path / "default", tmp_path / "cache", **settings),
                    log=lambda *_: None)
    other = train(make_config(small_model_dir, pairs_file, tmp_path / "other", tmp_path / "cache", **settings,
                              scoring=engine), log=lambda *_: None)
    for a, b in zip(metrics(default.run_dir), metrics(other.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    for name, value in weights(other.final_dir).items():
        torch.testing.assert_close(weights(default.final_dir)[name], value, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_compiled_body_trains_like_eager(small_model_dir, pairs_file, tmp_path):
    eager = train(make_config(small_model_dir, pairs_file, tmp_path / "eager", tmp_path / "cache", max_steps=2),
                  log=lambda *_: None)
    compiled = train(make_config(small_model_dir, pairs_file, tmp_path / "compiled", tmp_path / "cache", max_steps=2,
                                 compile=True), log=lambda *_: None)
    for a, b in zip(metrics(eager.run_dir), metrics(compiled.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    assert weights(compiled.final_dir).keys() == weights(eager.final_dir).keys()
    for name, value in weights(eager.final_dir).items():  # the compiled steps trained the weights that are saved
        torch.testing.assert_close(weights(compiled.final_dir)[name], value, atol=1e-4, rtol=1e-3)
    initial = weights(small_model_dir)
    assert not torch.equal(weights(compiled.final_dir)["lm_head.weight"], initial["lm_head.weight"])


def test_prepare_and_steps_in_pieces_on_records_in_memory_equal_one_run_from_the_file(small_model_dir, pairs_file,
                                                                                       tmp_path):
    """On-policy rounds and the demo call prepare → run_steps (any number of times) → finish with records they
    made: the result equals `train` reading the same records from a file."""
    from alignlab.train.loop import finish, prepare, run_steps

    whole = train(make_config(small_model_dir, pairs_file, tmp_path / "whole", tmp_path / "cache", max_steps=5),
                  log=lambda *_: None)
    config = make_config(small_model_dir, pairs_file, tmp_path / "pieces", tmp_path / "cache", max_steps=5)
    run = prepare(config, log=lambda *_: None, records=load_preferences(str(pairs_file)))
    assert run_steps(run, 2) is False and run.state.step == 2
    assert run_steps(run, 1) is False and run.state.step == 3
    assert run_steps(run) is False and run.state.step == 5
    pieces = finish(run)
    assert [m["loss"] for m in metrics(pieces.run_dir)] == [m["loss"] for m in metrics(whole.run_dir)]
    for name, value in weights(whole.final_dir).items():
        assert torch.equal(weights(pieces.final_dir)[name], value), name
    with pytest.raises(ConfigError, match="one format"):
        prepare(make_config(small_model_dir, pairs_file, tmp_path / "other", tmp_path / "cache", max_steps=5),
                log=lambda *_: None, records=["not a record"])


def test_scoring_switches_live_in_one_section():
    assert config_from_dict({"scoring": {"padding_free": False}}).scoring.padding_free is False
    with pytest.raises(ConfigError, match=r"'train\.share_prefix' has moved: write scoring\.share_prefix"):
        config_from_dict({"train": {"share_prefix": False}})
    with pytest.raises(ConfigError, match=r"scoring\.chunk_tokens must be at least 1"):
        config_from_dict({"scoring": {"chunk_tokens": 0}})


def test_run_folders_never_mix(small_model_dir, pairs_file, tmp_path):
    """A second run into a used folder is refused unless --resume or --overwrite (which clears it: no LoRA adapters
    left beside full weights); a live lock stops a concurrent run, a stale one is taken over."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    lora = make_config(small_model_dir, pairs_file, out, tmp_path / "cache", max_steps=1)
    lora.adapter.r = 4
    train(lora, log=lambda *_: None)
    assert (out / "final" / "adapter_model.safetensors").is_file()
    full = make_config(small_model_dir, pairs_file, out, tmp_path / "cache", max_steps=1)
    with pytest.raises(ConfigError, match="already holds the results of an earlier run; pass --resume"):
        train(full, log=lambda *_: None)
    train(full, log=lambda *_: None, overwrite=True)
    assert not (out / "final" / "adapter_model.safetensors").exists() and (out / "final" / "model.safetensors").exists()
    assert not (out / "run.lock").exists()  # given back at the end
    (tmp_path / "busy").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "busy" / "run.lock").write_text(str(sleeper.pid))
        busy = make_config(small_model_dir, pairs_file, tmp_path / "busy", tmp_path / "cache", max_steps=1)
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {sleeper.pid}\)"):
            train(busy, log=lambda *_: None)
    finally:
        sleeper.kill()
        sleeper.wait()
    train(busy, log=lambda *_: None)  # the holder is gone: its lock is stale and taken over
    assert (tmp_path / "busy" / "final" / "model.safetensors").is_file() and os.getpid()


def test_resume_refuses_settings_that_change_the_run(small_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    train(make_config(small_model_dir, pairs_file, out, tmp_path / "cache", max_steps=2, save_every=1),
          log=lambda *_: None)
    for change, key in (({"lr": 0.5}, "train.lr"), ({"seed": 3}, "train.seed")):
        changed = make_config(small_model_dir, pairs_file, out, tmp_path / "cache", max_steps=2, save_every=1, **change)
        with pytest.raises(ConfigError, match=f"differs in {key}"):
            train(changed, resume=True, log=lambda *_: None)
    both = make_config(small_model_dir, pairs_file, out, tmp_path / "cache", max_steps=2, save_every=1, lr=0.5, seed=3)
    with pytest.raises(ConfigError) as caught:
        train(both, resume=True, log=lambda *_: None)
    assert str(caught.value) == (
        f"--resume continues the run in {out}, whose config.yaml differs in train.lr, train.seed; resume with the "
        "same settings (only online.rounds, train.max_steps, train.save_every, train.keep_checkpoints, "
        "train.log_every, train.eval_every, train.overopt_prompts, train.overopt_top_k, "
        "train.overopt_max_new_tokens, train.log_with, train.progress, train.compile, train.guard_weights, "
        "scoring., reference.cache_dir, out_dir may change), or start a new run with --overwrite or another out_dir")
    other_data = tmp_path / "other.jsonl"
    other_data.write_text(pairs_file.read_text())
    with pytest.raises(ConfigError, match=r"differs in data\.train"):
        train(make_config(small_model_dir, other_data, out, tmp_path / "cache", max_steps=2, save_every=1),
              resume=True, log=lambda *_: None)
    longer = make_config(small_model_dir, pairs_file, out, tmp_path / "cache", max_steps=3, save_every=2)
    assert train(longer, resume=True, log=lambda *_: None).last_metrics["step"] == 3  # how long may change
    with pytest.raises(ConfigError, match="choose one"):
        train(longer, resume=True, overwrite=True, log=lambda *_: None)


def test_a_reference_cache_that_does_not_check_out_is_reported_and_recomputed(small_model_dir, pairs_file, tmp_path,
                                                                               tokenizer):
    """One flipped byte, a cut file, another data set's cache under the key, one token too few, non-finite values:
    each is said with its reason and recomputed, never trained on."""
    from safetensors.torch import save_file

    from alignlab.train.reference import read_cache, tensors_digest

    model = load_model(str(small_model_dir))
    pairs, _ = tokenize_preferences(load_preferences(str(pairs_file)), tokenizer, max_length=64, max_prompt_length=32)
    fewer, _ = tokenize_preferences(load_preferences(str(pairs_file))[:3], tokenizer, max_length=64,
                                    max_prompt_length=32)
    fresh, path, _ = cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    path = Path(path)
    good = path.read_bytes()
    _, other, _ = cached_reference_logps(model, fewer, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)
    flipped = bytearray(good)
    flipped[-5] ^= 0x40
    shorter = {name: value.clone() for name, value in fresh.tensors().items()}
    shorter["slot1"] = shorter["slot1"][:-1]  # as many examples, one token fewer: checksummed and wrong
    save_file(shorter, str(tmp_path / "shorter"), metadata={"examples": str(len(pairs)),
                                                            "sha256": tensors_digest(shorter)})
    counts = [len(values) for values in fresh.values]
    damages = {"flipped byte": (bytes(flipped), "its contents do not match the checksum written with them"),
               "cut short": (good[: len(good) // 2], "unreadable (SafetensorError: "),
               "another data set": (Path(other).read_bytes(), "it holds 3 examples / "),
               "other lengths": ((tmp_path / "shorter").read_bytes(),
                                 f"it holds {len(pairs)} examples / {[counts[0], counts[1] - 1]} tokens, "
                                 f"not {len(pairs)} / {counts}")}
    for damage, (content, reason) in damages.items():
        path.write_bytes(content)
        said = []
        again, _, hit = cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path, False,
                                               say=said.append)
        assert not hit and len(said) == 1, damage
        assert said[0].startswith(f"reference cache {path} cannot be used: {reason}"), (damage, said[0])
        assert said[0].endswith("; recomputing it"), damage
        assert all(torch.equal(a, b) for a, b in zip(again.values, fresh.values, strict=True)), damage
        assert read_cache(path, pairs)[0] is not None  # replaced by the recomputed one
    named = {name: value.clone() for name, value in fresh.tensors().items()}
    named["slot0"][0] = float("nan")  # well-formed, checksummed, and wrong
    save_file(named, str(path), metadata={"examples": str(len(pairs)), "sha256": tensors_digest(named)})
    said = []
    assert not cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path, False,
                                      say=said.append)[2]
    assert "non-finite" in said[0]
    assert cached_reference_logps(model, pairs, tokenizer.pad_token_id, 4, "cpu", tmp_path, False)[2]  # intact: a hit


def test_a_model_that_fails_to_load_leaves_no_run_folder(small_model_dir, pairs_file, tmp_path):
    """The model is loaded (and fails) before config.yaml or data_report.json are written."""
    import shutil

    from alignlab import AlignlabError

    broken = tmp_path / "no-weights"
    shutil.copytree(small_model_dir, broken)
    (broken / "model.safetensors").unlink()
    config = make_config(broken, pairs_file, tmp_path / "run", tmp_path / "cache", max_steps=1)
    with pytest.raises(AlignlabError):
        train(config, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
