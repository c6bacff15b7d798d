"""The command-line entry point: help, the summary stage, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    out = run_cli("system=manywell32", "+system.dim=7", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["gmm25", "dw4"])
def test_summary_stage_prints_the_system(name, tmp_path):
    out = run_cli(f"system={name}", "n_eval=200", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert f"name: {name}" in out.stdout
    assert "mean energy" in out.stdout or "OpenMM" in out.stdout
