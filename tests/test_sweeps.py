"""Hydra sweeps: the launcher configs compose, and a local multirun gives each job its folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from physsample import Samples
from physsample.cli import CONFIG_DIR


def _compose(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_default_launcher_is_local_joblib():
    launcher = _compose().hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher")
    assert launcher.n_jobs == 2
    assert _compose("hydra/launcher=joblib").hydra.launcher.n_jobs == -1  # the plugin's own


def test_slurm_launcher_composes_with_our_defaults_and_overrides():
    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "system=lj13")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.timeout_min == 240 and launcher.max_num_timeout == 3
    built = instantiate(launcher)  # the launcher object, as hydra builds it (no SLURM needed)
    assert built.params["partition"] == "gpu" and built.params["gpus_per_node"] == 1


def test_unknown_launcher_key_is_rejected():
    with pytest.raises(Exception, match="n_job"):
        _compose("hydra/launcher=slurm", "hydra.launcher.n_job=3")


def test_sweep_folders_leave_out_stage_and_run_dir():
    cfg = _compose("system=gmm25", "stage=train")
    assert cfg.hydra.sweep.subdir == "system=gmm25"  # stage=train is not in the name
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert {"stage", "run_dir", "device", "distributed"} <= excluded


def test_local_multirun_writes_each_job_into_its_own_folder(tmp_path):
    args = ["stage=mcmc", "system=gmm25,mw5", "mcmc.n_samples=64", "mcmc.progress=false"]
    cmd = [sys.executable, "-m", "physsample", "-m", *args, f"run_dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name, dim in (("gmm25", 2), ("mw5", 5)):
        (job,) = tmp_path.glob(f"*system={name}")
        assert job.name == f"mcmc.n_samples=64,mcmc.progress=False,system={name}"
        samples = Samples.load(job / "reference.h5")
        assert samples.x.shape == (64, dim) and samples.system == name
    assert not (tmp_path / "reference.h5").exists()  # nothing written to the sweep's root


def test_a_typo_in_a_swept_option_is_one_line_before_any_job():
    cmd = [sys.executable, "-m", "physsample", "-m", "system=gmm25,nosuch", "stage=summary"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "unknown system 'nosuch'" in lines[0]
