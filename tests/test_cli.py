"""The command-line entry point: help, the summary stage, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from physsample import Samples
from physsample.cli import CONFIG_DIR


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "physsample", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_system_config():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for path in (CONFIG_DIR / "system").glob("*.yaml"):
        assert path.stem in out.stdout


def test_unknown_system_is_one_line_exit_2():
    out = run_cli("system=nosuchsystem")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "nosuchsystem" in lines[0] and "dw4" in lines[0] and "lj13" in lines[0]
    assert "Traceback" not in out.stderr


def test_user_error_inside_a_stage_is_one_line(tmp_path):
    # manywell needs an even dimension: the ConfigError is raised inside hydra's instantiate
    out = run_cli("system=manywell32", "+system.dim=7", f"run_dir={tmp_path}")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["gmm25", "dw4"])
def test_summary_stage_prints_the_system(name, tmp_path):
    out = run_cli(f"system={name}", "stage=summary", "n_eval=200", f"run_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert f"name: {name}" in out.stdout
    assert "mean energy" in out.stdout or "OpenMM" in out.stdout


def test_mcmc_stage_writes_reference_and_reuses_it(tmp_path):
    args = ("system=gmm25", "stage=mcmc", "mcmc.n_samples=256", f"run_dir={tmp_path}")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    samples = Samples.load(tmp_path / "reference.h5")
    assert samples.x.shape == (256, 2) and samples.metadata["sampler"] == "mala"
    assert "acceptance" in first.stdout
    second = run_cli(*args)
    assert second.returncode == 0 and "reusing" in second.stdout
    torch.testing.assert_close(Samples.load(tmp_path / "reference.h5").x, samples.x)


def test_main_job_runs_every_stage_on_dw4(tmp_path):
    tiny = ("method.n_steps=8", "train.steps=2", "train.batch_size=16", "train.n_samples=64")
    out = run_cli("mcmc.n_samples=200", f"run_dir={tmp_path}", "method=dis", *tiny)
    assert out.returncode == 0, out.stderr
    assert "name: dw4" in out.stdout and "OpenMM" in out.stdout
    reference = Samples.load(tmp_path / "reference.h5")
    assert reference.x.shape == (200, 8) and reference.metadata["sampler"] == "run_md"
    samples = Samples.load(tmp_path / "samples.h5")
    assert samples.x.shape == (64, 8) and samples.metadata["method"] == "dis"


def test_train_then_sample_stages_reuse_and_resume(tmp_path):
    common = (
        "system=gmm25",
        "method=dis",
        "method.n_steps=8",
        "train.steps=4",
        "train.batch_size=32",
        "train.checkpoint_every=2",
        "train.n_samples=128",
        f"run_dir={tmp_path}",
    )
    train = run_cli("stage=train", *common)
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "sampler.pt").exists() and (tmp_path / "train.csv").exists()
    sample = run_cli("stage=sample", *common)
    assert sample.returncode == 0, sample.stderr
    samples = Samples.load(tmp_path / "samples.h5")
    assert samples.x.shape == (128, 2) and samples.log_weights.shape == (128,)
    again = run_cli("stage=train", *common)
    assert "reusing the trained sampler" in again.stdout


def test_sample_stage_without_training_is_a_one_line_error(tmp_path):
    out = run_cli("stage=sample", "system=gmm25", f"run_dir={tmp_path}")
    assert out.returncode == 2
    assert "stage=train" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["system=dw4"], "E3NNControl"),
        (["system=lj13"], "E3NNControl"),
        (["system=gmm25"], "FourierMLP"),
        (["system=lj13", "net=egnn"], "EGNN"),
        (["system=dw4", "net=mlp"], "FourierMLP"),
    ],
)
def test_net_auto_picks_the_systems_network(overrides, expected):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from physsample.cli import make_net

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    system = instantiate(cfg.system)
    net = make_net(cfg, system)
    assert type(net).__name__ == expected
    x = torch.randn(3, system.dim)
    out = net(torch.rand(3), x)
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised control
    again = make_net(cfg, system)  # seeded: the same initial weights
    for a, b in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_main_job_ends_with_a_report(tmp_path):
    tiny = ("method=dis", "method.n_steps=8", "train.steps=3", "train.batch_size=16")
    out = run_cli("system=gmm25", "mcmc.n_samples=128", "train.n_samples=256",
                  "train.progress=false", f"run_dir={tmp_path}", *tiny)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / ".hydra" / "config.yaml").exists()  # the composed config
    text = (tmp_path / "report.md").read_text()
    for key in ("log Z exact", "Δlog Z", "ESS", "sinkhorn", "emc", "ΔF", "training steps | 3"):
        assert key in text, key
    for name in ("energies.png", "free_energy.png", "training.png", "samples_2d.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_file()]


def test_report_stage_without_samples_is_a_one_line_error(tmp_path):
    out = run_cli("stage=report", "system=gmm25", f"run_dir={tmp_path}")
    assert out.returncode == 2
    assert "stage=sample" in out.stderr and "Traceback" not in out.stderr
