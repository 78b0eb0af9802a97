"""Fixtures shared by the whole suite: one persistent XLA compilation cache and one tiny trained run.

Compilation dominates this suite's CPU time: every ``train_and_evaluate`` builds its jitted step afresh, so
each training (in-process or in a subprocess) compiled the same tiny programs again. With one persistent
cache per session, a repeated training of a config compiles nothing (measured: 4.2 -> 0.6 CPU s for a
4-step autoencoder run). The cache lives in a fresh temporary folder, unless ``JAX_COMPILATION_CACHE_DIR``
is already set (a developer may keep one warm across sessions); subprocesses inherit it through the
environment. Cached programs are the compiled programs themselves: nothing tested here changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_OWN_CACHE: str | None = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxseq-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# Tiny test programs compile in well under the default 1 s threshold: cache every one.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment: jax reads it when imported)

# In case a plugin imported jax before this file: the cache is initialised at the first compilation.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


TINY_WINDOW = 16
TINY_LATENT = 5
# A multilayer model (conv + pool blocks, batch norm, a linear latent of 5 floats per window), 2 steps.
TINY = ["model.name=multilayer", "model.kernel_len=3", f"model.latent_len={TINY_LATENT}", "model.hidden_len=4",
        "model.n_linear=1", f"data.window_len={TINY_WINDOW}", "train.batch_size=8", "train.num_steps=2",
        "train.log_every=2", "train.eval_every=2", "train.checkpoint_every=2", "train.histogram_every=0",
        "train.steps_per_call=2", "train.examples=0", "train.eval_max_windows=16"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-step run of a tiny multilayer model on the bundled lambda phage genome.

    Shared by every test that only reads a run (``load_run``, evaluation, embedding, probes): treat it as
    read-only. A test that changes a run copies it first (``shutil.copytree(tiny_run, tmp_path / "run")``).
    Its token cache is ``config.data.cache_dir`` (a session folder beside it). Batch norm statistics have
    moved away from their initial values; the checkpoint is at step 2.
    """
    from jaxseq import train
    from jaxseq.config import load_config

    root = tmp_path_factory.mktemp("tiny_run")
    train.train_and_evaluate(load_config(None, TINY + [f"data.cache_dir={root / 'cache'}"]), root / "run")
    return root / "run"
