"""Data parallelism: 4 devices vs 1, checkpoints across device counts, and a 2-process jax.distributed run.

Device counts are fixed when jax starts (``XLA_FLAGS=--xla_force_host_platform_device_count``), so
every multi-device run happens in a subprocess that prints JSON. One subprocess with 4 CPU devices
trains the same config on a 4-device and a 1-device mesh and swaps checkpoints between them; then two
``python -m jaxseq.train --distributed`` processes (2 devices each, gloo collectives, coordinator on
127.0.0.1) train it again. Parameters are compared here, in the test process, from the checkpoints.

The runs use SGD with momentum, not Adam: Adam divides each gradient by its running RMS, so a
parameter whose true gradient is zero (a conv bias whose ReLU never switches off, cancelled by the
BatchNorm after it) takes full learning-rate steps driven by float rounding noise (~1e-8), which
changes with the summation order of any reduction. Measured with Adam (this model with n_linear=2),
4 vs 1 devices: one such bias element differed by 8.7e-3 after 20 steps, every other parameter by
< 2e-7, losses by ~2e-6.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from jaxseq import checkpoint, steps
from jaxseq.config import load_config

STEPS = 20
RUN = ["model.name=multilayer", "model.kernel_len=3", "model.latent_len=8", "model.hidden_len=4",
       "model.n_conv_before_pool=1", "model.n_linear=1", "model.hidden_dropout=0.1", "model.input_dropout=0.05",
       "model.latent_noise_std=0.1", "data.window_len=32", "optim.optimizer=momentum", "train.batch_size=16",
       f"train.num_steps={STEPS}", "train.log_every=1", "train.eval_every=20", "train.checkpoint_every=10",
       "train.histogram_every=0", "train.examples=0", "train.eval_max_windows=32"]
TIMEOUT = 300  # seconds for any one subprocess: generous for a loaded 2-core box, but bounded
LOSS_TOL = 1e-5
PARAM_TOL = 1e-5

SINGLE_HOST_SCRIPT = r"""
import contextlib, io, json, shutil, sys
from pathlib import Path
import jax, numpy as np
from jaxseq import parallel, steps, train
from jaxseq.config import load_config

tmp, run = Path(sys.argv[1]), json.loads(sys.argv[2])
out = {"devices": jax.device_count(), "threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}
mesh4, mesh1 = parallel.create_mesh("all"), parallel.create_mesh(1)

# Placement: each device holds only its rows of the global batch.
rows = np.repeat(np.arange(8, dtype=np.int8)[:, None], 32, axis=1)
batch = parallel.shard_batch({"tokens": rows, "weights": np.ones(8, np.float32)}, mesh4)["tokens"]
stacked = parallel.shard_batch({"tokens": np.stack([rows] * 3)}, mesh4, leading_axes=1)["tokens"]
out["placement"] = {
    "shape": list(batch.shape), "spec": [str(a) for a in batch.sharding.spec],
    "shards": sorted([s.device.id, np.asarray(s.data)[:, 0].tolist(), [d.id for d in s.data.devices()]]
                     for s in batch.addressable_shards),
    "stacked_shape": list(stacked.shape), "stacked_spec": [str(a) for a in stacked.sharding.spec],
    "stacked_shard_shapes": sorted({tuple(s.data.shape) for s in stacked.addressable_shards}),
}

# An indivisible global batch: a clear error before anything is written.
try:
    parallel.check_batch_size(6, mesh4)
except parallel.ParallelError as err:
    out["check_error"] = str(err)
err = io.StringIO()
with contextlib.redirect_stderr(err):
    sets = sum([["--set", s] for s in run + [f"data.cache_dir={tmp / 'cache'}", "train.batch_size=6"]], [])
    out["cli_rc"] = train.main(["--workdir", str(tmp / "bad"), "--devices", "4", *sets])
out["cli_error"] = err.getvalue().strip()
out["bad_workdir_created"] = (tmp / "bad").exists()

def config(devices):
    return load_config(None, run + [f"data.cache_dir={tmp / 'cache'}", f"train.devices='{devices}'"])

state = steps.create_train_state(config(4), mesh4)
out["state_replicated"] = all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4
                              for x in jax.tree.leaves(state))

# Same config and seed on 4 devices and on 1; then each one's step-10 checkpoint resumed on the other.
out["results"] = {}
for name, devices in [("d4", 4), ("d1", 1)]:
    out["results"][name] = train.train_and_evaluate(config(devices), tmp / name)
for name, source, devices in [("d4_to_d1", "d4", 1), ("d1_to_d4", "d1", 4)]:
    shutil.copytree(tmp / source, tmp / name)
    shutil.rmtree(tmp / name / "checkpoints" / "20")
    shutil.rmtree(tmp / name / "tensorboard")
    (tmp / name / "final_metrics.json").unlink()
    out["results"][name] = train.train_and_evaluate(config(devices), tmp / name, require_checkpoint=True)
print(json.dumps(out))
"""


def _env(devices: int, tmp: Path) -> dict:
    env = dict(os.environ)
    env.update({
        # Read when jax starts. Optimisation level 0 halves the CPU compile time, which dominates these runs;
        # every run compared here uses it, and it does not change what is computed (only how fast).
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
        # One compilation cache for every subprocess of this module: resumed runs compile nothing.
        "JAX_COMPILATION_CACHE_DIR": str(tmp / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("JAXSEQ_COORDINATOR", None)
    return env


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _load_state(workdir: Path, step: int):
    """The train state of a checkpoint, restored onto this process's single CPU device (no compile)."""
    config = load_config(workdir / "config.yaml")
    abstract = jax.eval_shape(lambda: steps.create_train_state(config))
    device = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    manager = checkpoint.create_manager(workdir, read_only=True)
    try:
        state, loader_state, _ = checkpoint.restore(manager, step, target)
    finally:
        manager.close()
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats, "step": state.step}), loader_state


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _scalars(workdir: Path, tag: str) -> dict[int, float]:
    """``step -> value`` of one TensorBoard tag, read from the event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    values = {}
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = value.simple_value
    return values


def _curve_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b) and a, (sorted(a), sorted(b))
    return max(abs(a[s] - b[s]) for s in a)


@pytest.fixture(scope="module")
def single_host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SINGLE_HOST_SCRIPT, str(tmp), json.dumps(RUN)], env=_env(4, tmp),
                          cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, _tail(proc.stderr)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = time.perf_counter() - start
    out["tmp"] = tmp
    return out


def test_batch_is_split_by_rows_over_devices(single_host):
    p = single_host["placement"]
    assert single_host["devices"] == 4
    assert p["shape"] == [8, 32] and p["spec"] == ["data"]
    # Device i holds rows 2i, 2i+1 (their values are their row numbers) and nothing else.
    assert p["shards"] == [[i, [2 * i, 2 * i + 1], [i]] for i in range(4)]
    assert p["stacked_shape"] == [3, 8, 32] and p["stacked_spec"] == ["None", "data"]
    assert p["stacked_shard_shapes"] == [[3, 2, 32]]
    assert single_host["state_replicated"]


def test_random_bits_do_not_depend_on_sharding(single_host):
    # Sharding-invariant random bits: dropout masks and latent noise are the same on 4 devices as on 1,
    # which test_four_devices_match_one_device then sees in the losses (training with both on).
    assert single_host["threefry_partitionable"]


def test_indivisible_batch_is_a_clear_error(single_host):
    assert "train.batch_size=6 is not divisible by the 4 devices" in single_host["check_error"]
    assert "use a multiple of 4 (e.g. 4 or 8)" in single_host["check_error"]
    assert single_host["cli_rc"] == 2
    assert single_host["cli_error"].startswith("error: train.batch_size=6 is not divisible by the 4 devices")
    assert not single_host["bad_workdir_created"]


def test_four_devices_match_one_device(single_host):
    tmp = single_host["tmp"]
    curves = {name: _scalars(tmp / name, "train/loss") for name in ("d4", "d1")}
    assert sorted(curves["d1"]) == list(range(1, STEPS + 1))
    assert _curve_diff(curves["d4"], curves["d1"]) < LOSS_TOL
    state4, _ = _load_state(tmp / "d4", STEPS)
    state1, _ = _load_state(tmp / "d1", STEPS)
    assert int(state4["step"]) == int(state1["step"]) == STEPS
    halfway, _ = _load_state(tmp / "d1", 10)
    assert _max_diff(halfway["params"], state1["params"]) > 100 * PARAM_TOL  # training moved them: not vacuous
    assert _max_diff(state4["params"], state1["params"]) < PARAM_TOL
    assert _max_diff(state4["batch_stats"], state1["batch_stats"]) < PARAM_TOL  # statistics over the global batch
    r4, r1 = single_host["results"]["d4"], single_host["results"]["d1"]
    assert abs(r4["test_loss"] - r1["test_loss"]) < LOSS_TOL and r4["test_bases"] == r1["test_bases"]


@pytest.mark.parametrize("name, source", [("d4_to_d1", "d1"), ("d1_to_d4", "d4")])
def test_checkpoint_restores_on_other_device_count_and_continues(single_host, name, source):
    tmp = single_host["tmp"]
    resumed = _scalars(tmp / name, "train/loss")
    assert sorted(resumed) == list(range(11, STEPS + 1))  # restored at step 10, not retrained from 0
    straight = {s: v for s, v in _scalars(tmp / source, "train/loss").items() if s > 10}
    assert _curve_diff(resumed, straight) < LOSS_TOL
    state, loader_state = _load_state(tmp / name, STEPS)
    reference, reference_loader = _load_state(tmp / source, STEPS)
    assert _max_diff(state["params"], reference["params"]) < PARAM_TOL
    assert loader_state == reference_loader  # the resumed loader drew the same batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(single_host):
    """``python -m jaxseq.train --distributed`` in 2 processes (2 CPU devices each) on one workdir."""
    tmp = single_host["tmp"]
    workdir = tmp / "mp"
    port = _free_port()
    # Histograms and examples run collectives too: every process must take part (process 0 writes).
    extra = [f"data.cache_dir={tmp / 'cache'}", "train.histogram_every=20", "train.examples=1"]
    sets = sum([["--set", s] for s in RUN + extra], [])
    procs, logs = [], []
    start = time.perf_counter()
    try:
        for i in range(2):
            out, err = open(tmp / f"mp{i}.out", "w"), open(tmp / f"mp{i}.err", "w")
            logs += [out, err]
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "jaxseq.train", "--distributed", "--coordinator", f"127.0.0.1:{port}",
                 "--num-processes", "2", "--process-id", str(i), "--workdir", str(workdir), *sets],
                env=_env(2, tmp), cwd=tmp, stdout=out, stderr=err))
        deadline = time.monotonic() + TIMEOUT
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:  # stragglers: a process whose peer died waits for it until the heartbeat timeout
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs:
            f.close()
    seconds = time.perf_counter() - start
    text = {f"{k}{i}": (tmp / f"mp{i}.{k}").read_text() for i in range(2) for k in ("out", "err")}
    codes = [proc.returncode for proc in procs]
    assert codes == [0, 0], f"exit codes {codes}\nprocess 0:\n{_tail(text['err0'])}\nprocess 1:\n{_tail(text['err1'])}"
    return {"workdir": workdir, "seconds": seconds, **text}


def test_two_processes_match_single_process(single_host, two_processes):
    tmp, workdir = single_host["tmp"], two_processes["workdir"]
    assert _curve_diff(_scalars(workdir, "train/loss"), _scalars(tmp / "d1", "train/loss")) < LOSS_TOL
    state, loader_state = _load_state(workdir, STEPS)
    reference, reference_loader = _load_state(tmp / "d1", STEPS)
    assert _max_diff(state["params"], reference["params"]) < PARAM_TOL
    assert _max_diff(state["batch_stats"], reference["batch_stats"]) < PARAM_TOL
    assert loader_state == reference_loader
    final = json.loads((workdir / "final_metrics.json").read_text())
    expected = single_host["results"]["d1"]
    assert final["step"] == STEPS and final["test_bases"] == expected["test_bases"]
    for key in ("valid_loss", "test_loss"):
        assert abs(final[key] - expected[key]) < LOSS_TOL


def test_two_processes_only_process_0_writes_and_prints(two_processes):
    workdir = two_processes["workdir"]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if not p.name.startswith(".")) == ["10", "20"]
    assert (workdir / "config.yaml").is_file()
    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "held-out (test split) accuracy" in two_processes["out0"]
    # gloo's own connection messages aside, process 1 prints nothing. gloo's threads write those unflushed, so one
    # message can be split over two lines ("[Gloo] Rank 1 is connected to 3 peer ranks. " / "Expected number ...").
    gloo = ("[Gloo]", "Expected number of connected peer ranks")
    assert [line for line in two_processes["out1"].splitlines() if line.strip() and not line.startswith(gloo)] == []
    assert "Traceback" not in two_processes["err0"] + two_processes["err1"]
