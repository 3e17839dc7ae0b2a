"""Registrations declare their checks: a decoder its parameters' ranges, a reward its parameters' types (its
`__init__` annotations), an online mode its round-data builder and the formats it feeds; each is checked with the
config, before any work."""

import os
import subprocess
import sys

import pytest
import yaml

from alignlab import ConfigError, decode, rewards
from alignlab.cli import main
from alignlab.commands.decode import decode_config
from alignlab.config import ONLINE_MODES, OnlineConfig, config_from_dict
from alignlab.data.round_data import Group, RoundCounts, RoundInputs, register_mode, top_examples
from alignlab.data.tokenize import TokenizedSFT
from alignlab.decode import base
from alignlab.decode.base import Range

CALLS = []


@pytest.fixture(scope="module")
def min_p():
    """A decoder registered here, as a new file would register it: its own parameter with a declared range."""

    @decode.register("test_min_p", ranges={"min_p": Range(0, 1, low_open=True)})
    def test_min_p(model, tokenizer, prompts, n=1, *, min_p: float = 0.1, temperature: float = 1.0,
                   max_new_tokens: int = 32, seed=None, progress=True):
        """Test decoder: records that it ran."""
        CALLS.append(min_p)

    yield "test_min_p"
    base._DECODERS.pop("test_min_p")


def test_a_declared_range_is_checked_by_get_with_the_shared_ones(min_p):
    assert decode.get(min_p, min_p=1.0, temperature=0.5) is not None
    with pytest.raises(ConfigError, match=r"decoder 'test_min_p': min_p must be in \(0, 1\], got 2.0"):
        decode.get(min_p, min_p=2.0)
    with pytest.raises(ConfigError, match="min_p must be a number, got 'high'"):
        decode.get(min_p, min_p="high")
    with pytest.raises(ConfigError, match="min_p must be in"):
        decode.check_ranges(min_p, {"min_p": float("nan")})
    with pytest.raises(ConfigError, match="decoder 'test_min_p': temperature must be positive, got 0"):
        decode.get(min_p, temperature=0)  # the shared range of a parameter it takes
    assert str(decode.spec(min_p).range_of("min_p")) == "in (0, 1]" and CALLS == []


def test_a_decode_config_out_of_a_declared_range_fails_before_any_method_runs(min_p, tmp_path):
    data = {"prompts": {"path": "prompts.jsonl"}, "out_dir": str(tmp_path / "out"),
            "methods": ["sample", {"name": min_p, "min_p": 2.0}]}
    with pytest.raises(ConfigError, match=r"min_p must be in \(0, 1\], got 2.0"):
        decode_config(data)
    config = tmp_path / "decode.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["decode", str(config), "--quiet"]) == 2
    assert not (tmp_path / "out").exists() and CALLS == []
    assert decode_config({**data, "methods": [{"name": min_p, "min_p": 0.5}]}).methods[0].params == {"min_p": 0.5}


def test_a_decoder_s_own_range_replaces_the_shared_one():
    decode.get("urial", temperature=0.0)  # greedy is its default
    with pytest.raises(ConfigError, match="temperature must be positive"):
        decode.get("sample", temperature=0.0)
    with pytest.raises(ConfigError, match="decoder 'deal': top_k must be at least 1, got 0"):
        decode.get("deal", top_k=0)
    with pytest.raises(ConfigError, match="decoder 'speculative': gamma must be at least 1"):
        decode.check_ranges("speculative", {"gamma": 0, "max_new_tokens": 4})
    with pytest.raises(TypeError, match="declares ranges of parameters it does not take: min_q"):
        decode.register("test_wrong_range", ranges={"min_q": Range(0)})(lambda model, tokenizer, prompts, n: None)
    assert [str(r) for r in (Range(1), Range(0), Range(0, low_open=True), Range(0, 1), Range(high=2, high_open=True),
                             Range(0.5, low_open=True))] == ["at least 1", "0 or more", "positive", "in [0, 1]",
                                                             "less than 2", "greater than 0.5"]


BUILT = []


@pytest.fixture(scope="module")
def model_reward():
    """A reward registered here whose construction would load a model: its parameters' types are its annotations."""

    @rewards.register("test_model_reward")
    class ModelReward:
        """Test reward: records its construction."""

        def __init__(self, path: str, batch_size: int = 8, names: list[str] | None = None) -> None:
            BUILT.append(path)

        def score(self, prompts, completions):
            return [0.0] * len(completions)

    yield "test_model_reward"
    rewards.base._REWARDS.pop("test_model_reward")
    rewards.base._TYPES.pop("test_model_reward")


def test_a_reward_parameter_of_the_wrong_type_fails_before_the_reward_is_made(model_reward):
    for params, message in (({"path": 3}, "reward 'test_model_reward': path must be a string, got 3"),
                            ({"path": "m", "batch_size": 2.5}, "batch_size must be a whole number, got 2.5"),
                            ({"path": "m", "batch_size": True}, "batch_size must be a whole number, got True"),
                            ({"path": "m", "names": ["a", 1]}, "names must be a list of strings or null"),
                            ({}, "reward 'test_model_reward' needs path")):
        with pytest.raises(ConfigError, match=message):
            rewards.from_config({"name": model_reward, **params})
        with pytest.raises(ConfigError, match=message):
            rewards.check_entry({"name": model_reward, **params})
    assert BUILT == []
    rewards.from_config({"name": model_reward, "path": "m", "batch_size": 4, "names": None})
    assert BUILT == ["m"]
    with pytest.raises(ConfigError, match="reward 'length': target must be a whole number, got 'twenty'"):
        rewards.build("length", target="twenty")
    with pytest.raises(ConfigError, match="reward 'regex': negate must be true or false, got 1"):
        config_from_dict({"objective": "grpo", "online": {"mode": "grpo", "prompts": "p.jsonl",
                                                          "reward": {"name": "regex", "pattern": "a", "negate": 1}}})


@pytest.fixture(scope="module")
def best_only():
    """An online mode registered here, as one builder with one registration line."""

    @register_mode("test_best_only", feeds=("sft",))
    def best_only(inputs: RoundInputs, online: OnlineConfig) -> list:
        """Test mode: the single best completion of each prompt."""
        return top_examples(inputs.groups, 1, inputs.counts)

    yield "test_best_only"
    ONLINE_MODES._entries.pop("test_best_only")


def test_an_online_mode_registered_with_its_builder_is_checked_with_the_config(best_only):
    config = config_from_dict({"objective": "sft", "online": {"mode": best_only, "prompts": "p.jsonl"}})
    assert config.online.mode == best_only
    with pytest.raises(ConfigError, match=r"online\.mode test_best_only builds sft data, and objective 'dpo' reads"):
        config_from_dict({"objective": "dpo", "online": {"mode": best_only, "prompts": "p.jsonl"}})
    with pytest.raises(ConfigError, match=r"is not one of raft, online_dpo, bon_distill, rloo, grpo, test_best_only"):
        config_from_dict({"objective": "sft", "online": {"mode": "best_onyl", "prompts": "p.jsonl"}})
    with pytest.raises(ValueError, match="online mode 'test_best_only' is registered twice"):
        register_mode(best_only, feeds=("sft",))(lambda inputs, online: [])
    mode = ONLINE_MODES.get(best_only)
    groups = [Group([TokenizedSFT([1], [10]), TokenizedSFT([1], [11])], [0.1, 0.9])]
    built = mode.build(RoundInputs(groups, [], [], "sft", 0, RoundCounts()), OnlineConfig())
    assert [e.completion for e in built] == [[11]] and not mode.from_initial


def test_the_registered_modes_say_what_they_build():
    bon = ONLINE_MODES.get("bon_distill")
    assert bon.from_initial and bon.data_format(("paired",)) == "paired" and bon.data_format(("sft", "paired")) == "sft"
    assert ONLINE_MODES.get("grpo").data_format(("paired",)) is None
    assert list(ONLINE_MODES)[:5] == ["raft", "online_dpo", "bon_distill", "rloo", "grpo"]


def test_the_config_sees_the_modes_without_importing_the_online_package():
    """In a fresh process that imports only alignlab.config, every mode is known: they are registered with their
    builders in alignlab.data.round_data, below the config, not in the online driver above it."""
    code = ("import sys\nfrom alignlab.config import config_from_dict\nassert 'alignlab.online' not in sys.modules\n"
            "config_from_dict({'objective': 'grpo', 'online': {'mode': 'grpo', 'prompts': 'p.jsonl'}})\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.stdout.strip() == "ok", result.stderr
