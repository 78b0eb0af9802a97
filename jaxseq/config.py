"""Typed run configuration: dataclasses, YAML loading, ``--set a.b=value`` overrides, validation.

A config has four groups, ``data``, ``model``, ``optim`` and ``train``. The keys ``data.fasta``,
``data.window_len``, ``model.name``, ``train.batch_size``, ``train.num_steps`` and ``train.seed``
are part of the public interface: scripts and other tools rely on these exact names.

Everything is checked before any compute starts: unknown keys (with close matches), wrong types,
non-finite numbers, out-of-range values and combinations that cannot work (a window not divisible by
the pooling product, neighbour loss on a model without per-position latents, ...). Each problem is
reported as one line naming the setting. The names (models, optimisers, schedules, split kinds,
augmentations) and the checks of the modules that use a setting live in those modules; this one
imports the names and calls the checks, turning their errors into :class:`ConfigError`. The
defaults of every setting are the dataclass fields below.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from jaxseq import loader, losses, models, optim, splits
from jaxseq.layers import COMPUTE_DTYPES, CONV_IMPLS


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, out of range, or inconsistent with another."""


@dataclasses.dataclass
class DataConfig:
    fasta: str = ""  # empty: the bundled lambda phage genome
    cache_dir: str = ""  # empty: $JAXSEQ_CACHE_DIR or ~/.cache/jaxseq
    window_len: int = 64
    split: str = "blocks"  # "blocks" or "records"
    block_len: int = 2_000
    proportions: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
    valid_records: list[str] = dataclasses.field(default_factory=list)
    test_records: list[str] = dataclasses.field(default_factory=list)
    split_seed: int = 0
    max_n_fraction: float = 0.0
    augment: list[str] = dataclasses.field(default_factory=lambda: ["identity", "reverse_complement"])
    stride: int = 0  # 0: random window starts; > 0: shuffled sequential tiling with this stride
    prefetch: int = 4
    records: list[str] = dataclasses.field(default_factory=list)  # names or globs; empty: every record
    regions: str = ""  # BED file: only windows wholly inside these intervals (empty: everywhere)
    exclude: str = ""  # BED file: no window touches these intervals (a blacklist)
    aliases: str = ""  # record aliases: two columns (name in FASTA, alias) or an NCBI assembly report
    # Leak removal by content: "drop_train" / "drop_eval" cut out of train / valid+test every stretch
    # covered by a canonical k-mer (k = dedup_k) found across the train/eval boundary (jaxseq.shared_kmers).
    dedup: str = "none"
    dedup_k: int = splits.DEFAULT_K


@dataclasses.dataclass
class ModelConfig:
    name: str = "multilayer"
    kernel_len: int = 9
    latent_len: int = 64
    hidden_len: int = 24
    pool: str = "max"
    pool_size: int = 2
    n_conv_and_pool: int = 1
    n_conv_before_pool: int = 2
    n_linear: int = 2
    hidden_dropout: float = 0.0
    dilations: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8])
    # Scheduled during training: a number (constant) or a schedule mapping, see optim.py.
    input_dropout: Any = 0.0
    latent_noise_std: Any = 0.0
    # The prototype's mix: (1 - w) * cross-entropy + w * neighbour loss.
    neighbour_loss_weight: float = 0.0
    # Layer implementation: flax (cuDNN on GPUs), cpu (hand-written kernels), auto (cpu on the CPU backend).
    conv_impl: str = "auto"
    # Training objective: "ce" (log-softmax cross-entropy) or the prototype's "bce_softmax"; evaluation reports CE.
    objective: str = "ce"


@dataclasses.dataclass
class OptimConfig:
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    grad_clip_norm: float = 0.0  # 0: off
    schedule: str = "cosine"
    warmup_steps: int = 0  # linear warmup from 0 (any schedule)
    end_value: float = 0.0  # cosine / warmup_cosine final learning rate
    decay_rate: float = 0.1  # exponential: factor per transition_steps
    transition_steps: int = 0  # exponential; 0 = num_steps
    staircase: bool = False  # exponential
    boundaries: list[int] = dataclasses.field(default_factory=list)  # piecewise
    scales: list[float] = dataclasses.field(default_factory=list)  # piecewise


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 128
    num_steps: int = 3_000
    seed: int = 0
    steps_per_call: int = 4  # steps per jitted call (one lax.scan): amortises dispatch; see steps.train_steps
    log_every: int = 100
    eval_every: int = 1_000
    eval_max_windows: int = 0  # 0: the whole validation split
    checkpoint_every: int = 1_000
    max_to_keep: int = 3
    histogram_every: int = 1_000  # 0: off
    examples: int = 3  # reconstruction examples printed at each evaluation
    devices: str | int = "all"  # "all" or a number of local devices
    skip_nonfinite: int = 0  # batches with non-finite loss/gradients that may be skipped
    compute_dtype: str = "float32"  # convolutions and dense layers; params, optimiser state and loss stay float32


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)


# Fields that define the model and its data shape: a resumed run must keep them.
ARCHITECTURE_KEYS = tuple(
    [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
     if f.name not in ("input_dropout", "latent_noise_std", "neighbour_loss_weight", "hidden_dropout",
                       "conv_impl", "objective")]
    + ["data.window_len"]
)


def _groups() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Config)}


def _close(name: str, choices) -> str:
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Checks ``value`` against the field annotation, converting int -> float where harmless."""
    hint = annotation
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {hint}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # "1e30" written where no YAML resolver saw it (e.g. a quoted value)
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(number):  # .nan, .inf, 1e999: nothing downstream can use them
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(config: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    groups = _groups()
    if len(parts) != 2:
        raise ConfigError(
            f"setting {key!r}: expected group.name with group one of {', '.join(groups)}{_close(key, _all_keys())}")
    group, name = parts
    if group not in groups:
        raise ConfigError(f"unknown config group {group!r} in {key!r}{_close(group, groups)}")
    hints = _field_types(groups[group])
    if name not in hints:
        raise ConfigError(f"unknown config key {key!r}{_close(key, _all_keys())}")
    setattr(getattr(config, group), name, _coerce(key, value, hints[name]))


def _all_keys() -> list[str]:
    return [f"{g}.{n}" for g, cls in _groups().items() for n in _field_types(cls)]


def from_dict(tree: dict, base: Config | None = None) -> Config:
    """Builds a config from a nested dict (as in YAML), on top of ``base`` or the defaults.

    Raises:
      ConfigError: unknown group or key, or a value of the wrong type.
    """
    config = base if base is not None else Config()
    if tree is None:
        return config
    if not isinstance(tree, dict):
        raise ConfigError(f"config must be a mapping of groups, got {type(tree).__name__}")
    for group, values in tree.items():
        if group not in _groups():
            raise ConfigError(f"unknown config group {group!r}{_close(str(group), _groups())}")
        if not isinstance(values, dict):
            raise ConfigError(f"config group {group!r} must be a mapping, got {values!r}")
        for name, value in values.items():
            _apply(config, f"{group}.{name}", value)
    return config


class _SettingsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads ``1e-3`` (no dot) as a number.

    PyYAML keeps the last of two equal keys silently, so a setting written twice would lose one
    value unseen; and YAML 1.1 reads an exponent without a dot as a string.
    """


def _unique_mapping(loader_: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader_.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # unhashable key: construct_mapping reports it
            pass
    return loader_.construct_mapping(node, deep=deep)


_SettingsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
_SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is not None and problem:
        return f"{problem} on line {mark.line + 1}"
    return (str(err).splitlines() or [type(err).__name__])[0]


def read_yaml(path: str | Path) -> Any:
    """Reads a YAML settings file (a config, a sweep spec).

    Args:
      path: the file.

    Returns:
      The parsed document (not None).

    Raises:
      ConfigError: one line naming the file: it is missing or unreadable, not UTF-8, not YAML, has a
        key twice in one mapping, or is empty.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read it ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line})") from None
    try:
        tree = yaml.load(text, Loader=_SettingsLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML ({_yaml_problem(err)})") from None
    if tree is None:
        raise ConfigError(f"config file {path} is empty: it holds no settings")
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; the value is read as YAML (numbers, lists, ...)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.num_steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_SettingsLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot read value {raw!r}: {_yaml_problem(err)}") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Loads YAML (if given), applies ``--set`` overrides, validates.

    Args:
      path: a YAML file with groups ``data``, ``model``, ``optim``, ``train``; None for defaults.
      overrides: strings ``"group.key=value"``, applied in order after the file.

    Returns:
      The validated :class:`Config`.

    Raises:
      ConfigError: one line naming the file or setting and what is wrong.
    """
    config = Config()
    if path is not None:
        tree = read_yaml(path)
        try:
            from_dict(tree, config)
        except ConfigError as err:
            raise ConfigError(f"config file {path}: {err}") from None
    for text in overrides:
        key, value = parse_override(text)
        _apply(config, key, value)
    validate(config)
    return config


def _owner_check(key: str, check: Callable[[], Any]) -> None:
    """Runs an owning module's check, turning its error into a ConfigError naming the setting.

    ``key`` is a setting (``"data.augment"``) or a group (``"optim"``) whose checks start each message
    with the field they name (``"learning_rate must be > 0, ..."``).
    """
    try:
        check()
    except ValueError as err:  # LoaderError and SplitError are ValueErrors too
        group, _, field = key.partition(".")
        text = str(err)
        first = re.match(r"\w*", text)[0]
        if first == field or (not field and first in _field_types(_groups()[group])):
            raise ConfigError(f"{group}.{text}") from None
        raise ConfigError(f"{key}: {text}") from None


def _check_data_restrictions(d: DataConfig) -> None:
    """data.records/regions/exclude/aliases: shapes and files here; contents are read by jaxseq.splits."""
    for i, pattern in enumerate(d.records):
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigError(f"data.records[{i}]: expected a record name or glob, got {pattern!r}")
    for key in ("regions", "exclude", "aliases"):
        value = getattr(d, key)
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"data.{key}: file {value} does not exist")


def _model_settings_error(err: ValueError) -> ConfigError:
    """A models.py error (``"ClassName: kernel_len must be odd, ..."``) with its fields named as settings."""
    fields = sorted((n for n in _field_types(ModelConfig) if n != "name"), key=len, reverse=True)
    text = re.sub(r"^\w+: ", "", str(err))
    text = re.sub(r"\b(window_len|" + "|".join(fields) + r")\b",
                  lambda m: ("data." if m[1] == "window_len" else "model.") + m[1], text)
    return ConfigError(text)


def _check_counts(config: Config) -> None:
    """Integer settings that must be positive, or >= 0."""
    d, m, t = config.data, config.model, config.train
    for key, value in [("data.window_len", d.window_len), ("data.block_len", d.block_len),
                       ("model.kernel_len", m.kernel_len), ("model.latent_len", m.latent_len),
                       ("model.hidden_len", m.hidden_len), ("model.pool_size", m.pool_size),
                       ("model.n_conv_and_pool", m.n_conv_and_pool), ("model.n_conv_before_pool", m.n_conv_before_pool),
                       ("model.n_linear", m.n_linear), ("train.batch_size", t.batch_size),
                       ("train.num_steps", t.num_steps), ("train.steps_per_call", t.steps_per_call),
                       ("train.log_every", t.log_every), ("train.eval_every", t.eval_every),
                       ("train.checkpoint_every", t.checkpoint_every), ("train.max_to_keep", t.max_to_keep)]:
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    for key, value in [("data.stride", d.stride), ("data.prefetch", d.prefetch), ("train.seed", t.seed),
                       ("train.eval_max_windows", t.eval_max_windows), ("train.histogram_every", t.histogram_every),
                       ("train.examples", t.examples), ("train.skip_nonfinite", t.skip_nonfinite),
                       ("data.split_seed", d.split_seed)]:
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")


def _check_data(d: DataConfig) -> None:
    if d.split not in splits.STRATEGIES:
        raise ConfigError(f"data.split: unknown strategy {d.split!r}{_close(d.split, splits.STRATEGIES)}; "
                          f"choose one of {', '.join(splits.STRATEGIES)}")
    _owner_check("data.proportions", lambda: splits.check_proportions(d.proportions))
    if not 0.0 <= d.max_n_fraction <= 1.0:
        raise ConfigError(f"data.max_n_fraction must be in [0, 1], got {d.max_n_fraction}")
    _owner_check("data.augment", lambda: loader.check_augment(d.augment))
    _check_data_restrictions(d)
    if d.dedup not in splits.DEDUP_MODES:
        raise ConfigError(f"data.dedup: unknown mode {d.dedup!r}{_close(d.dedup, splits.DEDUP_MODES)}; "
                          f"choose one of {', '.join(splits.DEDUP_MODES)}")
    if not 1 <= d.dedup_k <= splits.MAX_K:
        raise ConfigError(f"data.dedup_k must be in 1..{splits.MAX_K} (k-mers are packed in 64 bits), got {d.dedup_k}")


def _check_model(config: Config) -> None:
    m = config.model
    if m.name not in models.MODELS:
        raise ConfigError(f"model.name: unknown model {m.name!r}{_close(m.name, models.MODELS)}; "
                          f"choose one of {', '.join(models.MODELS)}")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(m).items() if k != "name"}
    try:  # builds the unbound module only: its constructor checks its fields
        models.create_model(m.name, config.data.window_len, **fields)
    except ValueError as err:
        raise _model_settings_error(err) from None
    _owner_check("model", lambda: optim.check_hparams(m))
    if not 0.0 <= m.neighbour_loss_weight < 1.0:
        raise ConfigError(f"model.neighbour_loss_weight must be in [0, 1), got {m.neighbour_loss_weight}")
    if m.name == "multilayer" and m.neighbour_loss_weight > 0:
        raise ConfigError("model.neighbour_loss_weight needs per-position latents (autoencoder or dilated); "
                          "the multilayer latent is one vector per window")
    if m.objective not in losses.OBJECTIVES:
        raise ConfigError(f"model.objective: unknown objective {m.objective!r}{_close(m.objective, losses.OBJECTIVES)}; "
                          f"choose one of {', '.join(losses.OBJECTIVES)}")
    if m.name == "dilated" and m.kernel_len % 2 == 0:
        raise ConfigError(f"model.kernel_len must be odd for the dilated model, got {m.kernel_len}")


def validate(config: Config) -> None:
    """Checks ranges and combinations, calling the checks of the modules that own the settings.

    Raises:
      ConfigError: the first problem found, naming the setting.
    """
    _check_counts(config)
    _check_data(config.data)
    _check_model(config)
    _owner_check("optim", lambda: optim.check_optim(config.optim, config.train.num_steps))
    t = config.train
    for key, value, choices in [("model.conv_impl", config.model.conv_impl, CONV_IMPLS),
                                ("train.compute_dtype", t.compute_dtype, COMPUTE_DTYPES)]:
        if value not in choices:
            raise ConfigError(f"{key}: unknown value {value!r}{_close(str(value), choices)}; "
                              f"choose one of {', '.join(choices)}")
    if t.devices != "all":
        try:
            if isinstance(t.devices, bool) or int(t.devices) <= 0:
                raise ValueError
            t.devices = int(t.devices)
        except ValueError:
            raise ConfigError(f"train.devices must be 'all' or a positive integer, got {t.devices!r}") from None


def setting_keys() -> list[str]:
    """Every setting, ``"group.name"``, in declaration order."""
    return _all_keys()


def differences(old: Config, new: Config, keys: typing.Iterable[str] | None = None) -> list[str]:
    """``"group.name: old -> new"`` for each setting that differs, in declaration order.

    Args:
      old, new: two configs.
      keys: only these settings (``"group.name"``); None for all of them.

    Returns:
      One string per differing setting, values as ``repr``.
    """
    a, b = old.to_dict(), new.to_dict()
    wanted = None if keys is None else set(keys)
    out = []
    for key in _all_keys():
        group, name = key.split(".")
        if (wanted is None or key in wanted) and a[group][name] != b[group][name]:
            out.append(f"{key}: {a[group][name]!r} -> {b[group][name]!r}")
    return out


def architecture_changes(old: Config, new: Config) -> list[str]:
    """Settings that differ between two configs and that a resumed run cannot change."""
    return differences(old, new, ARCHITECTURE_KEYS)


def save_config(config: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
