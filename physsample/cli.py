"""The ``physsample`` command: composes hydra configs, instantiates and calls the library.

Usage::

    physsample                          # the main job on the default system
    physsample system=lj13              # another system
    physsample --help                   # hydra's help: config groups and options
    physsample -m system=gmm25,mw5      # a sweep: one job per system (joblib, in parallel)
    torchrun --standalone --nproc_per_node=2 -m physsample stage=train run_dir=outputs/ddp
                                        # data-parallel training (physsample.distributed)

In a sweep (``-m``) each job writes into its own folder, ``run_dir/<overrides>``. Under
torchrun (``distributed=auto`` notices it) every rank trains its share of the batch and
rank 0 alone runs the other stages, prints and writes files.

User errors (bad config values, unknown names, malformed files) end with one line on
stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from physsample.errors import ConfigError, UserError

__all__ = ["main", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _fail(message: str) -> None:
    print(f"physsample: error: {message}", file=sys.stderr)
    sys.exit(2)


def _check_group_choices(argv: list[str]) -> None:
    """Fail early, in one line, on an override naming a config that does not exist."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        group_dir = CONFIG_DIR / key
        if not sep or key.startswith("hydra") or not group_dir.is_dir() or "(" in value:
            continue  # hydra's own groups hold plugin configs; sweep functions pass through
        for choice in value.split(","):  # a sweep over several options (with -m)
            if (group_dir / f"{choice}.yaml").exists():
                continue
            choices = sorted(p.stem for p in group_dir.glob("*.yaml"))
            noun = "system" if key == "system" else f"{key} config"
            _fail(f"unknown {noun} '{choice}'; available: {', '.join(choices)}")


def _stage_summary(cfg: DictConfig) -> None:
    from physsample.systems.describe import describe

    system = instantiate(cfg.system)
    print(describe(system, n=int(cfg.n_eval), seed=int(cfg.seed)), flush=True)


def _stage_mcmc(cfg: DictConfig) -> None:
    from physsample.pipeline import mcmc_stage

    system = instantiate(cfg.system)
    sampler = instantiate(cfg.mcmc)
    mcmc_stage(cfg.run_dir, system, sampler, n_chains=int(cfg.n_chains), seed=int(cfg.seed))


def _train_options(cfg: DictConfig) -> dict:
    options = OmegaConf.to_container(cfg.train, resolve=True)
    for key in ("steps", "n_samples", "sample_batch_size"):
        options.pop(key)
    return dict(options, device=cfg.device, seed=int(cfg.seed))


def _net_config(cfg: DictConfig, system) -> DictConfig | None:
    """The ``net`` group's config, with ``net=auto`` resolved for ``system``."""
    net = cfg.get("net")
    if net is None or not net.get("auto", False):
        return net
    from physsample.systems.base import ParticleSystem

    if not isinstance(system, ParticleSystem):
        name = "mlp"
    else:
        own = f"e3nn_{cfg.system.get('name', '')}"
        name = own if (CONFIG_DIR / "net" / f"{own}.yaml").exists() else "egnn"
    return OmegaConf.load(CONFIG_DIR / "net" / f"{name}.yaml")


def make_net(cfg: DictConfig, system):
    """The control network of the ``net`` group, sized for ``system`` and seeded by ``seed``."""
    import torch

    from physsample.systems.base import ParticleSystem

    net_cfg = _net_config(cfg, system)
    if net_cfg is None:
        return None
    factory = instantiate(net_cfg)
    takes = inspect.signature(factory).parameters
    if isinstance(system, ParticleSystem) and "n_particles" in takes:
        shape = dict(n_particles=system.n_particles, spatial_dim=system.spatial_dim)
    else:
        shape = dict(dim=system.dim)
    with torch.random.fork_rng(devices=[]):  # initialised from ``seed`` alone
        torch.manual_seed(int(cfg.seed))
        try:
            return factory(**shape)
        except TypeError as err:
            raise ConfigError(
                f"net {net_cfg.get('_target_')} does not fit system {system.name!r} ({err}); "
                "choose another net=..."
            ) from err


def _stage_train(cfg: DictConfig) -> None:
    from physsample.pipeline import train_stage

    system = instantiate(cfg.system)
    method = instantiate(cfg.method)
    options = dict(_train_options(cfg), net=make_net(cfg, system))
    train_stage(cfg.run_dir, system, method, steps=int(cfg.train.steps), options=options)


def _stage_sample(cfg: DictConfig) -> None:
    from physsample.pipeline import sample_stage

    sample_stage(
        cfg.run_dir,
        instantiate(cfg.system),
        n_samples=int(cfg.train.n_samples),
        batch_size=cfg.train.sample_batch_size,
        seed=int(cfg.seed),
        device=cfg.device,
    )


def _stage_report(cfg: DictConfig) -> None:
    from physsample.pipeline import report_stage

    n_eval = int(cfg.get("report_n_eval", 2000))
    report_stage(cfg.run_dir, instantiate(cfg.system), n_eval=n_eval, seed=int(cfg.seed))


def _stage_main(cfg: DictConfig) -> None:
    for stage in (_stage_summary, _stage_mcmc, _stage_train, _stage_sample, _stage_report):
        _ranked(stage)(cfg)


STAGES = {
    "main": _stage_main,
    "summary": _stage_summary,
    "mcmc": _stage_mcmc,
    "train": _stage_train,
    "sample": _stage_sample,
    "report": _stage_report,
}


def _user_error(err: BaseException) -> UserError | None:
    """The UserError behind ``err`` (hydra's instantiate wraps exceptions), if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _ranked(stage):
    """Under torchrun: training on every rank, any other stage on rank 0 while the rest wait."""
    from physsample import distributed

    if stage in (_stage_train, _stage_main) or distributed.world_size() == 1:
        return stage

    def on_rank_zero(cfg: DictConfig) -> None:
        if distributed.is_main():
            stage(cfg)
        distributed.barrier()

    return on_rank_zero


def _setup_distributed(cfg: DictConfig) -> None:
    """Join torchrun's process group (``distributed`` = auto, true or false).

    Every rank gets rank 0's ``run_dir`` (its default holds the time, which ranks could
    read a second apart), and the ranks other than 0 print nothing.
    """
    from physsample import distributed

    mode = str(cfg.get("distributed", "auto")).lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"distributed must be auto, true or false, got {mode!r}")
    if mode == "false" or (mode == "auto" and not distributed.launched_by_torchrun()):
        return
    if not distributed.launched_by_torchrun():
        raise ConfigError(
            "distributed=true needs several ranks: launch with "
            "torchrun --nproc_per_node=<n> -m physsample ..."
        )
    distributed.init_from_env(str(cfg.device))
    with open_dict(cfg):
        cfg.run_dir = distributed.gather_objects(str(cfg.run_dir))[0]
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


def _job_run_dir(cfg: DictConfig) -> None:
    """In a sweep (``-m``), each job's ``run_dir`` is its own hydra output folder."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir


def distributed_shutdown() -> None:
    from physsample import distributed

    distributed.shutdown(exit_process=True)


def _run(cfg: DictConfig) -> None:
    stage = STAGES.get(str(cfg.stage))
    if stage is None:
        _fail(f"unknown stage '{cfg.stage}'; available: {', '.join(STAGES)}")
    try:
        _job_run_dir(cfg)
        _setup_distributed(cfg)
        _ranked(stage)(cfg)
        distributed_shutdown()
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        _fail(str(user_error))


def main() -> None:
    """Console-script entry point."""
    if not CONFIG_DIR.is_dir():
        _fail(f"config folder {CONFIG_DIR} not found; install physsample with 'pip install -e .'")
    _check_group_choices(sys.argv[1:])
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_run)()


if __name__ == "__main__":
    main()
