"""Safe loading: no pickle payload runs, weights come from safetensors only, remote code stays off."""

import json
import os

import pytest
import torch

from alignlab import CheckpointError, ModelNotFoundError
from alignlab.files import file_sha256
from alignlab.models.loading import load_model
from alignlab.train import train
from tests.conftest import quick_config, random_llama


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_payload_in_a_checkpoint_is_refused(small_model_dir, pairs_file, tmp_path):
    config = quick_config(small_model_dir, pairs_file, tmp_path / "run", {"name": "dpo"}, max_steps=1, save_every=1)
    train(config, log=lambda *_: None)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-1"
    marker = tmp_path / "payload-ran"
    torch.save({"optimizer": Payload(marker)}, checkpoint / "training_state.pt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())  # an attacker can rewrite the manifest too
    state = checkpoint / "training_state.pt"
    manifest["files"]["training_state.pt"] = {"bytes": state.stat().st_size, "sha256": file_sha256(state)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        train(config, resume=True, log=lambda *_: None)
    assert not marker.exists()


def test_model_folder_with_only_pickled_weights_is_refused(tmp_path):
    folder = tmp_path / "model"
    model = random_llama(vocab_size=40)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({"model.embed_tokens.weight": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match=r"no model\.safetensors .*\(it has pytorch_model\.bin: pickle"):
        load_model(str(folder))
    (folder / "unrelated.safetensors").write_bytes(b"")  # a stray file does not open the gate
    with pytest.raises(ModelNotFoundError, match=r"no model\.safetensors"):
        load_model(str(folder))
    assert not marker.exists()


def test_remote_code_is_off_unless_asked(monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    with pytest.raises(ModelNotFoundError):
        load_model("alignlab/tiny-llama")
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_hub_ids_with_dots_are_looked_up_in_the_hub_cache(tmp_path, small_model_dir):
    """`Qwen/Qwen2.5-0.5B`-style ids (a dot in the name) are hub ids, not paths: with fake cache entries and the hub
    offline they load from the cache; a missing one says it is neither a folder nor cached."""
    import shutil
    import subprocess
    import sys

    from alignlab.hub import is_hub_id
    from alignlab.models.loading import resolve_model_path

    for name in ("Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "acme/tiny.v1.5", "gpt2"):
        assert is_hub_id(name) and resolve_model_path(name) == (name, False)
    for name in ("a/b/c", "./acme/tiny.v1.5", "x..y/z"):
        with pytest.raises(ModelNotFoundError, match="no model folder"):
            resolve_model_path(name)
    (tmp_path / "weights.safetensors").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model folder"):
        resolve_model_path(str(tmp_path / "weights.safetensors"))
    cache = tmp_path / "hub"
    for repo in ("acme/tiny.v1.5", "Org/Model-3.2-mini"):
        snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        shutil.copytree(small_model_dir, snapshot)
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    script = ("from alignlab.models.loading import load_model_and_tokenizer\n"
              "for repo in ('acme/tiny.v1.5', 'Org/Model-3.2-mini'):\n"
              "    model, tokenizer = load_model_and_tokenizer(repo)\n"
              "    print(repo, type(model).__name__, len(tokenizer))\n"
              "try:\n    load_model_and_tokenizer('acme/other.v2')\n"
              "except Exception as error:\n    print(type(error).__name__, error)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "acme/tiny.v1.5 LlamaForCausalLM" in result.stdout and "Org/Model-3.2-mini LlamaForCausalLM" in result.stdout
    assert "ModelNotFoundError" in result.stdout and "acme/other.v2" in result.stdout


def test_broken_model_folders_are_clear_errors(tmp_path, small_model_dir):
    import json
    import shutil

    from alignlab import ConfigError
    from alignlab.models.loading import load_tokenizer
    from alignlab.models.merging import merge_adapters

    cut = tmp_path / "cut"
    shutil.copytree(small_model_dir, cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(ModelNotFoundError, match=r"cannot be read .* incomplete"):
        load_model(str(cut))
    bare = tmp_path / "bare"
    shutil.copytree(small_model_dir, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ModelNotFoundError, match="tokenizer of the local folder"):
        load_tokenizer(str(bare))
    nameless = tmp_path / "nameless"
    shutil.copytree(small_model_dir, nameless)
    config = json.loads((nameless / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config.pop(key, None)
    (nameless / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(small_model_dir))
    tokenizer.pad_token, tokenizer.eos_token = None, None
    tokenizer.save_pretrained(nameless)
    with pytest.raises(ConfigError, match="neither a padding nor an end-of-sequence token"):
        load_tokenizer(str(nameless))
    custom = tmp_path / "custom"
    shutil.copytree(small_model_dir, custom)
    model_config = json.loads((custom / "config.json").read_text())
    model_config["model_type"] = "mine"
    model_config["auto_map"] = {"AutoModelForCausalLM": "modeling_mine.MyModel",
                                "AutoConfig": "configuration_mine.MyConfig"}
    (custom / "config.json").write_text(json.dumps(model_config))
    with pytest.raises(ConfigError, match="ships its own Python code"):
        load_model(str(custom))
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(small_model_dir)}))
    (adapters / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"no adapter_model\.safetensors .*adapter_model\.bin: pickle"):
        merge_adapters(adapters, tmp_path / "merged")
