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
