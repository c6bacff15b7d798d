"""The ``physsample`` command: composes hydra configs, instantiates and calls the library.

Usage::

    physsample                          # the main job on the default system
    physsample system=lj13              # another system
    physsample --help                   # hydra's help: config groups and options

User errors (bad config values, unknown names, malformed files) end with one line on
stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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
        if not sep or not group_dir.is_dir() or (group_dir / f"{value}.yaml").exists():
            continue
        choices = sorted(p.stem for p in group_dir.glob("*.yaml"))
        noun = "system" if key == "system" else f"{key} config"
        _fail(f"unknown {noun} '{value}'; available: {', '.join(choices)}")


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


def _stage_main(cfg: DictConfig) -> None:
    for stage in (_stage_summary, _stage_mcmc, _stage_train, _stage_sample):
        stage(cfg)


STAGES = {
    "main": _stage_main,
    "summary": _stage_summary,
    "mcmc": _stage_mcmc,
    "train": _stage_train,
    "sample": _stage_sample,
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


def _run(cfg: DictConfig) -> None:
    stage = STAGES.get(str(cfg.stage))
    if stage is None:
        _fail(f"unknown stage '{cfg.stage}'; available: {', '.join(STAGES)}")
    try:
        stage(cfg)
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
