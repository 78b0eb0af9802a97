"""Fixtures shared by the whole suite: one persistent XLA compilation cache and one tiny trained run.

Compilation dominates this suite's CPU time: every ``train_and_evaluate`` builds its jitted step afresh, so
each training (in-process or in a subprocess) compiled the same tiny programs again. With one persistent
cache per session, a repeated training of a config compiles nothing (measured: 4.2 -> 0.6 CPU s for a
4-step autoencoder run). The cache lives in a fresh temporary folder, unless ``JAX_COMPILATION_CACHE_DIR``
is already set (a developer may keep one warm across sessions); subprocesses inherit it through the
environment. Cached programs are the compiled programs themselves: nothing tested here changes.

The suite runs on two pytest-xdist workers (pyproject's ``-n auto --dist loadfile``, capped below). The
controller imports this file first and sets the variable, so both workers and all their subprocesses share
its one cache, and only the controller deletes it.
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

# LLVM at -O0: XLA runs the same HLO passes (the same program is computed) but emits less optimised machine
# code, and the tiny programs of this suite spend far longer compiling than running (the flax-vs-cpu training
# fixture of test_kernels: 4.7 -> 3.0 s per model). Subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after the environment: jax reads it when imported)

# In case a plugin imported jax before this file: the cache is initialised at the first compilation.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): at most 2 workers, as many as there are cores.

    Most of a test's time is one thread (Python, XLA compiles, process start-ups), so a second worker on the
    second core halves the suite; more workers than that would mostly add memory (each one is a JAX process,
    and many tests start subprocesses of their own).
    """
    return max(1, min(2, os.cpu_count() or 1))


# The files that take longest (measured with --durations=0; most of it is subprocesses), started first so
# that the two workers finish together instead of one waiting on a slow file handed out last.
SLOW_FILES = ("test_faults.py", "test_gpu_check.py", "test_train.py", "test_parallel.py", "test_sweep.py",
              "test_kernels.py", "test_losses.py", "test_models.py", "test_evaluate.py", "test_probe.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    """``jaxseq.load_run(tiny_run)``: the trained model tests use (read-only, shared by the session)."""
    import jaxseq

    return jaxseq.load_run(tiny_run)
