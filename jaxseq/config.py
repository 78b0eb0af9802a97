"""Typed run configuration: dataclasses, YAML loading, ``--set a.b=value`` overrides, validation.

A config has four groups, ``data``, ``model``, ``optim`` and ``train``. The keys ``data.fasta``,
``data.window_len``, ``model.name``, ``train.batch_size``, ``train.num_steps`` and ``train.seed``
are part of the public interface: scripts and other tools rely on these exact names.

Everything is checked here, before any compute starts: unknown keys (with close matches), wrong
types, out-of-range values and combinations that cannot work (a window not divisible by the pooling
product, neighbour loss on a model without per-position latents, ...). Each problem is reported as
one line naming the setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxseq.layers import COMPUTE_DTYPES, CONV_IMPLS

MODEL_NAMES = ("autoencoder", "multilayer", "dilated")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "piecewise")
HPARAM_SCHEDULES = ("constant", "linear", "cosine", "piecewise")
AUGMENTATIONS = ("identity", "reverse", "complement", "reverse_complement")


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
    steps_per_call: int = 4  # steps per jitted call: amortises dispatch (<= 4 unrolled, more scanned; see train_steps)
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
                       "conv_impl")]
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e30" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
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


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; the value is read as YAML (numbers, lists, ...)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.num_steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot read value {raw!r}: {err.__class__.__name__}") from None
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
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
        try:
            from_dict(tree, config)
        except ConfigError as err:
            raise ConfigError(f"config file {path}: {err}") from None
    for text in overrides:
        key, value = parse_override(text)
        _apply(config, key, value)
    validate(config)
    return config


def _check_schedule_value(key: str, spec: Any, upper: float | None) -> None:
    """Hyperparameter schedules: a number, or a mapping understood by optim.create_hparam_schedule."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        values = [float(spec)]
    elif isinstance(spec, dict):
        kind = spec.get("schedule", "constant")
        if kind not in HPARAM_SCHEDULES:
            raise ConfigError(f"{key}.schedule: unknown schedule {kind!r}; choose one of {', '.join(HPARAM_SCHEDULES)}")
        allowed = {"schedule", "value", "end_value", "transition_begin", "transition_steps", "boundaries", "values"}
        for name in spec:
            if name not in allowed:
                raise ConfigError(f"{key}: unknown schedule field {name!r}{_close(name, allowed)}")
        values = [spec.get("value", 0.0), spec.get("end_value", spec.get("value", 0.0)), *spec.get("values", [])]
        if kind == "piecewise" and len(spec.get("values", [])) != len(spec.get("boundaries", [])) + 1:
            raise ConfigError(f"{key}: piecewise needs one more value than boundaries")
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{key}: schedule values must be numbers, got {v!r}")
    else:
        raise ConfigError(f"{key}: expected a number or a schedule mapping, got {spec!r}")
    for v in values:
        if v < 0 or (upper is not None and v >= upper) or not math.isfinite(v):
            bound = f"in [0, {upper})" if upper is not None else ">= 0"
            raise ConfigError(f"{key}: value {v} out of range, must be {bound}")


def validate(config: Config) -> None:
    """Checks ranges and combinations.

    Raises:
      ConfigError: the first problem found, naming the setting.
    """
    d, m, o, t = config.data, config.model, config.optim, config.train

    def positive(key: str, value) -> None:
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")

    for key, value in [("data.window_len", d.window_len), ("data.block_len", d.block_len),
                       ("model.kernel_len", m.kernel_len), ("model.latent_len", m.latent_len),
                       ("model.hidden_len", m.hidden_len), ("model.pool_size", m.pool_size),
                       ("model.n_conv_and_pool", m.n_conv_and_pool), ("model.n_conv_before_pool", m.n_conv_before_pool),
                       ("model.n_linear", m.n_linear), ("train.batch_size", t.batch_size),
                       ("train.num_steps", t.num_steps), ("train.steps_per_call", t.steps_per_call),
                       ("train.log_every", t.log_every), ("train.eval_every", t.eval_every),
                       ("train.checkpoint_every", t.checkpoint_every), ("train.max_to_keep", t.max_to_keep),
                       ("optim.learning_rate", o.learning_rate)]:
        positive(key, value)
    for key, value in [("data.stride", d.stride), ("data.prefetch", d.prefetch), ("train.seed", t.seed),
                       ("train.eval_max_windows", t.eval_max_windows), ("train.histogram_every", t.histogram_every),
                       ("train.examples", t.examples), ("train.skip_nonfinite", t.skip_nonfinite),
                       ("optim.warmup_steps", o.warmup_steps), ("optim.grad_clip_norm", o.grad_clip_norm),
                       ("optim.transition_steps", o.transition_steps),
                       ("optim.weight_decay", o.weight_decay), ("data.split_seed", d.split_seed)]:
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if d.split not in ("blocks", "records"):
        raise ConfigError(f"data.split: unknown strategy {d.split!r}; choose blocks or records")
    if len(d.proportions) != 3 or any(p < 0 for p in d.proportions) or not math.isclose(sum(d.proportions), 1.0):
        raise ConfigError(f"data.proportions must be three non-negative numbers (train, valid, test) summing to 1, "
                          f"got {d.proportions}")
    if not 0.0 <= d.max_n_fraction <= 1.0:
        raise ConfigError(f"data.max_n_fraction must be in [0, 1], got {d.max_n_fraction}")
    if not d.augment:
        raise ConfigError("data.augment must list at least one of " + ", ".join(AUGMENTATIONS))
    for a in d.augment:
        if a not in AUGMENTATIONS:
            raise ConfigError(f"data.augment: unknown augmentation {a!r}{_close(a, AUGMENTATIONS)}; "
                              f"choose from {', '.join(AUGMENTATIONS)}")
    if m.name not in MODEL_NAMES:
        raise ConfigError(f"model.name: unknown model {m.name!r}{_close(m.name, MODEL_NAMES)}; "
                          f"choose one of {', '.join(MODEL_NAMES)}")
    if m.pool not in ("max", "avg"):
        raise ConfigError(f"model.pool must be max or avg, got {m.pool!r}")
    if not 0.0 <= m.hidden_dropout < 1.0:
        raise ConfigError(f"model.hidden_dropout must be in [0, 1), got {m.hidden_dropout}")
    _check_schedule_value("model.input_dropout", m.input_dropout, 1.0)
    _check_schedule_value("model.latent_noise_std", m.latent_noise_std, None)
    if not 0.0 <= m.neighbour_loss_weight < 1.0:
        raise ConfigError(f"model.neighbour_loss_weight must be in [0, 1), got {m.neighbour_loss_weight}")
    if m.name == "autoencoder" and m.kernel_len > d.window_len:
        raise ConfigError(f"model.kernel_len ({m.kernel_len}) must not exceed data.window_len ({d.window_len})")
    if m.name == "multilayer":
        reduction = m.pool_size ** m.n_conv_and_pool
        if d.window_len % reduction:
            raise ConfigError(f"data.window_len ({d.window_len}) must be divisible by model.pool_size ** "
                              f"model.n_conv_and_pool ({m.pool_size}**{m.n_conv_and_pool} = {reduction})")
        if m.kernel_len % 2 == 0:
            raise ConfigError(f"model.kernel_len must be odd for the multilayer model ('same' padding k//2), "
                              f"got {m.kernel_len}")
        if m.neighbour_loss_weight > 0:
            raise ConfigError("model.neighbour_loss_weight needs per-position latents (autoencoder or dilated); "
                              "the multilayer latent is one vector per window")
    if m.name == "dilated":
        if not m.dilations or any(x <= 0 for x in m.dilations):
            raise ConfigError(f"model.dilations must be a non-empty list of positive integers, got {m.dilations}")
        if m.kernel_len % 2 == 0:
            raise ConfigError(f"model.kernel_len must be odd for the dilated model, got {m.kernel_len}")
    if o.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optim.optimizer: unknown optimizer {o.optimizer!r}{_close(o.optimizer, OPTIMIZERS)}; "
                          f"choose one of {', '.join(OPTIMIZERS)}")
    if o.schedule not in LR_SCHEDULES:
        raise ConfigError(f"optim.schedule: unknown schedule {o.schedule!r}{_close(o.schedule, LR_SCHEDULES)}; "
                          f"choose one of {', '.join(LR_SCHEDULES)}")
    if o.schedule == "piecewise" and len(o.scales) != len(o.boundaries):
        raise ConfigError(f"optim.scales must have one entry per optim.boundaries entry "
                          f"({len(o.scales)} vs {len(o.boundaries)})")
    if o.warmup_steps and o.warmup_steps >= t.num_steps:
        raise ConfigError(f"optim.warmup_steps ({o.warmup_steps}) must be smaller than train.num_steps ({t.num_steps})")
    for key, value, choices in [("model.conv_impl", m.conv_impl, CONV_IMPLS),
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


def architecture_changes(old: Config, new: Config) -> list[str]:
    """Settings that differ between two configs and that a resumed run cannot change."""
    a, b = old.to_dict(), new.to_dict()
    changed = []
    for key in ARCHITECTURE_KEYS:
        group, name = key.split(".")
        if a[group][name] != b[group][name]:
            changed.append(f"{key}: {a[group][name]!r} -> {b[group][name]!r}")
    return changed


def save_config(config: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
