import pytest
import yaml

from jaxseq import config as config_lib
from jaxseq.config import Config, ConfigError, load_config


def test_defaults_validate_and_public_keys_exist():
    config = load_config()
    tree = config.to_dict()
    for group, key in [("data", "fasta"), ("data", "window_len"), ("model", "name"), ("train", "batch_size"),
                       ("train", "num_steps"), ("train", "seed")]:
        assert key in tree[group]


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "autoencoder", "kernel_len": 3, "latent_len": 6},
                                    "train": {"batch_size": 20, "num_steps": 100}}))
    config = load_config(path, ["train.num_steps=7", "optim.learning_rate=0.5", "data.augment=[reverse]"])
    assert config.model.name == "autoencoder"
    assert config.model.kernel_len == 3
    assert config.train.batch_size == 20
    assert config.train.num_steps == 7
    assert config.optim.learning_rate == 0.5
    assert config.data.augment == ["reverse"]


def test_int_accepted_for_float_and_schedule_mapping():
    config = load_config(None, ["optim.learning_rate=1", "model.latent_noise_std={schedule: linear, value: 0.3, end_value: 0}"])
    assert config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
    assert config.model.latent_noise_std == {"schedule": "linear", "value": 0.3, "end_value": 0}


@pytest.mark.parametrize("overrides, message", [
    (["train.batch_sise=3"], r"unknown config key 'train.batch_sise' \(did you mean train.batch_size"),
    (["trian.seed=3"], r"unknown config group 'trian'.*did you mean train"),
    (["train.num_steps=abc"], r"train.num_steps: expected an integer, got str 'abc'"),
    (["train.num_steps=1.5"], r"train.num_steps: expected an integer"),
    (["train.batch_size=0"], r"train.batch_size must be positive, got 0"),
    (["data.window_len=63"], r"data.window_len \(63\) must be divisible by model.pool_size \*\* model.n_conv_and_pool"),
    (["model.name=dilatd"], r"unknown model 'dilatd' \(did you mean dilated\?\)"),
    (["model.kernel_len=8"], r"kernel_len must be odd"),
    (["data.proportions=[0.5, 0.5, 0.5]"], r"data.proportions must be three non-negative numbers"),
    (["data.augment=[flip]"], r"data.augment: unknown augmentation 'flip'"),
    (["model.input_dropout=1.0"], r"model.input_dropout: value 1.0 out of range"),
    (["model.latent_noise_std={schedule: wobble}"], r"model.latent_noise_std.schedule: unknown schedule 'wobble'"),
    (["model.neighbour_loss_weight=0.2"], r"neighbour_loss_weight needs per-position latents"),
    (["optim.optimizer=adamm"], r"unknown optimizer 'adamm' \(did you mean adam"),
    (["optim.warmup_steps=500", "train.num_steps=100"], r"warmup_steps \(500\)"),
    (["train.devices=zero"], r"train.devices must be 'all' or a positive integer"),
    (["nodot=1"], r"expected group.name"),
    (["train.seed"], r"expected key=value"),
    (["model.name=autoencoder", "model.kernel_len=100"], r"model.kernel_len \(100\) must not exceed data.window_len"),
])
def test_errors_are_one_line_and_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=f"config file {bad}: not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  latnt_len: 3\n")
    with pytest.raises(ConfigError, match=f"config file {unknown}: unknown config key 'model.latnt_len'.*latent_len"):
        load_config(unknown)


def test_save_and_reload_round_trip(tmp_path):
    config = load_config(None, ["model.name=dilated", "model.dilations=[1, 3]", "train.seed=5"])
    config_lib.save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config


def test_architecture_changes_lists_only_fixed_fields():
    old = Config()
    new = load_config(None, ["model.latent_len=32", "data.window_len=128", "optim.learning_rate=0.1",
                             "train.num_steps=10", "model.latent_noise_std=0.1"])
    changes = config_lib.architecture_changes(old, new)
    assert sorted(c.split(":")[0] for c in changes) == ["data.window_len", "model.latent_len"]


def test_devices_all_or_positive_count():
    assert load_config(None, ["train.devices=4"]).train.devices == 4
    assert load_config(None, ["train.devices='2'"]).train.devices == 2
    assert load_config(None, []).train.devices == "all"
    with pytest.raises(ConfigError, match="train.devices must be 'all' or a positive integer, got 0"):
        load_config(None, ["train.devices=0"])


def test_exponent_without_dot_is_a_number():
    assert load_config(None, ["optim.learning_rate=1e30"]).optim.learning_rate == 1e30
    with pytest.raises(ConfigError, match="optim.learning_rate: expected a number, got str 'fast'"):
        load_config(None, ["optim.learning_rate=fast"])
