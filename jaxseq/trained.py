"""A trained model: ``jaxseq.load_run(run_dir) -> TrainedModel``, the one front door to a run's product.

Example::

    import jaxseq
    model = jaxseq.load_run("runs/lambda")
    latent = model.encode(["ACGT..." * 16])        # numpy, see TrainedModel.encode
    report = model.evaluate("test")                 # what python -m jaxseq.evaluate prints

Restoring reads the parameters and batch statistics of one checkpoint step (no optimiser state, no
loader state), read-only, onto the default device (or replicated over a given mesh). Every method
runs the model deterministically: no dropout, no noise, batch norm on its running statistics
(:meth:`TrainedModel.evaluate` also offers the stochastic mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxseq import checkpoint, evaluator, parallel, steps
from jaxseq import config as config_lib
from jaxseq import tokens as tok
from jaxseq.config import Config
from jaxseq.evaluator import EvaluateError

# ----------------------------------------------------------------------------------------------
# Opening a run


@dataclasses.dataclass
class Run:
    """A run directory opened read-only (nothing restored yet); ``close()`` when done."""

    run_dir: Path
    config: Config
    config_source: str  # "config.yaml" or "checkpoint meta"
    step: int
    steps: list[int]
    manager: Any  # orbax CheckpointManager, read-only
    verified: bool = False  # the step was checked against its checksums (False: saved without them)
    data: dict | None = None  # the data the run is bound to (jaxseq.run.data_binding); None: earlier release

    def close(self) -> None:
        self.manager.close()


def _resolve_config(run_dir: Path, step: int, meta: dict) -> tuple[Config, str]:
    saved = config_lib.from_dict(meta["config"]) if meta.get("config") else None
    yaml_path = run_dir / "config.yaml"
    if yaml_path.is_file():
        config, source = config_lib.load_config(yaml_path), "config.yaml"
    elif saved is not None:
        config, source = saved, "checkpoint meta"
    else:
        raise EvaluateError(f"{run_dir} has neither config.yaml nor a config in checkpoint {step}'s metadata")
    changed = config_lib.architecture_changes(saved, config) if saved is not None else []
    if changed:
        raise EvaluateError(f"checkpoint step {step} in {checkpoint.checkpoint_dir(run_dir)} is of another "
                            f"architecture than {yaml_path} describes: {'; '.join(changed)} (checkpoint -> config.yaml)")
    return config, source


def open_run(run_dir: str | Path, step: int | None = None) -> Run:
    """Opens a run directory read-only and checks that its config matches the checkpoint.

    The config is ``RUN_DIR/config.yaml`` (as a user may have edited it) or, without that file, the
    config saved in the checkpoint's metadata. Settings that define the model must equal the
    checkpoint's own.

    Args:
      run_dir: the training run directory.
      step: checkpoint step; None for the latest.

    Raises:
      EvaluateError: no such directory, no checkpoints, no such step (lists the available ones), a
        config whose model differs from the checkpoint's (names the settings), or a step whose files
        fail verification against their checksums (names step, file, what failed and the intact steps).
    """
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise EvaluateError(f"run directory {run_dir} does not exist")
    ckpt_dir = checkpoint.checkpoint_dir(run_dir)
    if not ckpt_dir.is_dir():
        raise EvaluateError(f"no checkpoints in {run_dir} ({ckpt_dir} does not exist): train first")
    manager = checkpoint.read_only_manager(run_dir)
    try:
        available = sorted(manager.all_steps())
        if not available:
            raise EvaluateError(f"no checkpoints in {ckpt_dir}: train first")
        if step is None:
            step = available[-1]
        elif step not in available:
            raise EvaluateError(f"--step {step}: no checkpoint at step {step} in {ckpt_dir}; "
                                f"available: {', '.join(map(str, available))}")
        verified = checkpoint.verify(run_dir, step)
        meta = checkpoint.read_meta(manager, step)
        config, source = _resolve_config(run_dir, step, meta)
    except checkpoint.CorruptCheckpointError as err:
        manager.close()
        raise EvaluateError(f"{err}; {_intact_text(run_dir)}") from None
    except BaseException:
        manager.close()
        raise
    return Run(run_dir=run_dir, config=config, config_source=source, step=int(step), steps=available, manager=manager,
               verified=verified, data=meta.get("data"))


def _intact_text(run_dir: Path) -> str:
    intact = checkpoint.intact_steps(run_dir)
    if not intact:
        return f"no intact checkpoint in {checkpoint.checkpoint_dir(run_dir)}"
    return f"intact steps: {', '.join(map(str, intact))} (use --step N)"


def restore_variables(run: Run, config: Config | None = None, mesh=None) -> dict:
    """Restores ``{"params", "batch_stats"}`` of the run's step (nothing else is read).

    Args:
      run: from :func:`open_run`.
      config: the model to restore into (default ``run.config``).
      mesh: replicate over this mesh; None for the default device.

    Raises:
      CheckpointError: the stored arrays do not match the config's model (lists what differs).
    """
    config = config or run.config
    shapes = jax.eval_shape(functools.partial(steps.init_variables, config), 0)
    sharding = (parallel.replicated(mesh) if mesh is not None
                else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
    restored = checkpoint.restore_subset(run.manager, run.step, target, run.verified)
    return {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}


def load_run(run_dir: str | Path, step: int | None = None, *, mesh=None) -> "TrainedModel":
    """The trained model of a run directory (read-only; parameters and batch statistics only).

    Args:
      run_dir: a training run directory (``config.yaml`` and/or ``checkpoints/``).
      step: checkpoint step; None for the latest.
      mesh: replicate the variables over this device mesh (multi-device evaluation); None: default device.

    Returns:
      A :class:`TrainedModel`.

    Raises:
      EvaluateError: no such run, no checkpoint, no such step, config.yaml describes another model, or the
        step is damaged (names the file, what failed and the intact steps).
      CheckpointError: the stored arrays do not match the model.
    """
    with contextlib.closing(open_run(run_dir, step)) as run:
        return restore(run, mesh)


def restore(run: Run, mesh=None) -> "TrainedModel":
    """The :class:`TrainedModel` of an opened run's step (see :func:`load_run`)."""
    return TrainedModel(run.config, restore_variables(run, mesh=mesh), step=run.step, run_dir=run.run_dir,
                        config_source=run.config_source, mesh=mesh, data=run.data)


# ----------------------------------------------------------------------------------------------
# The data a run is bound to

#: Settings that pick the training data: a resumed run must keep them (like the architecture).
DATA_KEYS = ("data.records", "data.regions", "data.exclude", "data.aliases", "data.dedup", "data.dedup_k")
#: Of those, the ones naming a file whose content is bound too (an edited BED file at the same path).
DATA_FILE_KEYS = ("data.regions", "data.exclude", "data.aliases")


def _file_sha256(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return "unreadable"  # the data opener reports the file itself


def data_binding(config: Config, fingerprint: str) -> dict:
    """What a run is bound to: the genome's content and the content of its region and alias files.

    Args:
      config: the run's config (``data.regions``, ``data.exclude``, ``data.aliases`` name the files).
      fingerprint: :attr:`jaxseq.genome.Genome.fingerprint` of the genome it trains on.

    Returns:
      ``{"fingerprint": str, "files": {"data.regions": sha256 hex or "", ...}}`` (JSON), stored in every
      checkpoint's meta and in ``RUN_DIR/data.json``.
    """
    files = {}
    for key in DATA_FILE_KEYS:
        path = getattr(config.data, key.split(".")[1])
        files[key] = _file_sha256(path) if path else ""
    return {"fingerprint": fingerprint, "files": files}


def check_data_binding(bound: dict | None, current: dict, where: str, remedy: str) -> None:
    """Refuses data other than what a run was trained on.

    Args:
      bound: the run's :func:`data_binding` (None: saved by a release without it, accepted).
      current: the binding of the data about to be used.
      where: names the run and step, e.g. ``"run runs/x (checkpoint step 20)"``.
      remedy: what to do instead, appended to the message.

    Raises:
      CheckpointError: one line naming both fingerprints (or the changed file and both hashes).
    """
    if not bound:
        return
    if bound.get("fingerprint") != current["fingerprint"]:
        raise checkpoint.CheckpointError(
            f"{where} was trained on genome content {bound.get('fingerprint')}, but the genome now has content "
            f"{current['fingerprint']} (different bases); {remedy}")
    for key, digest in (bound.get("files") or {}).items():
        now = current["files"].get(key, "")
        if digest and now and digest != now:
            raise checkpoint.CheckpointError(
                f"{where} was trained with another {key} file: its sha256 was {digest[:16]}..., it is now "
                f"{now[:16]}... (the file was edited); {remedy}")


# ----------------------------------------------------------------------------------------------
# The model


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(variables, tokens, *, model):
    logits, latent = model.apply(variables, tokens, train=False)
    return jax.nn.log_softmax(logits.astype(np.float32), axis=-1), latent


@dataclasses.dataclass
class TrainedModel:
    """A model with its variables, used deterministically (see the module docstring).

    Attributes:
      config: the run's config (``config.model`` defines the architecture).
      variables: ``{"params": ..., "batch_stats": ...}``.
      step: the checkpoint step (0 for :meth:`from_config`).
      run_dir: the run directory (None for :meth:`from_config`).
      config_source: ``config.yaml``, ``checkpoint meta`` or ``config``.
      mesh: the device mesh the variables are replicated on (None: the default device).
      data: the data the run is bound to (:func:`data_binding`); splits of other data are refused.
    """

    config: Config
    variables: dict
    step: int = 0
    run_dir: Path | None = None
    config_source: str = "config"
    mesh: Any = None
    data: dict | None = None  # :func:`data_binding` of the run (None: unknown, e.g. an earlier release)

    @classmethod
    def from_config(cls, config: Config, seed: int | None = None) -> "TrainedModel":
        """An untrained model with the initial variables training would start from (a random baseline).

        Args:
          config: a config (``config.model`` and ``data.window_len`` are used).
          seed: initialisation seed (default ``config.train.seed``).
        """
        seed = config.train.seed if seed is None else seed
        return cls(config, steps.init_variables(config, seed))

    @property
    def window_len(self) -> int:
        """Window length the model takes (``data.window_len``)."""
        return self.config.data.window_len

    @functools.cached_property
    def model(self):
        """The flax module."""
        return steps.create_model(self.config)

    def tokenize(self, seqs: str | Sequence[str] | np.ndarray) -> np.ndarray:
        """Tokens int8 ``(N, window_len)`` of sequences (a str is a batch of one).

        Raises:
          ValueError: a sequence of another length, a character outside the alphabet, or tokens outside 0..5.
        """
        if isinstance(seqs, str):
            seqs = [seqs]
        if isinstance(seqs, np.ndarray) or (len(seqs) and not isinstance(seqs[0], str)):
            array = np.asarray(seqs)
            if array.ndim != 2 or array.shape[1] != self.window_len or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"expected integer tokens of shape (N, {self.window_len}), got {array.dtype} "
                                 f"{array.shape}")
            if array.size and (array.min() < 0 or array.max() >= tok.NUM_TOKENS):
                raise ValueError(f"tokens must be in 0..{tok.NUM_TOKENS - 1} (A C G T N MASK), "
                                 f"got {array.min()}..{array.max()}")
            return array.astype(np.int8)
        out = np.empty((len(seqs), self.window_len), np.int8)
        for i, s in enumerate(seqs):
            if len(s) != self.window_len:
                raise ValueError(f"sequence {i} has {len(s)} bases; this model takes window_len={self.window_len}")
            out[i] = tok.encode(s, record=f"sequence {i}")
        return out

    def _run(self, seqs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.tokenize(seqs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = tokens.shape[0]
        batch_size = min(batch_size, max(n, 1))
        padded = np.full((-(-n // batch_size) * batch_size, self.window_len), tok.N, np.int8)
        padded[:n] = tokens  # one compiled shape: the last batch is padded with N windows
        outs = [jax.device_get(_forward(self.variables, padded[i:i + batch_size], model=self.model))
                for i in range(0, padded.shape[0], batch_size)]
        log_probs = np.concatenate([o[0] for o in outs])[:n] if outs else np.zeros((0, self.window_len, 4), np.float32)
        latent = np.concatenate([o[1] for o in outs])[:n] if outs else np.zeros((0,), np.float32)
        return log_probs, latent

    def encode(self, seqs: str | Sequence[str] | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Latent representations.

        Args:
          seqs: a str, a list of str, or int tokens ``(N, window_len)``; each exactly ``window_len`` long.
          batch_size: windows per device call (the last call is padded).

        Returns:
          float32 ``(N, latent_len)`` for ``multilayer``; ``(N, L', C)`` (per position) for the others.
        """
        return self._run(seqs, batch_size)[1]

    def log_probs(self, seqs: str | Sequence[str] | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Log-probabilities of A, C, G, T at every position: float32 ``(N, window_len, 4)``."""
        return self._run(seqs, batch_size)[0]

    def reconstruct(self, seqs: str | Sequence[str] | np.ndarray, batch_size: int = 256) -> list[str]:
        """The most likely sequence at every position: a list of N strings of ``window_len`` letters ACGT."""
        return [tok.decode(row) for row in self.log_probs(seqs, batch_size).argmax(-1)]

    def evaluate(self, split_or_fasta: str | Path = "test", mode: str = "deterministic", *, seed: int = 0,
                 repeats: int = 1, examples: int = 0, cache_dir: str | Path | None = None,
                 progress: bool = False) -> dict:
        """Scores every window of a split of the run's genome, or of another FASTA (see :mod:`jaxseq.evaluator`).

        Args:
          split_or_fasta: ``test``, ``valid``, ``train``, a FASTA path (every window of that genome), or a
            BED path (``.bed``/``.bed.gz``: the windows inside those regions of the run's genome).
          mode: ``deterministic`` or ``stochastic`` (noise at the schedules' values at :attr:`step`).
          seed, repeats, examples: see :meth:`jaxseq.evaluator.Evaluator.run`.
          cache_dir: token cache root (default ``data.cache_dir``).
          progress: show a progress bar.

        Returns:
          The report ``python -m jaxseq.evaluate`` prints and writes (``accuracy``, ``loss``, ...).
        """
        if repeats < 1:
            raise EvaluateError(f"--repeats must be >= 1, got {repeats}")
        if repeats > 1 and mode != "stochastic":
            raise EvaluateError("--repeats > 1 needs --mode stochastic (deterministic passes are identical)")
        if examples < 0:
            raise EvaluateError(f"--examples must be >= 0, got {examples}")
        split = str(split_or_fasta)
        fasta = None if split in evaluator.SPLITS else split_or_fasta
        if fasta is not None and not Path(split).exists() and not Path(split).suffix and "/" not in split:
            raise EvaluateError(f"unknown split {split!r}; choose from {', '.join(evaluator.SPLITS)} or give a FASTA path")
        target = evaluator.open_evaluator(self.config, split, fasta, cache_dir)
        # --fasta OTHER is an explicit other genome; a split or BED regions must be of the trained one.
        if fasta is None or evaluator.is_bed(fasta):
            check_data_binding(self.data, data_binding(self.config, target.genome.fingerprint),
                               f"run {self.run_dir} (checkpoint step {self.step})",
                               "score another genome with --fasta FILE, or train on this one in a new --workdir")
        mesh = self.mesh if self.mesh is not None else parallel.create_mesh(1)
        hparams = evaluator.eval_hparams(self.config, self.step) if mode == "stochastic" else {}
        report = {"run_dir": str(self.run_dir), "step": self.step, "config_source": self.config_source,
                  **target.run(self.model, self.variables, mesh, mode=mode, hparams=hparams, seed=seed,
                               repeats=repeats, examples=examples, progress=progress)}
        if mode == "stochastic":
            report["hparams"] = {**hparams, "hidden_dropout": float(self.config.model.hidden_dropout),
                                 "schedule_step": self.step, "batch_norm": "running statistics"}
        return report
