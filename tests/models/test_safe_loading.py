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
    with pytest.raises(ModelNotFoundError, match=r"no \.safetensors weights \(it has pytorch_model\.bin: pickle"):
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
