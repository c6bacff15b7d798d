"""The interface every diffusion sampler shares: build, fit, sample, log Z, save, load.

A method (PIS, DDS, DIS, LRDS) is a subclass that only builds its reference process
(:meth:`DiffusionSampler.build_reference`: a schedule and the law p_t^ref in closed
form). :class:`DiffusionSampler` adds the rest:

- the control ``u = reference.base_control + phi_theta`` (:class:`ResidualControl`),
  ``phi_theta`` a network that outputs zero at initialisation, so that the untrained
  sampler is the reference's time reversal (for an OU reference the sampler's score
  estimate is s_theta = grad log p_t^ref + phi_theta);
- the discretised generative process (time grid, integrator) and its exact path
  log-weights, so that ``E[w] = Z`` for any network and any number of steps;
- training with the shared :class:`~physsample.methods.training.Trainer` and the
  log-variance (``loss="lv"``, default) or reverse-KL (``loss="kl"``) loss;
- sampling with the EMA weights into :class:`~physsample.samples.Samples` whose
  ``log_weights`` are the exact path log-weights (noise scale 1);
- :meth:`DiffusionSampler.save` and :meth:`DiffusionSampler.load`.

Speed of the log-variance loss
------------------------------
- Rollouts run under ``torch.no_grad()``; the gradient comes from
  :func:`~physsample.diffusion.log_weights_from_states`, which recomputes the
  control-dependent terms ``chunk`` steps at a time (memory: the states plus one chunk),
  or from a random subset of ``n_grad_steps`` time steps (an unbiased estimate).
- ``reuse=k`` trains on one batch of trajectories for k consecutive updates. The LV loss
  accepts trajectories from any path measure; the log-weights are recomputed with the
  current parameters at every update (the target's energy is not evaluated again).
- The exponential integrator (default) solves the linear part of the SDE exactly, so
  fewer steps suffice.
- Under torchrun each rank simulates ``batch_size / world_size`` trajectories and the
  losses, dropped counts, ESS and log Z are those of the global batch
  (:mod:`physsample.distributed`); only rank 0 writes files.

Example
-------
>>> import physsample as ps
>>> system = ps.systems.get("gmm25")                         # doctest: +SKIP
>>> sampler = ps.methods.LRDS(system, n_components=25)       # doctest: +SKIP
>>> out = sampler.fit(steps=200).sample(10_000)              # doctest: +SKIP
>>> out.metadata["log_z"], out.metadata["ess"]               # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from physsample import distributed
from physsample.diffusion import (
    GaussianSpace,
    GenerativeProcess,
    LogZEstimate,
    cosine_grid,
    log_weights_from_states,
    log_z_estimate,
    random_steps,
    simulate,
    uniform_grid,
)
from physsample.diffusion.losses import DEFAULT_MAX_DEVIATION
from physsample.errors import ConfigError, UserError
from physsample.methods.training import Trainer
from physsample.nets import FourierMLP
from physsample.runtime import resolve_device
from physsample.samples import Samples

__all__ = ["DiffusionSampler", "ResidualControl", "SamplerFileError"]

SAVE_FORMAT = 1
# Options that may differ between the run that saved a sampler and the one that loads it.
RUNTIME_OPTIONS = ("device", "progress", "checkpoint_dir", "checkpoint_every", "log_csv")


class SamplerFileError(UserError, RuntimeError):
    """A saved sampler cannot be read, or belongs to another method or system."""


class ResidualControl(nn.Module):
    """The control ``u(t, x) = reference.base_control(t, x) + net(t, x)``.

    It holds everything the trainer saves: the network, the reference (frozen unless
    the method trains it) and the number of target energy evaluations made in training.

    Parameters
    ----------
    reference
        Any object with the reference interface of :mod:`physsample.diffusion.references`.
    net
        ``net(t, x)``: t (B,), x (B, dim) -> (B, dim).
    amp
        Run the network under ``torch.autocast`` in bfloat16 (mixed precision); its
        output is cast back to the dtype of ``x``, so that the reference's control and
        everything the path weights are made of stay in float32.
    """

    def __init__(self, reference, net: nn.Module, amp: bool = False) -> None:
        super().__init__()
        self.reference = reference
        self.net = net
        self.amp = bool(amp)
        self.register_buffer("energy_evaluations", torch.zeros((), dtype=torch.int64))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.amp:
            return self.reference.base_control(t, x) + self.net(t, x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.net(t, x)
        return self.reference.base_control(t, x) + out.to(x.dtype)


def _dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be float32 or float64, got {value!r}")
    return dtype


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")


class DiffusionSampler:
    """A diffusion sampler of ``exp(-system.energy)``; subclasses give the reference.

    Parameters
    ----------
    system
        The target, a :class:`~physsample.systems.System` (particle systems are sampled
        on the centre-of-mass-free subspace).
    n_steps
        Number of time steps N of the discretised process.
    grid
        ``"uniform"`` or ``"cosine"`` (finer at both ends) time grid.
    integrator
        ``"exponential"`` (default) or ``"euler_maruyama"``.
    loss
        ``"lv"``: log-variance on trajectories simulated without a graph; ``"kl"``:
        reverse KL on reparameterised trajectories (memory grows with ``n_steps``).
    net
        The network phi_theta: None or ``"mlp"`` for a
        :class:`~physsample.nets.FourierMLP` (zero last layer), ``"e3nn"`` or ``"egnn"``
        for an :class:`~physsample.nets.E3NNControl` or :class:`~physsample.nets.EGNN`
        with default sizes (particle systems only), or any ``nn.Module``
        called as ``net(t, x)`` (t (B,), x (B, dim) -> (B, dim)); it should output zero
        at initialisation for the untrained sampler to be the reference.
    hidden, n_layers
        Width and depth of the default MLP.
    batch_size
        Trajectories per training step; under torchrun the global batch, each rank
        simulating ``batch_size / world_size`` of them (see :mod:`physsample.distributed`).
    lr, lr_schedule, warmup, grad_clip, ema_decay
        Optimiser settings of the :class:`~physsample.methods.training.Trainer`.
    exploration
        LV only: the training rollouts' noise is scaled by this factor (off-policy
        exploration; 1 is on-policy).
    chunk
        LV only: time steps per chunk of the memory-light gradient; None builds one
        graph over all steps.
    n_grad_steps
        LV only: differentiate only this many random time steps per update (unbiased,
        needs ``chunk``); None uses all.
    reuse
        LV only: number of updates made on each batch of trajectories.
    max_deviation
        Trajectories whose log-weight is non-finite or further from the batch median
        than max(max_deviation, 20 x the batch's robust spread 1.4826 MAD) nats are
        dropped from the loss, and counted (``n_dropped``); never more than half of the
        finite ones (:func:`~physsample.diffusion.usable_mask`).
    device, seed, dtype
        ``"auto"`` (CUDA when available), the seed of the training generator, and the
        dtype of states and network (float32 by default).
    amp
        Mixed precision: the network runs in bfloat16 under ``torch.autocast`` (worth it
        on recent GPUs); states, path log-weights and losses stay in float32 (needs
        ``dtype="float32"``).
    checkpoint_dir, checkpoint_every, log_csv, progress
        Checkpoints (training resumes from the latest one by itself), CSV log and
        progress bar of the trainer.
    """

    method_name: ClassVar[str] = "diffusion"
    #: whether the reference's parameters are trained with the network (e.g. GMP)
    train_reference: ClassVar[bool] = False

    def __init__(
        self,
        system,
        *,
        n_steps: int = 100,
        grid: str = "uniform",
        integrator: str = "exponential",
        loss: str = "lv",
        net: nn.Module | str | None = None,
        hidden: int = 64,
        n_layers: int = 3,
        batch_size: int = 256,
        lr: float = 1e-3,
        lr_schedule: str = "cosine",
        warmup: int = 0,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        exploration: float = 1.0,
        chunk: int | None = 25,
        n_grad_steps: int | None = None,
        reuse: int = 1,
        max_deviation: float | None = DEFAULT_MAX_DEVIATION,
        device: str | torch.device = "auto",
        seed: int = 0,
        dtype: torch.dtype | str = "float32",
        amp: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        log_csv: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        if not hasattr(self, "method_settings"):
            self.method_settings = {}
        # every keyword argument above, as given (the network by its class name)
        settings = {key: value for key, value in locals().items() if key not in _NOT_SETTINGS}
        settings["net"] = net if net is None or isinstance(net, str) else type(net).__name__
        self._configure(system, settings)
        self._assemble(self.build_reference(), self._make_net(net))

    # ------------------------------------------------------------------ building
    def build_reference(self):
        """The reference process (prior, noising transitions, closed-form score).

        Called once by the constructor, after ``self.system``, ``self.space``,
        ``self.device``, ``self.dtype`` and ``self.method_settings`` are set.
        """
        raise NotImplementedError

    def _configure(self, system, settings: dict[str, Any]) -> None:
        """Check and store the settings; place the system on the device."""
        s = {**settings, "dtype": str(_dtype(settings["dtype"])).removeprefix("torch.")}
        s["device"] = str(s["device"])  # settings stay JSON-serialisable
        for key in ("checkpoint_dir", "log_csv"):
            s[key] = None if s[key] is None else str(s[key])
        _check_settings(s)
        self.settings = s
        self.device = distributed.rank_device(resolve_device(s["device"]))
        self.dtype = _dtype(s["dtype"])
        self.system = system.to(self.device)
        self.space = GaussianSpace.for_system(system)
        self.n_steps, self.batch_size = int(s["n_steps"]), int(s["batch_size"])
        self._states = self._final_log_prob = None
        self._batch_stats = {"ess": math.nan, "log_z": math.nan, "elbo": math.nan}

    def _make_net(self, net: nn.Module | str | None) -> nn.Module:
        if net is None or net == "mlp":
            hidden, layers = int(self.settings["hidden"]), int(self.settings["n_layers"])
            with torch.random.fork_rng(devices=[]):  # initialised from ``seed`` alone
                torch.manual_seed(int(self.settings["seed"]))
                return FourierMLP(self.system.dim, hidden=hidden, n_layers=layers)
        if net in ("e3nn", "egnn"):
            return self._particle_net(str(net))
        if isinstance(net, nn.Module):
            return net
        raise ConfigError(
            f"net must be None, 'mlp', 'e3nn', 'egnn' or an nn.Module, got {net!r}"
        )

    def _particle_net(self, kind: str) -> nn.Module:
        """An equivariant network with default sizes (configs/net/ has tuned ones)."""
        from physsample.nets import EGNN, E3NNControl
        from physsample.systems.base import ParticleSystem

        if not isinstance(self.system, ParticleSystem):
            raise ConfigError(
                f"net='{kind}' needs a particle system; '{self.system.name}' is not one "
                "(use net='mlp')"
            )
        shape = dict(n_particles=self.system.n_particles, spatial_dim=self.system.spatial_dim)
        with torch.random.fork_rng(devices=[]):  # initialised from ``seed`` alone
            torch.manual_seed(int(self.settings["seed"]))
            if kind == "egnn":
                return EGNN(**shape, hidden=int(self.settings["hidden"]))
            return E3NNControl(**shape, n_layers=int(self.settings["n_layers"]))

    def _assemble(self, reference, net: nn.Module) -> None:
        """Control, process and trainer from a reference and a network."""
        if reference.space.dim != self.system.dim:
            raise ConfigError(
                f"the reference lives in dimension {reference.space.dim}, the system in "
                f"{self.system.dim}"
            )
        if isinstance(reference, nn.Module) and not self.train_reference:
            reference.requires_grad_(False)
        amp = bool(self.settings.get("amp", False))  # files saved before it lack the key
        self.model = ResidualControl(reference, net.to(self.dtype), amp=amp)
        s = self.settings
        self.process = self._build_process(reference)
        trainer_keys = ("lr", "lr_schedule", "warmup", "grad_clip", "ema_decay", "seed")
        trainer_keys += ("checkpoint_dir", "checkpoint_every", "log_csv", "progress")
        options = {key: s[key] for key in trainer_keys}
        self.trainer = Trainer(self.model, self._loss, device=self.device, **options)

    def _build_process(self, reference):
        """The discretised process of ``reference`` (a hook: GMP builds its own)."""
        make_grid = {"uniform": uniform_grid, "cosine": cosine_grid}[self.settings["grid"]]
        grid = make_grid(self.n_steps, reference.schedule.horizon)
        return GenerativeProcess(reference, grid, self.settings["integrator"])

    @property
    def reference(self):
        """The reference process."""
        return self.model.reference

    @property
    def net(self) -> nn.Module:
        """The trained network phi_theta (current, not EMA, weights)."""
        return self.model.net

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(system={self.system.name!r}, n_steps={self.n_steps}, "
            f"loss={self.settings['loss']!r}, trained_steps={self.trainer.step})"
        )

    # ------------------------------------------------------------------ training
    def fit(self, steps: int) -> DiffusionSampler:
        """Train until ``steps`` steps in total (resuming from ``checkpoint_dir``); returns self."""
        self.trainer.fit(int(steps))
        return self

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        """log pi~(x), counting energy evaluations and keeping the last values (detached)."""
        self.model.energy_evaluations += x.shape[0] * distributed.world_size()  # all ranks
        log_prob = self.system.log_prob(x)
        self._last_log_prob = log_prob.detach()
        return log_prob

    def _loss(self, model: ResidualControl, generator: torch.Generator, step: int):
        if self.settings["loss"] == "kl":
            return self._kl_loss(model, generator)
        return self._lv_loss(model, generator, step)

    def _rollout(self, model, generator, noise_scale=1.0, keep_states=True):
        """This rank's share of the training batch (all of it in one process)."""
        n = distributed.local_batch_size(self.batch_size)
        return self._simulate(model, self._target, n, generator, noise_scale, keep_states)

    def _simulate(self, model, target_log_prob, n, generator, noise_scale=1.0, keep_states=True):
        """Trajectories of the process under ``model`` (a hook: GMP simulates its own)."""
        return simulate(
            self.process,
            model,
            target_log_prob,
            n,
            generator=generator,
            noise_scale=noise_scale,
            keep_states=keep_states,
            dtype=self.dtype,
            device=self.device,
        )

    def _path_log_weights(self, model, states, final_log_prob, log_weights, steps):
        """log w of given states, differentiable in the parameters (a hook, as ``_simulate``)."""
        params = [p for p in model.parameters() if p.requires_grad]
        return log_weights_from_states(
            self.process,
            model,
            lambda x: final_log_prob,
            states,
            chunk=self.settings["chunk"],
            params=params,
            log_weights=log_weights,
            steps=steps,
        )

    def _lv_loss(self, model: ResidualControl, generator: torch.Generator, step: int):
        """Log-variance loss; trajectories are drawn afresh every ``reuse`` steps."""
        s = self.settings
        log_w_fresh = None
        if self._states is None or step % int(s["reuse"]) == 0:
            with torch.no_grad():
                out = self._rollout(model, generator, float(s["exploration"]))
            self._states, log_w_fresh = out.states, out.log_weights
            self._final_log_prob = self._last_log_prob  # the energy is not evaluated again
            if float(s["exploration"]) == 1.0:
                self._record_batch(log_w_fresh)
        steps = None
        if s["n_grad_steps"] is not None:
            steps = random_steps(self.n_steps, int(s["n_grad_steps"]), generator)
        log_w = self._path_log_weights(
            model, self._states, self._final_log_prob, log_w_fresh, steps
        )
        loss, info = distributed.global_log_variance_loss(log_w, max_deviation=s["max_deviation"])
        return loss, self._info(info)

    def _kl_loss(self, model: ResidualControl, generator: torch.Generator):
        out = self._rollout(model, generator, keep_states=False)
        self._record_batch(out.log_weights)
        loss, info = distributed.global_reverse_kl_loss(
            out.log_weights, max_deviation=self.settings["max_deviation"]
        )
        return loss, self._info(info)

    def _record_batch(self, log_w: torch.Tensor) -> None:
        """ESS, log Z and ELBO of the (global) training batch, for the progress bar."""
        est = log_z_estimate(distributed.gather(log_w.detach()))
        self._batch_stats = {"ess": est.ess, "log_z": est.log_z, "elbo": est.elbo}

    def _info(self, info: dict[str, torch.Tensor]) -> dict[str, Any]:
        dropped = info["n_nonfinite"] + info["n_extreme"]
        return {**info, "n_dropped": dropped, **self._batch_stats}

    # ------------------------------------------------------------------ sampling
    def _sampling_generator(self, generator: torch.Generator | int | None) -> torch.Generator:
        if isinstance(generator, torch.Generator):
            return generator
        if generator is None:  # from the global torch RNG
            generator = int(torch.randint(2**62, (1,)))
        return torch.Generator(device=self.device).manual_seed(int(generator))

    def sample(
        self,
        n: int,
        generator: torch.Generator | int | None = None,
        batch_size: int | None = None,
    ) -> Samples:
        """Draw ``n`` samples with exact path log-weights, using the EMA weights.

        Parameters
        ----------
        n
            Number of samples.
        generator
            A ``torch.Generator`` (its device is where the noise is drawn), a seed, or
            None for a seed drawn from the global torch RNG.
        batch_size
            Trajectories simulated at once (default: ``max(4 * batch_size, 1024)``).

        Returns
        -------
        Samples
            ``x`` (n, dim) and ``log_weights`` (n,): log w = log pi~(x_N) + sum log B -
            log rho_0 - sum log F, so that logsumexp(log w) - log n estimates log Z. The
            metadata holds the method, its settings, ``n_steps``, the wall time, the
            energy evaluations (of sampling and of training), ``log_z``, ``elbo``,
            ``ess`` (Kish, as a fraction of n) and ``log_z_exact`` where known.
        """
        if int(n) < 1:
            raise ConfigError(f"sample: n must be positive, got {n}")
        generator = self._sampling_generator(generator)
        batch = int(batch_size or max(4 * self.batch_size, 1024))
        start = time.perf_counter()
        xs, log_ws = [], []
        with torch.no_grad(), self.trainer.ema_weights() as model:
            for first in range(0, int(n), batch):
                m = min(batch, int(n) - first)
                out = self._simulate(model, self.system.log_prob, m, generator, keep_states=False)
                xs.append(out.samples)
                log_ws.append(out.log_weights)
        x, log_w = torch.cat(xs), torch.cat(log_ws)
        metadata = self._sample_metadata(log_w, time.perf_counter() - start)
        return Samples(x, log_w, system=self.system, metadata=metadata)

    def _sample_metadata(self, log_w: torch.Tensor, wall_time: float) -> dict[str, Any]:
        est = log_z_estimate(log_w)
        return {
            "method": self.method_name,
            "settings": {**self.settings, **self.method_settings},
            "n_steps": self.n_steps,
            "wall_time": wall_time,
            "energy_evaluations": int(log_w.shape[0]),
            "training_steps": self.trainer.step,
            "training_wall_time": self.trainer.elapsed,
            "training_energy_evaluations": int(self.model.energy_evaluations),
            "log_z": float(est.log_z),
            "elbo": float(est.elbo),
            "ess": float(est.ess),
            "log_z_exact": self.system.log_z,
        }

    def log_z(
        self,
        n: int,
        generator: torch.Generator | int | None = None,
        batch_size: int | None = None,
    ) -> LogZEstimate:
        """Estimates from ``n`` fresh samples: ``(log_z, elbo, ess)`` as floats.

        ``log_z`` = logsumexp(log w) - log n (consistent), ``elbo`` = mean(log w) (a
        lower bound in expectation), ``ess`` the Kish effective sample size over n.
        """
        meta = self.sample(n, generator, batch_size).metadata
        return LogZEstimate(meta["log_z"], meta["elbo"], meta["ess"])

    # ----------------------------------------------------------------- save, load
    def save(self, path: str | os.PathLike) -> Path:
        """Write the sampler (network, reference, settings, trainer state) atomically.

        The file is a ``torch.save`` pickle: load only files you trust. Under torchrun
        only rank 0 writes (the ranks hold the same sampler); the others return the path.
        """
        path = Path(path)
        if not distributed.is_main():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": SAVE_FORMAT,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "system": {"name": self.system.name, "dim": self.system.dim},
            "settings": self.settings,
            "method_settings": self.method_settings,
            "reference": self.model.reference,
            "net": self.model.net,
            "trainer": self.trainer.state_dict(),
        }
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, system=None, **overrides: Any) -> DiffusionSampler:
        """Read a sampler written by :meth:`save`.

        Parameters
        ----------
        path
            The file.
        system
            The target; None rebuilds it with ``physsample.systems.get(<saved name>)``
            (pass it for systems built with non-default options).
        overrides
            New values of the run-time options ``device``, ``progress``,
            ``checkpoint_dir``, ``checkpoint_every`` and ``log_csv``.

        ``DiffusionSampler.load`` returns an instance of the saved method's class;
        ``LRDS.load`` insists that the file holds an LRDS. Training can continue with
        :meth:`fit`; the global torch RNG is left untouched. The file is unpickled
        (``weights_only=False``): load only files you trust.
        """
        state = _read_state(Path(path))
        saved_cls = _resolve_class(state["class"])
        if not issubclass(saved_cls, cls):
            raise SamplerFileError(f"{path} holds a {saved_cls.__name__}, not a {cls.__name__}")
        unknown = set(overrides) - set(RUNTIME_OPTIONS)
        if unknown:
            raise ConfigError(f"load: only {', '.join(RUNTIME_OPTIONS)} can be overridden")
        system = _saved_system(state["system"], system)
        sampler = saved_cls.__new__(saved_cls)
        sampler.method_settings = state["method_settings"]
        sampler._configure(system, {**state["settings"], **overrides})
        sampler._assemble(state["reference"], state["net"])
        rng = torch.get_rng_state()
        sampler.trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(rng)
        return sampler


_NOT_SETTINGS = {"self", "system", "__class__"}


def _check_settings(s: dict[str, Any]) -> None:
    _check_positive(
        n_steps=s["n_steps"], batch_size=s["batch_size"], exploration=s["exploration"],
        chunk=s["chunk"], reuse=s["reuse"], n_grad_steps=s["n_grad_steps"],
        hidden=s["hidden"], n_layers=s["n_layers"],
    )  # fmt: skip
    choices = {"loss": ("lv", "kl"), "grid": ("uniform", "cosine")}
    for key, allowed in choices.items():
        if s[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {s[key]!r}")
    if s.get("amp") and s["dtype"] != "float32":
        raise ConfigError("amp (bfloat16 network) needs dtype='float32'")
    if int(s["batch_size"]) < 2:
        raise ConfigError("batch_size must be at least 2 (the losses need a variance)")
    if s["loss"] == "kl" and (s["exploration"] != 1.0 or s["reuse"] != 1):
        raise ConfigError("exploration and reuse need the log-variance loss (loss='lv')")
    if s["n_grad_steps"] is not None and s["chunk"] is None:
        raise ConfigError("n_grad_steps needs the chunked gradient: set chunk")
    if s["n_grad_steps"] is not None and int(s["n_grad_steps"]) > int(s["n_steps"]):
        raise ConfigError(f"n_grad_steps must be at most n_steps={s['n_steps']}")
    if int(s["checkpoint_every"]) % int(s["reuse"]):
        raise ConfigError(
            "checkpoint_every must be a multiple of reuse, so that a resumed run starts "
            "on a fresh batch of trajectories and continues exactly"
        )


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise SamplerFileError(f"no saved sampler at {path}") from None
    except Exception as err:  # torch raises many types for damaged files
        raise SamplerFileError(f"{path} is truncated or corrupt ({type(err).__name__})") from err
    if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
        raise SamplerFileError(f"{path} is not a sampler written by DiffusionSampler.save")
    return state


def _resolve_class(name: str) -> type:
    module, qualname = name.split(":")
    return getattr(importlib.import_module(module), qualname)


def _saved_system(saved: dict[str, Any], system):
    if system is None:
        from physsample.systems import get

        system = get(saved["name"])
    if system.dim != saved["dim"]:
        raise SamplerFileError(
            f"the sampler was trained on '{saved['name']}' of dimension {saved['dim']}, but "
            f"the system has dimension {system.dim}; pass the right system= to load"
        )
    return system
