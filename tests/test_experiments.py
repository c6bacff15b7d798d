"""Every experiment config composes, and its system, method and network instantiate."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from physsample.cli import CONFIG_DIR, make_net
from physsample.methods.base import DiffusionSampler

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _compose(name: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}"])


def _accepted_options(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind is not p.VAR_KEYWORD}
    return names


def test_there_are_experiments():
    assert {"dw4_lrds", "lj13_lrds", "gmm25_lrds", "manywell32_lrds", "vs_md"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name):
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "# Run:" in text
    cfg = _compose(name)
    system = instantiate(cfg.system)
    assert system.name in name or (name == "vs_md" and system.name == "dw4")
    method = instantiate(cfg.method)
    assert isinstance(method, functools.partial) and issubclass(method.func, DiffusionSampler)
    train = {k: v for k, v in cfg.train.items() if k not in ("steps", "n_samples")}
    train.pop("sample_batch_size")
    options = {**method.keywords, **train}
    unknown = set(options) - _accepted_options(method.func)
    assert not unknown, f"{name}: options the method does not take: {unknown}"
    assert int(cfg.train.steps) > 0 and int(cfg.train.n_samples) > 0
    sampler = instantiate(cfg.mcmc)
    assert callable(sampler)
    net = make_net(cfg, system)
    x = torch.randn(5, system.dim)
    assert net(torch.rand(5), x).shape == x.shape
