"""`train.precision: auto`: the decision from measured (injected) matmul rates, the per-machine cache, the choice
recorded and kept on resume, and the reference scored in the policy's precision (the log-ratio starts at 0)."""

import json

import pytest
import torch

from alignlab.train import precision
from alignlab.train.precision import decide, resolve_precision
from tests.conftest import quick_config


def test_decide_from_measured_rates():
    amx = decide("auto", "cpu", rates={"fp32": 209.0, "bf16": 994.0})
    assert amx.precision == "bf16" and amx.mixed_precision == "bf16" and "4.76×" in amx.reason
    avx2 = decide("auto", "cpu", rates={"fp32": 120.0, "bf16": 0.5})
    assert avx2.precision == "fp32" and avx2.mixed_precision == "no" and "no fast bf16" in avx2.reason
    assert decide("auto", "cpu", rates={"fp32": 100.0, "bf16": 149.0}).precision == "fp32"  # below 1.5×
    assert decide("auto", "cpu", rates={"fp32": 100.0, "bf16": 150.0}).precision == "bf16"
    assert decide("auto", "cuda", gpu_bf16=True).precision == "bf16"
    assert decide("auto", "cuda", gpu_bf16=False).precision == "fp32"
    assert decide("fp32", "cuda", gpu_bf16=True).precision == "fp32"  # as configured, never second-guessed
    assert decide("bf16", "cpu", rates={"fp32": 1.0, "bf16": 0.001}).precision == "bf16"


def test_resolve_uses_the_probe_unless_forced(monkeypatch):
    monkeypatch.delenv(precision.FORCE_VARIABLE, raising=False)
    calls = []

    def probe():
        calls.append(1)
        return {"fp32": 200.0, "bf16": 900.0}, False

    assert resolve_precision("auto", torch.device("cpu"), probe).precision == "bf16" and calls == [1]
    assert resolve_precision("fp32", torch.device("cpu"), probe).precision == "fp32" and calls == [1]
    monkeypatch.setenv(precision.FORCE_VARIABLE, "fp32")
    assert resolve_precision("auto", torch.device("cpu"), probe).precision == "fp32" and calls == [1]


def test_the_probe_measures_once_per_machine(tmp_path, monkeypatch):
    measured = []

    def fake_rate(dtype, *args, **kwargs):
        measured.append(dtype)
        return {torch.float32: 100.0, torch.bfloat16: 300.0}[dtype]

    monkeypatch.setattr(precision, "matmul_rate", fake_rate)
    path = tmp_path / "cache" / "probe.json"
    first, cached = precision.cpu_rates(path)
    again, cached_again = precision.cpu_rates(path)
    assert first == again == {"fp32": 100.0, "bf16": 300.0} and (cached, cached_again) == (False, True)
    assert measured == [torch.float32, torch.bfloat16]
    assert precision.cpu_fingerprint() in json.loads(path.read_text())


def test_a_real_probe_returns_positive_rates():
    rate = precision.matmul_rate(torch.float32, size=64, seconds=0.01)
    assert rate > 0


def test_bf16_reference_matches_the_policy_at_step_0_and_the_choice_is_kept_on_resume(
        tmp_path, small_model_dir, pairs_file, monkeypatch):
    from alignlab.train import train

    monkeypatch.setenv(precision.FORCE_VARIABLE, "bf16")
    out = tmp_path / "run"
    config = quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, max_steps=2, save_every=1,
                          reference={"cache_dir": str(tmp_path / "cache")}, data_settings={"eval": str(pairs_file)})
    train(config, log=lambda *_: None)  # the evaluation examples' reference is cached as bf16 too
    recorded = json.loads((out / "precision.json").read_text())
    assert recorded["precision"] == "bf16" and recorded["requested"] == "auto"
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    # policy and reference both ran in bf16 autocast on the step-0 weights: every log-ratio is exactly 0
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    # float32 reference log-probs are another cache entry
    monkeypatch.setenv(precision.FORCE_VARIABLE, "fp32")
    train(quick_config(small_model_dir, pairs_file, tmp_path / "fp32", {"name": "dpo"}, max_steps=1,
                       reference={"cache_dir": str(tmp_path / "cache")}), log=lambda *_: None)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    first = json.loads((tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)  # float32 log-probs, not bf16 ones
    # a resumed run keeps its recorded bf16 although auto would now give fp32
    said = []
    train(quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, max_steps=3,
                       reference={"cache_dir": str(tmp_path / "cache")}, data_settings={"eval": str(pairs_file)}),
          resume=True, log=said.append)
    assert any("precision: bf16, as the run recorded" in line for line in said)
    assert json.loads((out / "precision.json").read_text())["precision"] == "bf16"


def test_forced_precision_must_be_known(monkeypatch):
    from alignlab import ConfigError

    monkeypatch.setenv(precision.FORCE_VARIABLE, "fp8")
    with pytest.raises(ConfigError, match="must be fp32 or bf16"):
        resolve_precision("auto", torch.device("cpu"))


def test_a_run_from_before_auto_measured_resumes_in_its_old_precision(tmp_path, small_model_dir, pairs_file,
                                                                        monkeypatch):
    from alignlab.train import train

    out = tmp_path / "run"
    train(quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, max_steps=2, save_every=1),
          log=lambda *_: None)
    (out / "precision.json").unlink()  # as written before precision.json existed
    monkeypatch.setenv(precision.FORCE_VARIABLE, "bf16")  # what auto would choose now
    said = []
    train(quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, max_steps=3), resume=True,
          log=said.append)
    assert any("as runs began before auto measured" in line for line in said)
    assert json.loads((out / "precision.json").read_text())["precision"] == "fp32"  # a CPU's old rule


@pytest.mark.parametrize("main_process", [True, False])
def test_processes_of_a_distributed_run_take_the_main_processs_choice(monkeypatch, main_process):
    """With WORLD_SIZE > 1 only the main process chooses (and so probes); its answer is broadcast from rank 0 and
    every process trains in it. The process group is replaced by stand-ins that record the broadcast."""
    import accelerate
    import torch.distributed as dist

    from alignlab.train.precision import PrecisionChoice, agreed_precision

    main_choice = PrecisionChoice("bf16", "auto", "measured on the main process")
    broadcasts, chosen = [], []

    def broadcast(box, src):
        broadcasts.append((list(box), src))
        box[0] = main_choice

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", lambda cpu: type("State", (), {"is_main_process": main_process}))
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)

    def choose(say):
        chosen.append(say)
        return main_choice

    assert agreed_precision(choose, log=print) == main_choice
    assert chosen == ([print] if main_process else [])
    assert broadcasts == [([main_choice] if main_process else [None], 0)]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert agreed_precision(lambda say: PrecisionChoice("fp32", "fp32", "as configured"), print).precision == "fp32"
    assert len(broadcasts) == 1  # one process: nothing sent


def test_only_a_resumed_auto_run_without_a_record_follows_the_old_rule(tmp_path, small_model_dir, pairs_file,
                                                                        monkeypatch):
    """The rule of runs begun before `auto` measured (float32 on a CPU) applies to exactly one case: `--resume` of
    an `auto` run whose folder holds a config.yaml but no precision.json. A new run over such a folder
    (`--overwrite`) and an explicitly configured precision are chosen as usual."""
    from alignlab.train.precision import choose_precision

    monkeypatch.setenv(precision.FORCE_VARIABLE, "bf16")  # what auto measures now
    out = tmp_path / "run"
    out.mkdir()

    def choice(setting, resume):
        config = quick_config(small_model_dir, pairs_file, out, {"name": "dpo"}, precision=setting)
        return choose_precision(config, resume, lambda *_: None)

    assert choice("auto", resume=True).precision == "bf16"  # nothing earlier in the folder
    (out / "config.yaml").write_text("{}\n")
    old_rule = choice("auto", resume=True)  # recorded as requested "auto", so the next resume keeps it as well
    assert (old_rule.precision, old_rule.requested) == ("fp32", "auto")
    assert choice("auto", resume=False).precision == "bf16"
    assert choice("bf16", resume=True).precision == "bf16"
