"""The registry, the config group that mirrors it, and the base-class contracts."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import physsample as ps
from physsample.cli import CONFIG_DIR
from physsample.errors import ConfigError, NoExactSamplerError, ShapeError, UnknownSystemError

SYSTEM_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "system").glob("*.yaml"))


def test_every_registered_system_has_a_config_and_back():
    assert set(SYSTEM_CONFIGS) == set(ps.systems.available())


@pytest.mark.parametrize("name", SYSTEM_CONFIGS)
def test_config_instantiates_the_registered_system(name):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"system={name}"])
    system = instantiate(cfg.system)
    reference = ps.systems.get(name)
    assert type(system) is type(reference)
    assert system.name == name and system.dim == reference.dim
    x = torch.randn(3, system.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if isinstance(system, ps.systems.ParticleSystem):
        x = system.default_positions()[None].double() + 0.01 * x
    torch.testing.assert_close(system.energy(x), reference.energy(x))


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownSystemError) as info:
        ps.systems.get("dw5")
    message = str(info.value)
    assert "dw5" in message and all(name in message for name in ps.systems.available())


def test_families_by_name():
    assert ps.systems.get("manywell8").dim == 8
    assert ps.systems.get("lj7").n_particles == 7


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError, match="funnel"):
        ps.systems.get("funnel", no_such_parameter=1)


@pytest.mark.parametrize("shape", [(5,), (2, 7), (2, 8, 1)])
def test_bad_shapes_are_rejected(shape):
    system = ps.systems.get("dw4")
    with pytest.raises(ShapeError, match=r"\(batch, 8\)"):
        system.energy(torch.zeros(shape))


def test_integer_positions_are_rejected():
    with pytest.raises(ShapeError, match="floating"):
        ps.systems.get("dw4").energy(torch.zeros(2, 8, dtype=torch.long))


def test_no_exact_sampler_is_a_clear_error():
    system = ps.systems.get("lj13")
    assert not system.has_exact_sampler
    with pytest.raises(NoExactSamplerError, match="lj13"):
        system.sample_exact(3)


def test_force_works_under_no_grad():
    system = ps.systems.get("gmm25")
    x = torch.randn(4, 2, dtype=torch.float64)
    with torch.no_grad():
        force = system.force(x)
    assert force.shape == x.shape and not force.requires_grad
