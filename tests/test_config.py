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
    (["data.window_len=63"], r"^data.window_len 63 is not divisible by model.pool_size \*\* model.n_conv_and_pool = 2 \*\* 1"),
    (["model.name=dilatd"], r"unknown model 'dilatd' \(did you mean dilated\?\)"),
    (["model.kernel_len=8"], r"^model.kernel_len must be odd, got 8"),
    (["model.name=dilated", "model.kernel_len=4"], r"^model.kernel_len must be odd for the dilated model"),
    (["model.name=dilated", "model.dilations=[1, 0]"], r"^model.dilations must be a non-empty sequence"),
    (["model.pool=min"], r"^model.pool must be 'max' or 'avg', got 'min'"),
    (["data.proportions=[0.5, 0.5, 0.5]"], r"^data.proportions must sum to 1"),
    (["data.proportions=[0.5, 0.5]"], r"^data.proportions must be three numbers"),
    (["data.split=block"], r"^data.split: unknown strategy 'block' \(did you mean blocks"),
    (["data.augment=[flip]"], r"^data.augment: unknown augmentation\(s\) \['flip'\]"),
    (["data.augment=[]"], r"^data.augment must name at least one"),
    (["model.input_dropout=1.0"], r"^model.input_dropout: value must be in \[0, 1\), got 1$"),
    (["model.latent_noise_std={schedule: wobble}"], r"^model.latent_noise_std: unknown schedule 'wobble'"),
    (["model.latent_noise_std={schedule: linear, valu: 1}"], r"^model.latent_noise_std: unknown schedule field 'valu'"),
    (["model.neighbour_loss_weight=0.2"], r"neighbour_loss_weight needs per-position latents"),
    (["optim.optimizer=adamm"], r"^optim.optimizer: unknown optimizer 'adamm' \(did you mean adam"),
    (["optim.schedule=cosin"], r"^optim.schedule: unknown schedule 'cosin' \(did you mean cosine"),
    (["optim.warmup_steps=500", "train.num_steps=100"], r"^optim.warmup_steps \(500\) must be smaller"),
    (["optim.schedule=piecewise", "optim.boundaries=[10]"], r"^optim.boundaries: got 1 boundaries and 0"),
    (["train.devices=zero"], r"train.devices must be 'all' or a positive integer"),
    (["nodot=1"], r"expected group.name"),
    (["train.seed"], r"expected key=value"),
    (["model.name=autoencoder", "model.kernel_len=100"], r"^model.kernel_len 100 is longer than data.window_len 64"),
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
    with pytest.raises(ConfigError, match=f"config file {bad}: not valid YAML .*line 2"):
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


@pytest.mark.parametrize("override, message", [
    ("optim.learning_rate=nan", r"^optim.learning_rate: expected a finite number, got 'nan'$"),
    ("optim.learning_rate=inf", r"^optim.learning_rate: expected a finite number, got 'inf'$"),
    ("optim.learning_rate=1e999", r"^optim.learning_rate: expected a finite number, got inf$"),
    ("optim.learning_rate=-.inf", r"^optim.learning_rate: expected a finite number, got -inf$"),
    ("optim.b2=.nan", r"^optim.b2: expected a finite number, got nan$"),
    ("optim.learning_rate=-0.1", r"^optim.learning_rate must be > 0, got -0.1$"),
    ("optim.b1=1", r"^optim.b1 must be in \[0, 1\), got 1$"),
    ("optim.momentum=1.5", r"^optim.momentum must be in \[0, 1\), got 1.5$"),
    ("optim.weight_decay=-1e-4", r"^optim.weight_decay must be >= 0"),
    ("optim.grad_clip_norm=-1", r"^optim.grad_clip_norm must be >= 0"),
    ("optim.end_value=.inf", r"^optim.end_value: expected a finite number"),
    ("optim.end_value=-1", r"^optim.end_value must be >= 0"),
    ("optim.decay_rate=0", r"^optim.decay_rate must be > 0"),
    ("optim.scales=[0.5, .nan]", r"^optim.scales\[1\]: expected a finite number"),
    ("data.max_n_fraction=.nan", r"^data.max_n_fraction: expected a finite number"),
    ("data.proportions=[.nan, 0.5, 0.5]", r"^data.proportions\[0\]: expected a finite number"),
    ("model.hidden_dropout=1e999", r"^model.hidden_dropout: expected a finite number"),
    ("model.hidden_dropout=1.0", r"^model.hidden_dropout must be in \[0, 1\), got 1.0"),
    ("model.neighbour_loss_weight=nan", r"^model.neighbour_loss_weight: expected a finite number"),
    ("model.input_dropout=.nan", r"^model.input_dropout: value must be a finite number, got nan$"),
    ("model.latent_noise_std=-1", r"^model.latent_noise_std: value must be >= 0, got -1$"),
    ("model.input_dropout={schedule: linear, value: 0.1, end_value: .nan}",
     r"^model.input_dropout: end_value must be a finite number, got nan$"),
    ("model.latent_noise_std={schedule: piecewise, boundaries: [5], values: [0.1, 1e999]}",
     r"^model.latent_noise_std: values\[1\] must be a finite number, got inf$"),
    ("model.latent_noise_std={schedule: piecewise, boundaries: [5, 2], values: [0, 0, 0]}",
     r"^model.latent_noise_std: boundaries: boundaries must be non-negative and strictly increasing"),
])
def test_non_finite_and_out_of_range_numbers_name_the_setting(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_numbers_in_yaml_files_are_checked_and_exponents_without_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 1e-3\nmodel:\n  latent_noise_std: {schedule: linear, value: 2e-1}\n")
    config = load_config(path)
    assert config.optim.learning_rate == 1e-3 and config.model.latent_noise_std["value"] == 0.2
    for text, message in [("optim:\n  learning_rate: 1e999\n", "optim.learning_rate: expected a finite number"),
                          ("optim:\n  b2: .nan\n", "optim.b2: expected a finite number"),
                          ("model:\n  input_dropout: .inf\n", "model.input_dropout: value must be a finite number")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):  # type errors name the file too, range errors the setting
            load_config(path)


@pytest.mark.parametrize("content, message", [
    (b"", " is empty: it holds no settings"),
    (b"# only a comment\n", " is empty: it holds no settings"),
    (b"train:\n  seed: 1\n  seed: 2\n", r": not valid YAML \(duplicate key 'seed' \(first on line 2\) on line 3\)"),
    (b"train:\n  seed: 1\nmodel: {}\ntrain: {}\n", r": not valid YAML \(duplicate key 'train' \(first on line 1\) on line 4\)"),
    (b"train:\n  seed: 1\n# caf\xe9\n", r": not UTF-8 text \(byte 0xe9 on line 3\)"),
])
def test_empty_duplicate_and_non_utf8_yaml_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^config file {path}{message}$"):
        load_config(path)
    with pytest.raises(ConfigError, match=f"^config file {path}"):
        config_lib.read_yaml(path)


def test_yaml_with_a_byte_order_mark_reads():
    import tempfile
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml") as f:
        f.write("\ufefftrain:\n  seed: 4\n".encode())
        f.flush()
        assert load_config(f.name).train.seed == 4


def test_differences_lists_each_changed_setting_or_only_the_keys_asked():
    old = Config()
    new = load_config(None, ["optim.learning_rate=0.1", "train.num_steps=10", "model.latent_len=32"])
    assert config_lib.differences(old, new) == [
        "model.latent_len: 64 -> 32", "optim.learning_rate: 0.003 -> 0.1", "train.num_steps: 3000 -> 10"]
    assert config_lib.differences(old, new, keys=["train.num_steps", "data.window_len"]) == ["train.num_steps: 3000 -> 10"]
    assert config_lib.differences(new, new) == []
    assert config_lib.architecture_changes(old, new) == ["model.latent_len: 64 -> 32"]
    assert "optim.learning_rate" in config_lib.setting_keys()


def test_names_come_from_their_owning_modules():
    from jaxseq import loader, models, optim, splits
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.name=nope"])
    assert str(info.value).endswith("choose one of " + ", ".join(models.MODELS))
    for name in models.MODELS:
        overrides = ["model.kernel_len=3"] if name != "multilayer" else []
        assert load_config(None, [f"model.name={name}", *overrides]).model.name == name
    for name in optim.OPTIMIZERS:
        assert load_config(None, [f"optim.optimizer={name}"]).optim.optimizer == name
    for name in optim.SCHEDULES:
        extra = ["optim.warmup_steps=10"] if name == "warmup_cosine" else []
        assert load_config(None, [f"optim.schedule={name}", *extra]).optim.schedule == name
    for name in splits.STRATEGIES:
        assert load_config(None, [f"data.split={name}"]).data.split == name
    assert load_config(None, [f"data.augment=[{', '.join(loader.AUGMENTATIONS)}]"]).data.augment == list(
        loader.AUGMENTATIONS)
    # optim.py has no defaults of its own: the optimiser built from a default config is config.py's (adam, 3e-3).
    config = Config()
    schedule = optim.create_learning_rate_schedule(config.optim, config.train.num_steps)
    assert float(schedule(0)) == pytest.approx(config.optim.learning_rate)
    assert not hasattr(config_lib, "MODEL_NAMES") and not hasattr(config_lib, "AUGMENTATIONS")
