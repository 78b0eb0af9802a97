"""jaxseq.load_run / TrainedModel: restoring params and batch stats only, encode/log_probs/reconstruct, evaluate."""

import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxseq
from jaxseq import checkpoint, evaluate, steps, trained
from jaxseq import tokens as tok
from jaxseq.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs(tiny_run, capsys):
    text = README.read_text()
    section = text[text.index("## Using a trained model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'jaxseq.load_run("runs/lambda")' in code
    exec(compile(code.replace("runs/lambda", str(tiny_run)), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 16 multilayer"
    assert re.fullmatch(r"[ACGT]{16}", out[1])
    assert out[2].startswith("test accuracy ")


def test_restores_params_and_batch_stats_of_the_checkpoint_only(tiny_run, tiny_model):
    config = load_config(tiny_run / "config.yaml")
    manager = checkpoint.create_manager(tiny_run, read_only=True)
    state, _, _ = checkpoint.restore(manager, 2, steps.create_train_state(config))
    manager.close()
    assert tiny_model.step == 2 and tiny_model.window_len == 16 and tiny_model.run_dir == tiny_run.absolute()
    assert set(tiny_model.variables) == {"params", "batch_stats"}
    loaded = tiny_model.variables
    for want, got in ((state.params, loaded["params"]), (state.batch_stats, loaded["batch_stats"])):
        assert jax.tree.structure(want) == jax.tree.structure(got)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    init = steps.init_variables(config, config.train.seed)  # training moved them away from the start
    assert not np.array_equal(jax.tree.leaves(init["batch_stats"])[0], jax.tree.leaves(loaded["batch_stats"])[0])


def test_outputs_shapes_and_batching(tiny_model):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, size=(5, 16)).astype(np.int8)
    text = [tok.decode(t) for t in tokens]
    log_probs = tiny_model.log_probs(tokens, batch_size=2)  # 3 calls, the last padded
    assert log_probs.shape == (5, 16, 4) and log_probs.dtype == np.float32
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(tiny_model.log_probs(text, batch_size=256), log_probs, rtol=1e-5, atol=1e-6)
    latent = tiny_model.encode(text, batch_size=3)
    assert latent.shape == (5, 5) and latent.dtype == np.float32
    np.testing.assert_allclose(tiny_model.encode(text[1]), latent[1:2], rtol=1e-5, atol=1e-6)
    rebuilt = tiny_model.reconstruct(tokens)
    assert rebuilt == [tok.decode(row) for row in log_probs.argmax(-1)] and len(rebuilt[0]) == 16
    assert tiny_model.encode(text[0].lower()).shape == (1, 5)  # soft-masked letters are the same bases


@pytest.mark.parametrize("seqs, message", [
    ("ACGT", "sequence 0 has 4 bases; this model takes window_len=16"),
    (["A" * 16, "ACGTACGTACGTACG-"], "invalid character '-' at position 16"),
    (np.zeros((2, 15), np.int8), r"shape \(N, 16\)"),
    (np.full((1, 16), 7), r"tokens must be in 0\.\.5"),
])
def test_bad_input_is_one_line_value_error(tiny_model, seqs, message):
    with pytest.raises(ValueError, match=message) as info:
        tiny_model.encode(seqs)
    assert "\n" not in str(info.value)


def test_evaluate_returns_the_cli_report_and_from_config_is_training_start(tiny_run, tiny_model):
    cli = evaluate.evaluate(tiny_run, write=False)
    report = tiny_model.evaluate("test")
    assert report["accuracy"] == cli["accuracy"] and report["n_bases"] == cli["n_bases"] > 0
    assert report["confusion"] == cli["confusion"] and report["step"] == cli["step"] == 2
    config = load_config(tiny_run / "config.yaml")
    fresh = jaxseq.TrainedModel.from_config(config)
    start = steps.create_train_state(config)
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(fresh.variables["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert fresh.step == 0 and fresh.run_dir is None
    assert 0.0 <= fresh.evaluate("valid")["accuracy"] <= 1.0


def test_config_from_checkpoint_when_config_yaml_is_gone(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "config.yaml").unlink()
    loaded = trained.load_run(copy, step=2)
    assert loaded.config_source == "checkpoint meta" and loaded.config.model.latent_len == 5
    with pytest.raises(ValueError, match="no checkpoint at step 1 .* available: 2"):
        trained.load_run(copy, step=1)
