import pytest

from alignlab import ConfigError
from alignlab.config import apply_overrides, config_from_dict, load_config, save_config


def test_defaults_and_objective_section():
    config = config_from_dict({"objective": {"name": "dpo", "beta": 0.2}, "train": {"lr": 1}})
    assert config.objective[0].name == "dpo" and config.objective[0].params == {"beta": 0.2}
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trian": {}}, "unknown config key 'trian'. Did you mean 'train'?"),
        ({"train": {"learning_rate": 1e-5}}, "unknown config key 'train.learning_rate'"),
        ({"train": {"batch_size": "eight"}}, "train.batch_size: expected a whole number"),
        ({"train": {"progress": "yes"}}, "train.progress: expected true or false"),
        ({"train": {"scheduler": "cosin"}}, "Did you mean 'cosine'?"),
        ({"objective": {"name": "dpp"}}, "unknown objective 'dpp'. Did you mean 'dpo'?"),
        ({"objective": {"name": "dpo", "bta": 1}}, "no hyperparameter 'bta'. Did you mean 'beta'?"),
        ({"data": {"max_length": 64, "max_prompt_length": 64}}, "must be smaller"),
        ({"train": {"lr": -1.0}}, "train.lr must be positive"),
    ],
)
def test_bad_configs_say_what_to_change(data, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert message in str(caught.value)


def test_overrides_keep_types_and_reach_objective_params():
    data = apply_overrides({"objective": {"name": "dpo"}}, ["train.lr=1e-5", "objective.beta=0.3",
                                                            "train.max_steps=7", "train.progress=false"])
    config = config_from_dict(data)
    assert config.train.lr == 1e-5 and config.train.max_steps == 7 and config.train.progress is False
    assert config.objective[0].params == {"beta": 0.3}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_saved_config_loads_back_identically(tmp_path):
    config = config_from_dict({"objective": {"name": "dpo", "beta": 0.3}, "train": {"max_steps": 3}})
    save_config(config, tmp_path / "config.yaml", header="alignlab test")
    assert (tmp_path / "config.yaml").read_text().startswith("# alignlab test\n")
    assert load_config(tmp_path / "config.yaml") == config


def test_missing_or_invalid_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "nan", "inf"])
def test_non_finite_numbers_are_refused(value):
    import yaml

    for key in ("train.lr", "train.max_grad_norm", "objective.weight", "reference.sync_alpha"):
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=r"finite number|expected a number"):
            config_from_dict({section: {name: yaml.safe_load(value)}})


@pytest.mark.parametrize(("data", "message"), [
    ({"objective": {"name": "dpo", "beta": 0}}, "beta must be positive"),
    ({"objective": {"name": "dpo", "beta": -0.5}}, "beta must be positive"),
    ({"objective": {"name": "dpo", "label_smoothing": 0.7}}, "label_smoothing must be in"),
    ({"objective": {"name": "dpo", "f_divergence": "bogus"}}, "unknown f_divergence 'bogus'"),
    ({"objective": {"name": "kto", "beta": "much"}}, r"objective\.beta: expected a number"),
    ({"objective": [{"name": "dpo"}, {"name": "sft", "weight": -1}]}, r"objective\[1\]\.weight must be 0 or more"),
    ({"train": {"max_grad_norm": -1}}, "max_grad_norm must be positive"),
    ({"train": {"max_steps": 0}}, "max_steps must be at least 1"),
    ({"train": {"max_steps": -3}}, "max_steps must be at least 1"),
    ({"data": {"max_prompt_length": 0}}, "max_prompt_length must be at least 1"),
    ({"train": {"keep_checkpoints": 0}}, "keep_checkpoints must be at least 1"),
    ({"train": {"log_every": 0}}, "log_every must be at least 1"),
    ({"train": {"seed": -1}}, "seed must be 0 or more"),
    ({"train": {"eval_every": 5}}, "data.eval names no evaluation data"),
])
def test_every_value_is_checked_with_the_config(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_yaml_numbers_reach_objectives_as_numbers():
    config = config_from_dict({"objective": {"name": "dpo", "beta": "1e-1", "label_smoothing": "5e-2"}})
    assert config.objective[0].params == {"beta": 0.1, "label_smoothing": 0.05}


def test_config_files_and_folders_fail_clearly(tmp_path, small_model_dir, pairs_file):
    from alignlab.config import load_config
    from alignlab.train import train

    with pytest.raises(ConfigError, match="is a folder; name a YAML config file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train: {lr: 1.0e-5}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"data\.train: name the training data"):
        train(load_config(empty), log=lambda *_: None)
    base = {"model": {"path": str(small_model_dir)}, "data": {"train": str(pairs_file)}, "train": {"max_steps": 1}}
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(config_from_dict({**base, "out_dir": str(tmp_path / "a-file")}), log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"cache_dir .* is a file"):
        train(config_from_dict({**base, "out_dir": str(tmp_path / "run"),
                                "reference": {"cache_dir": str(tmp_path / "a-file")}}), log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_an_objective_module_that_cannot_be_built_is_a_config_error():
    with pytest.raises(ConfigError, match="sparsepo"):
        config_from_dict({"objective": {"name": "sparsepo", "mask": "learned", "dropout": 2.0},
                          "reference": {"mode": "model"}})


def test_relative_input_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch):
    from alignlab.config import load_config

    folder = tmp_path / "project" / "configs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "pairs.jsonl").write_text("{}\n")
    (folder / "run.yaml").write_text("model: {path: Qwen/Qwen2.5-0.5B}\ndata: {train: data/pairs.jsonl, "
                                     "eval: elsewhere.jsonl}\nout_dir: runs/x\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(folder / "run.yaml")
    assert config.data.train == str((folder / "data" / "pairs.jsonl").resolve())
    assert config.model.path == "Qwen/Qwen2.5-0.5B"  # not a path under the folder: a hub id, left as written
    assert config.data.eval == "elsewhere.jsonl"  # not under the folder: relative to the working directory
    assert config.out_dir == "runs/x"  # outputs go where the command runs
    overridden = load_config(folder / "run.yaml", ["data.train=data/pairs.jsonl"])
    assert overridden.data.train == "data/pairs.jsonl"  # typed on the command line: relative to the working directory


def test_settings_missing_from_an_older_saved_config_count_as_their_defaults():
    from alignlab.config import config_from_dict, config_to_dict, resume_changes

    config = config_from_dict({"data": {"train": "d.jsonl"}, "train": {"lr": 1e-4}})
    saved = config_to_dict(config)
    del saved["data"]["split"], saved["train"]["overopt_top_k"]  # written before these settings existed
    assert resume_changes(saved, config) == []
    changed = config_from_dict({"data": {"train": "d.jsonl", "split": "test"}, "train": {"lr": 1e-4}})
    assert resume_changes(saved, changed) == ["data.split"]
