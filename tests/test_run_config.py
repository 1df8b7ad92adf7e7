"""A run's config from its workdir alone (training/run_config.py): WORKDIR/config.json read
back as the config, an explicit --config checked against it on the model's identity, and
evaluate.py run with --workdir only."""

import json
import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from errors import UserError
from tests import cli_zygote
from tests.cli_errors import error_line
from tests.configs import tiny
from training import checkpoint, loop, run_config

ROOT = Path(__file__).resolve().parents[1]


def _write(workdir: Path, config) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    # As training/loop.py writes it.
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return workdir


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    return cli_zygote.run("evaluate.py", *args, timeout=600, env=env)



def test_a_workdir_without_config_json_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^no config.json in .*: pass --config, or train "
                                        r"first$"):
        run_config.load_run_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json cannot be read"):
        run_config.load_run_config(tmp_path)


def test_config_json_reads_back_as_the_config_it_was(tmp_path):
    config = tiny.get_config("vesde")
    loaded = run_config.load_run_config(_write(tmp_path, config))
    assert loaded.to_dict() == config.to_dict()  # tuples are tuples again, placeholders None
    assert checkpoint.config_identity(loaded) == checkpoint.config_identity(config)
    assert loaded.is_locked
    with pytest.raises(AttributeError):
        loaded.sampling.methd = "ode"  # a misspelt key is an error, as with --config


def test_an_explicit_config_of_another_model_is_refused_naming_the_key(tmp_path):
    workdir = _write(tmp_path, tiny.get_config("vpsde"))
    other = tiny.get_config("vpsde")
    other.model.nf = 16
    with pytest.raises(UserError, match=r"--config gives model\.nf=16, but the run in .* was "
                                        r"trained with 8 \(config\.json\)"):
        run_config.load_run_config(workdir, other)
    with pytest.raises(UserError, match=r"--config gives data\.centered=False"):
        run_config.load_run_config(workdir, tiny.get_config("vesde"))


def test_an_explicit_config_keeps_its_sampling_eval_and_sharding(tmp_path):
    workdir = _write(tmp_path, tiny.get_config("vpsde"))
    explicit = tiny.get_config("vpsde")
    explicit.sampling.method, explicit.sampling.steps = "ode", 7
    explicit.eval.num_samples, explicit.sharding.mesh = 12, (("data", 1), ("fsdp", -1))
    explicit.model.dtype = "bfloat16"  # how it runs, not what it is
    loaded = run_config.load_run_config(workdir, explicit)
    assert (loaded.sampling.method, loaded.sampling.steps) == ("ode", 7)
    assert loaded.eval.num_samples == 12 and loaded.sharding.mesh == (("data", 1), ("fsdp", -1))
    assert loaded.model.dtype == "bfloat16"
    # Without a config.json (samples-only evaluation, older runs) the explicit one stands.
    assert run_config.load_run_config(tmp_path / "elsewhere", explicit) is explicit


def test_overrides_without_config_go_to_the_runs_config(tmp_path):
    argv = ["evaluate.py", f"--workdir={tmp_path}", "--config.sampling.steps=5"]
    with pytest.raises(UserError, match="overrides without --config need the run's "
                                        r"config\.json"):
        run_config.workdir_config_argv(argv)
    _write(tmp_path, tiny.get_config("vpsde"))
    rewritten = run_config.workdir_config_argv(argv)
    assert rewritten[1] == f"--config={Path(run_config.__file__).resolve()}:{tmp_path}"
    assert rewritten[2:] == argv[1:]
    for unchanged in (["x.py", f"--workdir={tmp_path}"],
                      ["x.py", "--config=c.py", "--config.sampling.steps=5"],
                      ["x.py", "--config", "c.py", f"--workdir={tmp_path}"]):
        assert run_config.workdir_config_argv(unchanged) == unchanged
    spaced = ["x.py", "--workdir", str(tmp_path), "--config.eval.seed=3"]
    assert run_config.workdir_config_argv(spaced)[1].endswith(f":{tmp_path}")
    assert run_config.get_config(str(tmp_path)).model.nf == 8  # the config-file entry


def test_evaluate_py_needs_only_the_workdir(tmp_path):
    config = tiny.get_config("vpsde")
    workdir = _write(tmp_path / "run", config)
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=images)
    proc = _evaluate(f"--workdir={workdir}", f"--samples={tmp_path / 's.npz'}",
                     "--metrics=cs", "--config.eval.seed=3")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "metrics.json").read_text())
    assert report["seed"] == 3 and "classifier_score" in report["model"]
    line = error_line(_evaluate(f"--workdir={workdir}", f"--samples={tmp_path / 's.npz'}",
                                 "--metrics=cs", "--config.model.nf=16"))
    assert "--config gives model.nf=16" in line
    line = error_line(_evaluate(f"--workdir={tmp_path / 'none'}", "--metrics=cs"))
    assert line.endswith("no config.json in " + str(tmp_path / "none")
                         + ": pass --config, or train first")


def test_evaluate_py_draws_from_a_trained_workdir_without_config(tmp_path):
    loop.run(tiny.get_config("vpsde"), tmp_path, devices=jax.devices()[:1])
    proc = _evaluate(f"--workdir={tmp_path}", "--metrics=cs", "--num_samples=20",
                     "--config.sampling.steps=2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["samples"]["n_fake"] == 20 and report["samples"]["step"] == 2
