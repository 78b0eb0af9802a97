import gzip
import hashlib
import json
import math
import shutil
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxseq import checkpoint, evaluate, evaluator, models, steps, train, trained
from jaxseq.config import load_config
from jaxseq.genome import Genome
from jaxseq.loader import count_eval_windows

# CI clones the repo with shared/ beside it.
CHR17 = Path(__file__).resolve().parents[2] / "shared" / "data" / "human_chr17_hg19_part.fa"
SMALL = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
         "train.batch_size=8", "train.num_steps=4", "train.log_every=2", "train.eval_every=4",
         "train.checkpoint_every=2", "train.histogram_every=0", "train.steps_per_call=2", "train.examples=0",
         "train.eval_max_windows=16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run on the bundled lambda phage (checkpoints at steps 2 and 4), no noise."""
    root = tmp_path_factory.mktemp("evaluate")
    config = load_config(None, SMALL + [f"data.cache_dir={root / 'cache'}"])
    train.train_and_evaluate(config, root / "run")
    return root / "run"


def copy_run(run, dest, **model_changes):
    """A copy of the run directory with config.yaml model settings changed."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval_*.json", "tensorboard"))
    path = dest / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["model"].update(model_changes)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def tree_digest(folder: Path) -> str:
    """Hash of every path, size, mtime and content under a folder."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}|{path.is_dir()}|{st.st_size}|{st.st_mtime_ns}".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every tensorboard event file under ``folder``: tag -> [(step, value)] (TFRecord parsing)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list] = {}
    texts = set()
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            record = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                else:
                    texts.add(value.tag)
    return scalars, texts


def quiet(**kwargs):
    return {"write": False, **kwargs}


# ----------------------------------------------------------------------------------------------
# Metric sums by hand


def test_compute_eval_sums_matches_hand_computation():
    t = np.array([[0, 1, 2, 3, 4],      # one N
                  [3, 3, 1, 0, 2],
                  [4, 4, 4, 4, 4]],     # padding row: weight 0
                 dtype=np.int8)
    weights = np.array([1, 1, 0], np.float32)
    soft = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], bool)
    predicted = np.array([[0, 2, 2, 3, 1], [3, 0, 1, 1, 2], [0, 0, 0, 0, 0]])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
    # Make the chosen prediction the argmax by a clear margin.
    np.put_along_axis(logits, predicted[..., None], logits.max(-1, keepdims=True) + 1.0, axis=-1)
    batch = {"tokens": jnp.asarray(t), "weights": jnp.asarray(weights), "soft_mask": jnp.asarray(soft)}
    sums = jax.device_get(evaluator.compute_eval_sums(jnp.asarray(logits), batch))

    w = weights[:, None] * (t < 4)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, np.clip(t, 0, 3)[..., None].astype(np.int64), -1)[..., 0]
    hit = (predicted == t) & (w > 0)
    confusion = np.zeros((4, 4))
    for b in range(2):
        for i in range(5):
            if t[b, i] < 4:
                confusion[t[b, i], predicted[b, i]] += 1
    assert float(sums["count"]) == 9 and float(sums["correct"]) == hit.sum() == 6
    assert float(sums["windows"]) == 2 and float(sums["excluded_n"]) == 1
    np.testing.assert_array_equal(sums["confusion"], confusion)
    np.testing.assert_array_equal(sums["position_count"], [2, 2, 2, 2, 1])
    np.testing.assert_array_equal(sums["position_correct"], hit.sum(0))
    np.testing.assert_allclose(float(sums["loss_sum"]), (ce * w).sum(), rtol=1e-5)
    # Soft-masked: positions (0,0),(0,1),(1,3),(1,4): hits at (0,0) and (1,4).
    assert float(sums["soft_count"]) == 4 and float(sums["soft_correct"]) == 2
    np.testing.assert_allclose(float(sums["soft_loss_sum"]), (ce * w * soft).sum(), rtol=1e-5)

    report = evaluator.summarize_sums(sums)
    assert report["accuracy"] == pytest.approx(6 / 9)
    assert report["bits_per_base"] == pytest.approx(report["loss"] / math.log(2))
    assert report["n_bases"] == 9 and report["n_windows"] == 2 and report["n_excluded_n"] == 1
    assert report["accuracy_by_base"]["T"] == pytest.approx(confusion[3, 3] / confusion[3].sum())
    assert report["accuracy_by_position"] == pytest.approx([1.0, 0.0, 1.0, 0.5, 1.0])
    assert report["position_summary"]["edge_len"] == 1
    assert report["position_summary"]["first"] == 1.0 and report["position_summary"]["last"] == 1.0
    assert report["position_summary"]["middle"] == pytest.approx(3 / 6)
    assert report["position_summary"]["edges"] == pytest.approx(3 / 3)
    assert report["soft_masked"] == pytest.approx({"accuracy": 0.5, "loss": (ce * w * soft).sum() / 4, "n_bases": 4})
    assert report["unmasked"]["n_bases"] == 5 and report["unmasked"]["accuracy"] == pytest.approx(4 / 5)


def test_padded_final_batch_counted_once_and_matches_training_eval(run):
    report = evaluate.evaluate(run, **quiet())
    config = load_config(run / "config.yaml")
    data = steps.open_data(config)
    intervals = data.splits["test"]
    mapping = data.genome.as_mapping()
    n_windows = count_eval_windows(mapping, intervals, window_len=40)
    assert n_windows % 16  # the last global batch (2 x 8) is padded
    expected_bases = 0
    for iv in intervals:
        nw = (iv.end - iv.start) // 40
        expected_bases += int((mapping[iv.record][iv.start:iv.start + nw * 40] < 4).sum())
    assert report["n_windows"] == n_windows and report["n_bases"] == expected_bases
    assert sum(report["n_bases_by_base"].values()) == expected_bases
    assert np.sum(report["confusion"]) == expected_bases
    final = json.loads((run / "final_metrics.json").read_text())
    assert report["step"] == final["step"] == 4
    assert report["n_bases"] == final["test_bases"]
    assert report["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-7)
    assert report["loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    assert len(report["accuracy_by_position"]) == 40


# ----------------------------------------------------------------------------------------------
# Modes


def test_deterministic_mode_is_repeatable(run):
    a = evaluate.evaluate(run, **quiet())
    b = evaluate.evaluate(run, **quiet())
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN (no soft-masked bases) included


def test_stochastic_mode_equals_deterministic_at_zero_rates_and_differs_with_noise(run, tmp_path):
    deterministic = evaluate.evaluate(run, **quiet())
    zero = evaluate.evaluate(run, **quiet(mode="stochastic", repeats=2))
    assert zero["hparams"]["latent_noise_std"] == 0.0 and zero["hparams"]["input_dropout"] == 0.0
    assert zero["accuracy"] == deterministic["accuracy"]
    assert zero["loss"] == pytest.approx(deterministic["loss"], rel=1e-6)
    assert zero["spread"]["accuracy"]["std"] == 0.0

    # Noise follows the schedule at the checkpoint's step: linear 1.0 -> 0.2 over 4 steps is 0.2 at step 4.
    noisy_run = copy_run(run, tmp_path / "noisy", latent_noise_std={"schedule": "linear", "value": 1.0,
                                                                     "end_value": 0.2},
                         input_dropout=0.1)
    noisy = evaluate.evaluate(noisy_run, **quiet(mode="stochastic", repeats=3, seed=1))
    assert noisy["hparams"]["latent_noise_std"] == pytest.approx(0.2)
    assert noisy["hparams"]["input_dropout"] == pytest.approx(0.1)
    assert noisy["loss"] != pytest.approx(deterministic["loss"], rel=1e-4)
    losses = [p["loss"] for p in noisy["per_repeat"]]
    assert len(set(losses)) == 3  # each pass folds its index into the seed
    assert noisy["spread"]["loss"]["min"] == min(losses) and noisy["spread"]["loss"]["max"] == max(losses)
    assert noisy["spread"]["loss"]["std"] == pytest.approx(np.std(losses, ddof=1))
    assert noisy["loss"] == pytest.approx(np.mean(losses))
    assert noisy["n_bases"] == deterministic["n_bases"]  # counts are per pass
    again = evaluate.evaluate(noisy_run, **quiet(mode="stochastic", repeats=3, seed=1))
    assert again["per_repeat"] == noisy["per_repeat"]  # fixed seed
    other = evaluate.evaluate(noisy_run, **quiet(mode="stochastic", repeats=1, seed=2))
    assert other["loss"] != noisy["per_repeat"][0]["loss"]


def test_stochastic_mode_keeps_batch_norm_running_statistics():
    model = models.create_model("multilayer", 16, kernel_len=3, latent_len=4, hidden_len=4, n_linear=2)
    tokens = jax.random.randint(jax.random.key(0), (4, 16), 0, 4).astype(jnp.int8)
    # Random parameters and running statistics far from any batch's own, so using either is visible
    # (shapes from eval_shape: compiling the initialisers would take longer than the test).
    shapes = jax.eval_shape(lambda t: model.init({"params": jax.random.key(1)}, t, train=False), tokens)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.3, 1.5, size=s.shape), s.dtype), shapes)
    rngs = {"dropout": jax.random.key(4), "noise": jax.random.key(5)}

    @jax.jit
    def run_all(v, t, std):
        zero = {"input_dropout": jnp.float32(0), "latent_noise_std": jnp.float32(0)}
        noisy = dict(zero, latent_noise_std=std)
        key = jax.random.key(3)
        return (evaluator.apply_model(model, v, t, stochastic=False),
                evaluator.apply_model(model, v, t, stochastic=True, hparams=zero, key=key),
                evaluator.apply_model(model, v, t, stochastic=True, hparams=noisy, key=key),
                model.apply(v, t, train=True, hparams=zero, mutable=["batch_stats"], rngs=rngs)[0][0])

    deterministic, stochastic, noisy, batch_stats_logits = run_all(variables, tokens, jnp.float32(1.0))
    np.testing.assert_allclose(stochastic, deterministic, rtol=1e-5, atol=1e-6)
    assert not np.allclose(batch_stats_logits, deterministic, atol=1e-3)
    assert not np.allclose(noisy, deterministic, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Other genome, outputs


def test_fasta_scores_every_window_of_another_genome(run, tmp_path):
    report = evaluate.evaluate(run, **quiet(fasta=CHR17))
    genome = Genome.open(CHR17, cache_dir=tmp_path / "cache")
    bases = soft = windows = 0
    for name in genome.names:
        nw = genome.lengths[name] // 40
        covered = genome.tokens(name)[:nw * 40] < 4
        bases += int(covered.sum())
        soft += int((covered & genome.soft_mask(name)[:nw * 40]).sum())
        windows += nw
    assert report["split"] == "fasta-human_chr17_hg19_part"
    assert report["n_bases"] == bases and report["n_windows"] == windows
    assert report["soft_masked"]["n_bases"] == soft > 0
    assert report["unmasked"]["n_bases"] == bases - soft
    assert 0.0 <= report["soft_masked"]["accuracy"] <= 1.0


def test_cli_writes_json_tensorboard_and_examples(run, capsys):
    before_events = read_events(run / "tensorboard")[0]
    assert not any(tag.startswith("test/") for tag in before_events)
    assert evaluate.main([str(run), "--examples", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    path = run / "eval_test_deterministic_step4.json"
    report = json.loads(path.read_text())
    for key in ("accuracy", "loss", "bits_per_base", "n_bases", "step", "n_windows", "n_excluded_n",
                "accuracy_by_base", "confusion", "accuracy_by_position", "position_summary", "soft_masked",
                "unmasked", "examples"):
        assert key in report
    assert report["step"] == 4 and len(report["examples"]) == 2
    windows = [e["window"] for e in report["examples"]]
    assert windows == evaluator.choose_examples(int(report["n_windows"]), 2, 3)
    example = report["examples"][0]["text"]
    assert "target     " in example and "mismatch   " in example and "confidence " in example
    assert example.split("\n", 1)[1] in out
    assert f"{100 * report['accuracy']:.2f}%" in out and "confusion" in out and "bits/base" in out

    scalars, texts = read_events(run / "tensorboard")
    assert scalars["test/accuracy"] == [(4, pytest.approx(report["accuracy"]))]
    assert scalars["test/loss"][0][1] == pytest.approx(report["loss"])
    assert scalars["test/bits_per_base"][0][1] == pytest.approx(report["bits_per_base"])
    assert scalars["test/n_bases"][0][1] == report["n_bases"]
    assert "test/accuracy_A" in scalars and "test/accuracy_position_edges" in scalars
    assert {"test/report", "test/examples"} <= {t.split("/text_summary")[0] for t in texts}


def test_valid_split_and_older_step(run):
    report = evaluate.evaluate(run, **quiet(split="valid", step=2))
    assert report["split"] == "valid" and report["step"] == 2 and report["n_bases"] > 0


# ----------------------------------------------------------------------------------------------
# Errors and read-only checkpoints


def error_of(capsys, *argv):
    code = evaluate.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_errors_are_one_line_before_compute(run, tmp_path, capsys):
    digest = tree_digest(run / "checkpoints")
    assert "does not exist" in error_of(capsys, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no checkpoints" in error_of(capsys, tmp_path / "empty")
    (tmp_path / "empty2" / "checkpoints").mkdir(parents=True)
    assert "no checkpoints" in error_of(capsys, tmp_path / "empty2")
    err = error_of(capsys, run, "--step", 3)
    assert "no checkpoint at step 3" in err and "available: 2, 4" in err
    other = copy_run(run, tmp_path / "other", latent_len=8)
    other_digest = tree_digest(other / "checkpoints")
    err = error_of(capsys, other)
    assert "another architecture" in err and "model.latent_len: 6 -> 8" in err
    assert "FASTA file not found" in error_of(capsys, run, "--fasta", tmp_path / "nope.fa")
    bad = tmp_path / "bad.fa"
    bad.write_text(">r\nACGT\nAC-T\n")
    assert "invalid character '-'" in error_of(capsys, run, "--fasta", bad)
    short = tmp_path / "short.fa"
    short.write_text(">r1\nACGTACGTAC\n>r2\nACGT\n")
    assert "no record is at least window_len=40" in error_of(capsys, run, "--fasta", short)
    assert "--repeats > 1 needs --mode stochastic" in error_of(capsys, run, "--repeats", 2)
    assert tree_digest(run / "checkpoints") == digest
    assert tree_digest(other / "checkpoints") == other_digest


def test_failed_restore_names_differences_and_leaves_checkpoints_alone(run, tmp_path):
    digest = tree_digest(run / "checkpoints")
    opened = trained.open_run(run)  # the real config, so the pre-check passes...
    other = load_config(None, SMALL + ["model.latent_len=8"])  # ...then a mismatched model reaches restore
    with pytest.raises(checkpoint.CheckpointError, match=r"enc_conv/kernel shape \(3, 4, 6\) vs model \(3, 4, 8\)"):
        trained.restore_variables(opened, other)
    opened.close()
    evaluate.evaluate(run, **quiet(examples=1))
    assert tree_digest(run / "checkpoints") == digest


# ----------------------------------------------------------------------------------------------
# Per-base errors


def test_per_base_errors_cover_the_genome(run):
    rates = evaluate.per_base_errors(run, stride=20)
    config = load_config(run / "config.yaml")
    genome = steps.open_data(config).genome
    assert list(rates) == genome.names
    for name, rate in rates.items():
        assert rate.dtype == np.float32 and rate.shape == (genome.lengths[name],)
        scored = np.isfinite(rate)
        np.testing.assert_array_equal(scored, genome.tokens(name) < 4)  # every base, the tail included
        assert rate[scored].min() >= 0.0 and rate[scored].max() <= 1.0
        # Windows tiled at stride 20 of length 40: values are k/1, k/2 (or k/3 near the tail window).
        assert np.all(np.isin(np.round(rate[scored] * 6), np.arange(7)))


def test_visualize_errors_draws_map_and_bedgraph(run, tmp_path):
    from jaxseq.visualize.__main__ import main as visualize

    out = tmp_path / "errors.png"
    assert visualize(["errors", str(run), "--out", str(out), "--stride", "20", "--step", "2"]) == 0
    assert out.stat().st_size > 0
    lines = out.with_suffix(".bedgraph").read_text().splitlines()
    assert lines[0].startswith("track type=bedGraph")
    record, start, end, value = lines[1].split("\t")
    assert int(start) == 0 and 0.0 <= float(value) <= 1.0


def test_chunked_fetches_give_the_same_sums(run, monkeypatch):
    once = evaluate.evaluate(run, **quiet())
    monkeypatch.setattr(evaluator, "_EXACT_F32", 1)  # fetch and add on the host after every batch
    every_batch = evaluate.evaluate(run, **quiet())
    # Counts are exact either way; loss sums differ only by float32 vs float64 rounding.
    for key in ("loss", "bits_per_base"):
        assert every_batch.pop(key) == pytest.approx(once.pop(key), rel=1e-6)
    every_batch.pop("unmasked"), once.pop("unmasked")
    assert json.dumps(every_batch, sort_keys=True) == json.dumps(once, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# --bed: only the windows inside a BED file's regions


def test_bed_of_the_test_blocks_scores_exactly_the_test_split(run, tmp_path):
    data = steps.open_data(load_config(run / "config.yaml"))
    test = data.splits["test"]
    bed = tmp_path / "test_blocks.bed"
    # The test intervals, with one repeated and one split in two overlapping halves: merged, counted once.
    first = test[0]
    lines = [f"{iv.record}\t{iv.start}\t{iv.end}" for iv in test] + [
        f"{first.record}\t{first.start}\t{first.start + 100}", f"{first.record}\t{first.start + 50}\t{first.end}"]
    bed.write_text("\n".join(reversed(lines)) + "\n")
    report = evaluate.evaluate(run, bed=bed, **quiet())
    expected = evaluate.evaluate(run, **quiet())
    assert report["split"] == "bed-test_blocks" and report["n_intervals"] == len(test)
    for key in ("n_windows", "n_bases", "accuracy", "confusion"):
        assert report[key] == expected[key], key
    assert report["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_bed_cli_writes_its_split_and_rejects_bad_files(run, tmp_path, capsys):
    chrom = steps.open_data(load_config(run / "config.yaml")).genome.names[0]
    good = tmp_path / "two.bed.gz"
    good.write_bytes(gzip.compress(f"{chrom}\t100\t180\tA\n{chrom}\t1000\t1039\ttoo-short\n".encode()))
    assert evaluate.main([str(run), "--bed", str(good), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "bed-two" in out
    report = evaluate.evaluate(run, bed=good, **quiet())
    assert report["n_windows"] == 2 and report["n_intervals"] == 2  # 80 bases: 2 windows of 40; 39: none
    cases = [(f"{chrom}\t5\t1\n", "bad.bed, line 1: start 5 is after end 1"),
             ("chrZ\t0\t100\n", "bad.bed, line 1: unknown record 'chrZ'"),
             (f"{chrom}\t0\t39\n", "bad.bed: no region (overlapping ones merged) is at least window_len=40")]
    for text, message in cases:
        (tmp_path / "bad.bed").write_text(text)
        assert evaluate.main([str(run), "--bed", str(tmp_path / "bad.bed"), "--no-write"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    with pytest.raises(evaluator.EvaluateError, match="ends in .bed or .bed.gz"):
        evaluate.evaluate(run, bed=tmp_path / "regions.txt", **quiet())


def test_per_base_errors_and_the_error_map_of_bed_regions_only(run, tmp_path, capsys):
    from jaxseq.visualize.__main__ import main as visualize
    from jaxseq.visualize.errors import MAX_REGION_PANELS, region_panels

    genome = steps.open_data(load_config(run / "config.yaml")).genome
    chrom = genome.names[0]
    bed = tmp_path / "r.bed"
    bed.write_text(f"{chrom}\t200\t290\tfirst\n{chrom}\t5000\t5050\n")
    rates = evaluate.per_base_errors(run, stride=20, bed=bed)[chrom]
    inside = np.zeros(len(rates), bool)
    inside[200:290] = inside[5000:5050] = True
    # Every base of a region is scored (the flush window covers its tail), none outside.
    np.testing.assert_array_equal(np.isfinite(rates), inside & (genome.tokens(chrom) < 4))
    out = tmp_path / "regions.png"
    assert visualize(["errors", str(run), "--bed", str(bed), "--stride", "20", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    lines = [line.split("\t") for line in out.with_suffix(".bedgraph").read_text().splitlines()[1:]]
    assert lines and all((200 <= int(a) < int(b) <= 290) or (5000 <= int(a) < int(b) <= 5050) for _, a, b, _ in lines)
    assert list(region_panels([(chrom, 200, 290, "first"), (chrom, 5000, 5050), (chrom, 7, 7)])) == [
        f"first ({chrom}:201-290)", f"{chrom}:5,001-5,050"]
    with pytest.raises(ValueError, match=f"draw 1 to {MAX_REGION_PANELS} regions"):
        region_panels([(chrom, i, i + 1) for i in range(MAX_REGION_PANELS + 1)])
    (tmp_path / "bad.bed").write_text(f"{chrom}\t1\n")
    assert visualize(["errors", str(run), "--bed", str(tmp_path / "bad.bed"), "--out", str(out)]) == 1
    assert "bad.bed, line 1: 2 column(s)" in capsys.readouterr().err
