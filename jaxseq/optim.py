"""optax optimiser, learning-rate schedule and hyperparameter schedules from the ``optim`` config.

The config may be a dataclass (attributes) or a mapping (keys); every field has a default, so a
partial config works. Fields read by the optimiser (mirrored in ``config.py``'s ``OptimConfig``):

======================  =============  ================  ====================================================
field                   type           default           meaning
======================  =============  ================  ====================================================
``optimizer``           str            ``"sgd"``         ``"sgd"`` | ``"momentum"`` | ``"adam"`` | ``"adamw"``
``learning_rate``       float          ``0.01``          base (peak) learning rate, > 0
``momentum``            float          ``0.9``           ``"momentum"`` only (heavy-ball SGD)
``weight_decay``        float          ``1e-4``          ``"adamw"`` only (decoupled, all parameters);
                                                         ignored by the other optimisers
``b1``, ``b2``          float          0.9, 0.999        ``"adam"``, ``"adamw"``
``grad_clip_norm``      float          ``0.0``           clip gradients to this global norm; 0 = off
``schedule``            str            ``"constant"``    ``"constant"`` | ``"cosine"`` | ``"warmup_cosine"``
                                                         | ``"exponential"`` | ``"piecewise"``
``warmup_steps``        int            ``0``             linear warmup from 0 (see below)
``end_value``           float          ``0.0``           final lr of ``"cosine"``/``"warmup_cosine"``; lower
                                                         bound of ``"exponential"`` when > 0
``decay_rate``          float          ``0.1``           ``"exponential"``: factor per ``transition_steps``
``transition_steps``    int            ``0``             ``"exponential"``; 0 means ``num_steps``
``staircase``           bool           ``False``         ``"exponential"``: decay in discrete steps
``boundaries``          list[int]      ``[]``            ``"piecewise"``: strictly increasing steps
``scales``              list[float]    ``[]``            ``"piecewise"``: one factor per boundary, applied
                                                         from that step on; factors multiply cumulatively
======================  =============  ================  ====================================================

Hyperparameter schedules are read by :func:`create_hparam_schedules` from whichever config section
holds the fields ``input_dropout`` and ``latent_noise_std`` (each ``float | dict``, default 0.0,
format below; ``train.py`` passes the ``model`` section).

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

Defaults: ``end_value`` 0.0, ``transition_begin`` 0, ``transition_steps`` 0 meaning "until
``num_steps``". Schedules return float32 scalars (strongly typed, so feeding them to a jitted step
never changes its signature) and accept traced steps.
"""

from __future__ import annotations

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

_MISSING = object()


def _get(cfg: Any, key: str, default: Any = _MISSING, what: str = "optim config") -> Any:
    """Reads ``key`` from a mapping or an object with attributes."""
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    if value is _MISSING:
        raise ValueError(f"{what} is missing {key!r}")
    return value


def _choice(kind: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choices: {', '.join(choices)}")
    return value


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _check_piecewise(boundaries: Sequence[int], n_values: int, n_expected: int, what: str) -> None:
    if n_values != n_expected:
        raise ValueError(f"{what}: got {len(boundaries)} boundaries and {n_values} values/scales "
                         f"(expected {n_expected})")
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])) or any(b < 0 for b in boundaries):
        raise ValueError(f"{what}: boundaries must be non-negative and strictly increasing, got {list(boundaries)}")


def create_learning_rate_schedule(cfg: Any, num_steps: int) -> optax.Schedule:
    """Builds the learning-rate schedule.

    Args:
      cfg: optim config (mapping or dataclass); fields in the module docstring.
      num_steps: total training steps (the horizon of cosine decays).

    Returns:
      ``step -> float32 scalar`` (works on traced steps).

    Raises:
      ValueError: unknown schedule name (lists the choices) or inconsistent fields.
    """
    lr = float(_get(cfg, "learning_rate", 0.01))
    name = _choice("learning-rate schedule", _get(cfg, "schedule", "constant"), SCHEDULES)
    warmup = int(_get(cfg, "warmup_steps", 0))
    end_value = float(_get(cfg, "end_value", 0.0))
    if lr <= 0:
        raise ValueError(f"learning_rate must be > 0, got {lr}")
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")

    if name == "warmup_cosine":
        if warmup >= num_steps:
            raise ValueError(f"warmup_steps {warmup} must be < num_steps {num_steps}")
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps, end_value)
        return lambda step: _f32(schedule(step))
    if name == "constant":
        schedule = optax.constant_schedule(lr)
    elif name == "cosine":
        schedule = optax.cosine_decay_schedule(lr, num_steps, alpha=end_value / lr)
    elif name == "exponential":
        transition_steps = int(_get(cfg, "transition_steps", 0)) or num_steps
        decay_rate = float(_get(cfg, "decay_rate", 0.1))
        if transition_steps < 0 or decay_rate <= 0:
            raise ValueError(f"exponential schedule needs transition_steps >= 0 and decay_rate > 0, "
                             f"got {transition_steps}, {decay_rate}")
        schedule = optax.exponential_decay(lr, transition_steps, decay_rate,
                                           staircase=bool(_get(cfg, "staircase", False)),
                                           end_value=end_value if end_value > 0 else None)
    else:  # piecewise
        boundaries = [int(b) for b in _get(cfg, "boundaries", [])]
        scales = [float(s) for s in _get(cfg, "scales", [])]
        _check_piecewise(boundaries, len(scales), len(boundaries), "piecewise learning-rate schedule")
        schedule = optax.piecewise_constant_schedule(lr, dict(zip(boundaries, scales)))

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
      optim_cfg: optim config (mapping or dataclass); fields in the module docstring.
      num_steps: total training steps.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: unknown optimizer or schedule (lists the choices) or invalid values.
    """
    name = _choice("optimizer", _get(optim_cfg, "optimizer", "sgd"), OPTIMIZERS)
    schedule = create_learning_rate_schedule(optim_cfg, num_steps)
    clip = float(_get(optim_cfg, "grad_clip_norm", 0.0))
    momentum = float(_get(optim_cfg, "momentum", 0.9))
    b1, b2 = float(_get(optim_cfg, "b1", 0.9)), float(_get(optim_cfg, "b2", 0.999))
    weight_decay = float(_get(optim_cfg, "weight_decay", 1e-4))
    if clip < 0:
        raise ValueError(f"grad_clip_norm must be >= 0 (0 = off), got {clip}")

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


def _hparam_schedule(name: str, spec: Any, num_steps: int) -> optax.Schedule:
    low, high, high_inclusive = HPARAMS[name]

    def check(value: float) -> float:
        value = float(value)
        if not (low <= value and (value <= high if high_inclusive else value < high)):
            bracket = "]" if high_inclusive else ")"
            raise ValueError(f"{name} schedule: value {value} outside [{low}, {high}{bracket}")
        return value

    if spec is None:
        spec = 0.0
    if isinstance(spec, (int, float, np.number)):
        value = _f32(check(spec))
        return lambda step: value
    kind = _choice(f"{name} schedule", _get(spec, "schedule", "constant"), HPARAM_SCHEDULES)
    if kind == "constant":
        value = _f32(check(_get(spec, "value", what=f"{name} schedule")))
        return lambda step: value
    if kind == "piecewise":
        boundaries = [int(b) for b in _get(spec, "boundaries", what=f"{name} schedule")]
        values = [check(v) for v in _get(spec, "values", what=f"{name} schedule")]
        _check_piecewise(boundaries, len(values), len(boundaries) + 1, f"{name} piecewise schedule")
        bounds, table = jnp.asarray(boundaries, jnp.int32), _f32(values)
        # side="right" counts boundaries <= step: each value starts at its boundary.
        return lambda step: table[jnp.searchsorted(bounds, jnp.asarray(step, jnp.int32), side="right")]

    start, end = check(_get(spec, "value", what=f"{name} schedule")), check(_get(spec, "end_value", 0.0))
    begin = int(_get(spec, "transition_begin", 0))
    steps = int(_get(spec, "transition_steps", 0)) or max(num_steps - begin, 1)
    if begin < 0 or steps < 0:
        raise ValueError(f"{name} schedule: transition_begin and transition_steps must be >= 0")

    def schedule(step):
        progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin) / steps, 0.0, 1.0)
        if kind == "cosine":
            progress = 0.5 * (1.0 - jnp.cos(jnp.pi * progress))
        return _f32(start + (end - start) * progress)

    return schedule


def create_hparam_schedules(cfg: Any, num_steps: int) -> dict[str, Callable[[Any], jax.Array]]:
    """Builds the schedules of the model's scheduled hyperparameters.

    Args:
      cfg: config section (mapping or dataclass) with ``input_dropout`` and ``latent_noise_std``,
        each a number or a schedule dict (format in the module docstring); missing means 0.
      num_steps: total training steps (default horizon of linear/cosine ramps).

    Returns:
      ``{"input_dropout": schedule, "latent_noise_std": schedule}``; each maps a step (int or traced)
      to a float32 scalar. Feed ``{k: s(step)}`` to the model as ``hparams``.

    Raises:
      ValueError: unknown schedule name (lists the choices), values out of range (dropout in [0, 1),
        noise std >= 0), or inconsistent boundaries/values.
    """
    return {name: _hparam_schedule(name, _get(cfg, name, 0.0), num_steps) for name in HPARAMS}
