"""optax optimiser, learning-rate schedule and hyperparameter schedules from the ``optim`` config.

The config is an object with attributes, normally ``config.OptimConfig``, which holds the one set of
defaults; every field below must be present. :func:`check_optim` and :func:`check_hparams` hold
every check of these settings (``config.validate`` calls them before any compute); each error
message starts with the field it names.

======================  =============  ====================================================
field                   type           meaning
======================  =============  ====================================================
``optimizer``           str            ``"sgd"`` | ``"momentum"`` | ``"adam"`` | ``"adamw"``
``learning_rate``       float          base (peak) learning rate, > 0
``momentum``            float          ``"momentum"`` only (heavy-ball SGD), in [0, 1)
``weight_decay``        float          ``"adamw"`` only (decoupled, all parameters), >= 0;
                                       ignored by the other optimisers
``b1``, ``b2``          float          ``"adam"``, ``"adamw"``, each in [0, 1)
``grad_clip_norm``      float          clip gradients to this global norm; 0 = off
``schedule``            str            ``"constant"`` | ``"cosine"`` | ``"warmup_cosine"``
                                       | ``"exponential"`` | ``"piecewise"``
``warmup_steps``        int            linear warmup from 0 (see below), < ``num_steps``
``end_value``           float          final lr of ``"cosine"``/``"warmup_cosine"``; lower
                                       bound of ``"exponential"`` when > 0
``decay_rate``          float          ``"exponential"``: factor per ``transition_steps``, > 0
``transition_steps``    int            ``"exponential"``; 0 means ``num_steps``
``staircase``           bool           ``"exponential"``: decay in discrete steps
``boundaries``          list[int]      ``"piecewise"``: strictly increasing steps
``scales``              list[float]    ``"piecewise"``: one factor (>= 0) per boundary, applied
                                       from that step on; factors multiply cumulatively
======================  =============  ====================================================

Every float must be finite.

Hyperparameter schedules are read by :func:`create_hparam_schedules` from whichever config section
holds the fields ``input_dropout`` and ``latent_noise_std`` (each ``float | dict``, format below;
``train.py`` passes the ``model`` section).

Learning-rate schedules (``lr`` = ``learning_rate``, ``s`` = step, all step counts absolute):

* ``constant``: ``lr``.
* ``cosine``: ``lr`` -> ``end_value`` along a half cosine over ``num_steps``.
* ``warmup_cosine``: ``optax.warmup_cosine_decay_schedule``: 0 -> ``lr`` linearly over ``warmup_steps``,
  then cosine to ``end_value`` at ``num_steps``.
* ``exponential``: ``lr * decay_rate ** (s / transition_steps)``.
* ``piecewise``: ``lr`` times the product of ``scales[i]`` over boundaries with ``boundaries[i] <= s``
  (``optax.piecewise_constant_schedule``).

For every schedule but ``warmup_cosine`` (which has its own), ``warmup_steps > 0`` multiplies the
schedule by ``min(1, s / warmup_steps)``.

Hyperparameter schedules (``input_dropout``, ``latent_noise_std``) are a number (constant) or a dict:

* ``{"schedule": "constant", "value": v}``
* ``{"schedule": "linear", "value": v0, "end_value": v1, "transition_begin": b, "transition_steps": n}``:
  ``v0`` until step ``b``, linear to ``v1`` at ``b + n``, then ``v1``.
* ``{"schedule": "cosine", ...same keys...}``: as linear with a half-cosine ramp.
* ``{"schedule": "piecewise", "boundaries": [b1, ...], "values": [v0, v1, ...]}``: ``v0`` for
  ``s < b1``, ``v1`` for ``b1 <= s < b2``, ... (``len(values) == len(boundaries) + 1``; each value
  starts at its boundary, like the piecewise learning-rate schedule).

Defaults inside a schedule mapping: ``end_value`` 0.0, ``transition_begin`` 0, ``transition_steps``
0 meaning "until ``num_steps``". Values must be finite and in range (dropout in [0, 1), noise >= 0). Schedules return float32 scalars (strongly typed, so feeding them to a jitted step
never changes its signature) and accept traced steps.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "HPARAM_SCHEDULES",
    "HPARAMS",
    "OPTIMIZERS",
    "SCHEDULES",
    "check_hparams",
    "check_optim",
    "create_hparam_schedules",
    "create_learning_rate_schedule",
    "create_optimizer",
    "current_learning_rate",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "piecewise")
HPARAM_SCHEDULES = ("constant", "linear", "cosine", "piecewise")
#: Hyperparameters the models read from ``hparams``, with the valid range of each (low, high, high inclusive).
HPARAMS = {"input_dropout": (0.0, 1.0, False), "latent_noise_std": (0.0, float("inf"), True)}

#: The fields a hyperparameter schedule mapping may have.
HPARAM_FIELDS = ("schedule", "value", "end_value", "transition_begin", "transition_steps", "boundaries", "values")

_MISSING = object()


def _get(spec: Mapping[str, Any], key: str, default: Any = _MISSING, what: str = "schedule") -> Any:
    """Reads ``key`` from a schedule mapping, ``default`` when absent."""
    value = spec.get(key, default)
    if value is _MISSING:
        raise ValueError(f"{what} is missing {key!r}")
    return value


def _choice(field: str, kind: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        matches = difflib.get_close_matches(str(value), list(choices), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(matches)}?)" if matches else ""
        raise ValueError(f"{field}: unknown {kind} {value!r}{hint}; choices: {', '.join(choices)}")
    return value


def _number(field: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
            low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float after checking it is a finite number in the interval; errors name ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{field} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        if high == math.inf:
            bound = f"> {low:g}" if low_open else f">= {low:g}"
        else:
            bound = f"in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{field} must be {bound}, got {value:g}")
    return value


def _step_count(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{field} must be an integer >= 0, got {value!r}")
    return int(value)


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _check_piecewise(boundaries: Sequence[Any], n_values: int, n_expected: int, what: str) -> list[int]:
    if n_values != n_expected:
        raise ValueError(f"{what}: got {len(boundaries)} boundaries and {n_values} values/scales "
                         f"(expected {n_expected})")
    steps = [_step_count(what, b) for b in boundaries]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{what}: boundaries must be non-negative and strictly increasing, got {list(boundaries)}")
    return steps


def check_optim(cfg: Any, num_steps: int) -> None:
    """Checks every optimiser and learning-rate field (types, finiteness, ranges, combinations).

    Args:
      cfg: optim config (attributes as in the module docstring).
      num_steps: total training steps.

    Raises:
      ValueError: the first problem; the message starts with the field's name.
    """
    _choice("optimizer", "optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("schedule", "schedule", cfg.schedule, SCHEDULES)
    _number("learning_rate", cfg.learning_rate, 0.0, low_open=True)
    for field in ("b1", "b2", "momentum"):
        _number(field, getattr(cfg, field), 0.0, 1.0, high_open=True)
    for field in ("weight_decay", "grad_clip_norm", "end_value"):
        _number(field, getattr(cfg, field), 0.0)
    _number("decay_rate", cfg.decay_rate, 0.0, low_open=True)
    _step_count("transition_steps", cfg.transition_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    warmup = _step_count("warmup_steps", cfg.warmup_steps)
    if warmup and warmup >= num_steps:
        raise ValueError(f"warmup_steps ({warmup}) must be smaller than the number of training steps ({num_steps})")
    if cfg.schedule == "piecewise":
        _check_piecewise(cfg.boundaries, len(cfg.scales), len(cfg.boundaries), "boundaries")
        for i, scale in enumerate(cfg.scales):
            _number(f"scales[{i}]", scale, 0.0)


def create_learning_rate_schedule(cfg: Any, num_steps: int) -> optax.Schedule:
    """Builds the learning-rate schedule.

    Args:
      cfg: optim config (attributes as in the module docstring).
      num_steps: total training steps (the horizon of cosine decays).

    Returns:
      ``step -> float32 scalar`` (works on traced steps).

    Raises:
      ValueError: as :func:`check_optim`.
    """
    check_optim(cfg, num_steps)
    lr, name, warmup, end_value = float(cfg.learning_rate), cfg.schedule, int(cfg.warmup_steps), float(cfg.end_value)
    if name == "warmup_cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps, end_value)
        return lambda step: _f32(schedule(step))
    if name == "constant":
        schedule = optax.constant_schedule(lr)
    elif name == "cosine":
        schedule = optax.cosine_decay_schedule(lr, num_steps, alpha=end_value / lr)
    elif name == "exponential":
        schedule = optax.exponential_decay(lr, int(cfg.transition_steps) or num_steps, float(cfg.decay_rate),
                                           staircase=bool(cfg.staircase), end_value=end_value if end_value > 0 else None)
    else:  # piecewise
        scales = [float(x) for x in cfg.scales]
        schedule = optax.piecewise_constant_schedule(lr, dict(zip([int(b) for b in cfg.boundaries], scales)))

    if warmup == 0:
        return lambda step: _f32(schedule(step))

    def warmed_up(step):
        ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
        return _f32(ramp * schedule(step))

    return warmed_up


def create_optimizer(optim_cfg: Any, num_steps: int) -> optax.GradientTransformation:
    """Builds the optimiser: optional global-norm clipping, then the update rule with the scheduled lr.

    The whole chain is wrapped in ``optax.inject_hyperparams`` so the learning rate lives in the
    optimiser state (see :func:`current_learning_rate`).

    Args:
      optim_cfg: optim config (attributes as in the module docstring).
      num_steps: total training steps.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: as :func:`check_optim`.
    """
    schedule = create_learning_rate_schedule(optim_cfg, num_steps)  # checks every field
    name, clip, momentum = optim_cfg.optimizer, float(optim_cfg.grad_clip_norm), float(optim_cfg.momentum)
    b1, b2, weight_decay = float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.weight_decay)

    def make(learning_rate):
        if name == "sgd":
            rule = optax.sgd(learning_rate)
        elif name == "momentum":
            rule = optax.sgd(learning_rate, momentum=momentum)
        elif name == "adam":
            rule = optax.adam(learning_rate, b1=b1, b2=b2)
        else:
            rule = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
        return optax.chain(optax.clip_by_global_norm(clip), rule) if clip > 0 else rule

    return optax.inject_hyperparams(make)(learning_rate=schedule)


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of the most recent update (``schedule(0)`` before any update).

    Args:
      opt_state: state of an optimiser from :func:`create_optimizer`, possibly nested in tuples or
        other optax states.

    Returns:
      float32 scalar.

    Raises:
      ValueError: no injected learning rate in the state.
    """
    stack = [opt_state]
    while stack:
        node = stack.pop()
        hyperparams = getattr(node, "hyperparams", None)
        if isinstance(hyperparams, Mapping) and "learning_rate" in hyperparams:
            return hyperparams["learning_rate"]
        if isinstance(node, (tuple, list)):
            stack.extend(reversed(node))
        elif hasattr(node, "inner_state"):
            stack.append(node.inner_state)
    raise ValueError("no injected learning_rate in this optimiser state (build it with create_optimizer)")


def _check_hparam(name: str, spec: Any) -> dict[str, Any]:
    """One hyperparameter's spec as a full mapping (a number is a constant), after checking it."""
    low, high, high_inclusive = HPARAMS[name]

    def value(field: str, v: Any) -> float:
        return _number(f"{name}: {field}", v, low, high, high_open=not high_inclusive)

    if isinstance(spec, (int, float, np.number)) and not isinstance(spec, bool):
        return {"schedule": "constant", "value": value("value", spec)}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{name}: expected a number or a schedule mapping, got {spec!r}")
    for field in spec:
        if field not in HPARAM_FIELDS:
            _choice(name, "schedule field", field, HPARAM_FIELDS)
    kind = _choice(name, "schedule", spec.get("schedule", "constant"), HPARAM_SCHEDULES)
    if kind == "piecewise":
        boundaries, values = list(_get(spec, "boundaries", what=f"{name} schedule")), \
            list(_get(spec, "values", what=f"{name} schedule"))
        steps = _check_piecewise(boundaries, len(values), len(boundaries) + 1, f"{name}: boundaries")
        return {"schedule": kind, "boundaries": steps,
                "values": [value(f"values[{i}]", v) for i, v in enumerate(values)]}
    out = {"schedule": kind, "value": value("value", _get(spec, "value", what=f"{name} schedule"))}
    if kind != "constant":
        out.update(end_value=value("end_value", spec.get("end_value", 0.0)),
                   transition_begin=_step_count(f"{name}: transition_begin", spec.get("transition_begin", 0)),
                   transition_steps=_step_count(f"{name}: transition_steps", spec.get("transition_steps", 0)))
    return out


def check_hparams(cfg: Any) -> None:
    """Checks the scheduled hyperparameters (``input_dropout``, ``latent_noise_std``) of a config section.

    Raises:
      ValueError: unknown schedule or field, a value that is not a finite number in range (dropout in
        [0, 1), noise std >= 0), or inconsistent boundaries/values; the message starts with the name.
    """
    for name in HPARAMS:
        _check_hparam(name, getattr(cfg, name))


def _hparam_schedule(name: str, spec: Any, num_steps: int) -> optax.Schedule:
    spec = _check_hparam(name, spec)
    kind = spec["schedule"]
    if kind == "constant":
        constant = _f32(spec["value"])
        return lambda step: constant
    if kind == "piecewise":
        bounds, table = jnp.asarray(spec["boundaries"], jnp.int32), _f32(spec["values"])
        # side="right" counts boundaries <= step: each value starts at its boundary.
        return lambda step: table[jnp.searchsorted(bounds, jnp.asarray(step, jnp.int32), side="right")]
    start, end, begin = spec["value"], spec["end_value"], spec["transition_begin"]
    steps = spec["transition_steps"] or max(num_steps - begin, 1)

    def schedule(step):
        progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin) / steps, 0.0, 1.0)
        if kind == "cosine":
            progress = 0.5 * (1.0 - jnp.cos(jnp.pi * progress))
        return _f32(start + (end - start) * progress)

    return schedule


def create_hparam_schedules(cfg: Any, num_steps: int) -> dict[str, Callable[[Any], jax.Array]]:
    """Builds the schedules of the model's scheduled hyperparameters.

    Args:
      cfg: config section (attributes) with ``input_dropout`` and ``latent_noise_std``, each a
        number or a schedule mapping (format in the module docstring).
      num_steps: total training steps (default horizon of linear/cosine ramps).

    Returns:
      ``{"input_dropout": schedule, "latent_noise_std": schedule}``; each maps a step (int or traced)
      to a float32 scalar. Feed ``{k: s(step)}`` to the model as ``hparams``.

    Raises:
      ValueError: as :func:`check_hparams`.
    """
    return {name: _hparam_schedule(name, getattr(cfg, name), num_steps) for name in HPARAMS}
