"""The stages of the main job as plain functions over a run directory.

Each stage reads what the previous one wrote in ``run_dir`` and writes its own output
there; a stage whose output exists is not run again (delete the file to redo it), and an
interrupted training stage resumes from its checkpoints. The hydra entry point
(:mod:`physsample.cli`) only instantiates the configured objects and calls these.

==========  ==========================  ==========================================
stage       reads                       writes
==========  ==========================  ==========================================
mcmc        –                           ``reference.h5`` (Samples)
train       ``reference.h5`` (LRDS)     ``checkpoints/``, ``train.csv``, ``sampler.pt``
sample      ``sampler.pt``              ``samples.h5`` (Samples with log-weights)
report      ``samples.h5``              ``report.md``, ``metrics.json``, PNG figures
==========  ==========================  ==========================================

The report stage also reads ``reference.h5`` and ``train.csv`` where present; it is
cheap and is always regenerated (no reuse rule).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from physsample.errors import ConfigError
from physsample.mcmc.reference import format_diagnostics, run_reference
from physsample.samples import Samples
from physsample.systems.base import System

__all__ = [
    "REFERENCE",
    "SAMPLER",
    "SAMPLES",
    "REPORT",
    "mcmc_stage",
    "train_stage",
    "sample_stage",
    "report_stage",
]

REFERENCE, SAMPLER, SAMPLES, REPORT = "reference.h5", "sampler.pt", "samples.h5", "report.md"


def _say(message: str) -> None:
    print(message, flush=True)


def mcmc_stage(
    run_dir: str | Path,
    system: System,
    sampler: Callable | None,
    *,
    n_chains: int = 64,
    seed: int = 0,
) -> Samples:
    """Reference samples in ``run_dir/reference.h5`` (reused if present); prints diagnostics."""
    path = Path(run_dir) / REFERENCE
    if path.exists():
        _say(f"reusing reference samples in {path}")
        samples = Samples.load(path)
    else:
        samples = run_reference(system, sampler, n_chains=n_chains, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        samples.save(path)
        _say(f"wrote {path}")
    _say(format_diagnostics(samples))
    return samples


def _needs_reference(method: Callable) -> bool:
    from physsample.methods.lrds import LRDS

    target = getattr(method, "func", method)
    return isinstance(target, type) and issubclass(target, LRDS)


def train_stage(
    run_dir: str | Path,
    system: System,
    method: Callable[..., Any],
    *,
    steps: int,
    options: dict[str, Any] | None = None,
):
    """Build ``method(system, **options)``, train it for ``steps`` and save ``sampler.pt``.

    LRDS gets ``reference=`` the run's ``reference.h5`` when it exists (else it runs
    MALA itself). Checkpoints go to ``run_dir/checkpoints`` and the log to
    ``run_dir/train.csv``, so a killed run resumes where it stopped.
    """
    from physsample.methods.base import DiffusionSampler

    run_dir = Path(run_dir)
    path = run_dir / SAMPLER
    if path.exists():
        _say(f"reusing the trained sampler in {path}")
        return DiffusionSampler.load(path, system=system)
    kwargs = dict(
        options or {}, checkpoint_dir=run_dir / "checkpoints", log_csv=run_dir / "train.csv"
    )
    reference = run_dir / REFERENCE
    if _needs_reference(method) and reference.exists():
        kwargs["reference"] = Samples.load(reference)
    sampler = method(system, **kwargs)
    sampler.fit(int(steps))
    sampler.save(path)
    _say(f"wrote {path}")
    return sampler


def sample_stage(
    run_dir: str | Path,
    system: System,
    *,
    n_samples: int,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> Samples:
    """Draw ``n_samples`` weighted samples from ``run_dir/sampler.pt`` into ``samples.h5``."""
    from physsample.methods.base import DiffusionSampler

    run_dir = Path(run_dir)
    path = run_dir / SAMPLES
    if path.exists():
        _say(f"reusing samples in {path}")
        samples = Samples.load(path)
    else:
        if not (run_dir / SAMPLER).exists():
            raise ConfigError(f"no trained sampler in {run_dir}; run stage=train there first")
        overrides = {} if device is None else {"device": device}
        sampler = DiffusionSampler.load(run_dir / SAMPLER, system=system, **overrides)
        samples = sampler.sample(int(n_samples), generator=int(seed), batch_size=batch_size)
        samples.save(path)
        _say(f"wrote {path}")
    _say(format_diagnostics(samples))
    return samples


def report_stage(
    run_dir: str | Path,
    system: System,
    *,
    n_eval: int = 2000,
    seed: int = 0,
) -> Path:
    """Write ``report.md``, ``metrics.json`` and the figures from ``run_dir/samples.h5``.

    Always regenerated (cheap: a few seconds to a minute for geometric W2 on 2000
    samples). Uses ``reference.h5`` and ``train.csv`` where present.
    """
    from physsample.analysis.report import write_report

    run_dir = Path(run_dir)
    if not (run_dir / SAMPLES).exists():
        raise ConfigError(f"no samples in {run_dir}; run stage=sample there first")
    reference = run_dir / REFERENCE
    write_report(
        run_dir,
        system,
        Samples.load(run_dir / SAMPLES),
        Samples.load(reference) if reference.exists() else None,
        n_eval=int(n_eval),
        seed=int(seed),
    )
    path = run_dir / REPORT
    _say(f"wrote {path}")
    return path
