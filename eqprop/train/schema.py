"""The experiment config schema: one frozen dataclass per concern.

Every default lives in its dataclass field and nowhere else: the ``model`` and ``dynamics``
sections *are* the core's network settings and the :class:`~eqprop.dynamics.Solver` (plus a few
fields of their own), ``model.conv[i]`` is the core's :class:`~eqprop.core.ConvLayer`, and every
choice (dataset, activation, schedule, estimator, optimiser, ...) is checked against the
registry the code dispatches on. Sections check themselves when built in Python too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from eqprop.core import NETWORKS, AsymmetricSettings, ConvLayer, GraphSettings
from eqprop.core.validation import invalid, show
from eqprop.dynamics import Solver
from eqprop.estimators import ESTIMATORS
from eqprop.train.convert import (
    INT_GE0,
    INT_GE1,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    ConfigError,
    Section,
    config_to_dict,
)
from eqprop.train.datasets import DATASETS, NORMALIZATIONS
from eqprop.train.optimizers import OPTIMIZERS, SCHEDULERS

__all__ = [
    "DTYPES",
    "ConvLayerConfig",
    "DataConfig",
    "DynamicsConfig",
    "EstimatorConfig",
    "ExperimentConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TrainConfig",
]

#: Floating-point types of weights and states by the name used in configs.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class DataConfig(Section):
    """Which dataset to load and how to prepare it.

    Attributes:
        dataset: dataset name; ``npz`` reads ``x_train, y_train, x_test, y_test`` from ``root``.
        root: data directory (the ``.npz`` file for ``npz``); None means ``$EQPROP_DATA`` or
            ``./data``.
        val_size: examples held out of the training set for model selection; None means
            the dataset's default (:data:`~eqprop.train.datasets.DATASETS`; npz: a tenth of
            the training set); 0 means no split.
        augment: random horizontal flip and random crop with 4 pixels of edge padding (the
            paper's CIFAR recipe); ``augment_pad`` and ``augment_flip`` change it.
        augment_pad: with ``augment``, the crop's edge padding in pixels (random shifts of up
            to this many pixels; 2 suits 28x28 digits).
        augment_flip: with ``augment``, include the random horizontal flip (off for digits,
            whose mirror images are not digits).
        normalize: ``standard`` (per-channel mean/std), ``paper`` (CIFAR: three times the usual
            std, spec §6), ``wide`` (1.5 times the usual std, holomorphic EP's recipe) or
            ``none``.
        download: fetch the dataset if it is not under ``root``.
        train_size: keep only the first ``train_size`` examples (in dataset order) of the
            training split, for quick experiments; None keeps all.
        randaugment: with ``augment``, RandAugment with this many ops per image between the
            flip and the crop (:mod:`eqprop.train.randaugment`); 0: none.
        randaugment_magnitude: its magnitude, 0..30 (torchvision's 31 bins).
    """

    dataset: str = field(default="digits", metadata={"choices": DATASETS})
    root: str | None = None
    val_size: int | None = field(default=None, metadata=INT_GE0)
    augment: bool = False
    augment_pad: int = field(default=4, metadata=INT_GE0)
    augment_flip: bool = True
    normalize: str = field(default="standard", metadata={"choices": NORMALIZATIONS})
    download: bool = False
    train_size: int | None = field(default=None, metadata=INT_GE1)
    randaugment: int = field(default=0, metadata=INT_GE0)
    randaugment_magnitude: int = field(default=9, metadata=INT_GE0)

    def _validate(self) -> None:
        if self.randaugment_magnitude > 30:
            raise invalid(self.randaugment_magnitude, "0..30", "randaugment_magnitude")
        if self.dataset == "npz" and not self.root:
            raise invalid(self.root, "the path of the .npz file when dataset is 'npz'", "root")

    def resolved_val_size(self, n_train: int) -> int:
        """Return the validation-split size for a training set of ``n_train`` examples."""
        if self.val_size is not None:
            return self.val_size
        return DATASETS[self.dataset].resolved_val_size(n_train)


#: The ``model.conv[i]`` section is the core's own conv layer spec.
ConvLayerConfig = ConvLayer


@dataclass(frozen=True)
class ModelConfig(Section, AsymmetricSettings):
    """Architecture of the network: the core's settings (conv stack, dense hidden layers,
    output, activation, init scale, and the asymmetric networks' update rule and feedback
    init; see :class:`~eqprop.core.asymmetric.AsymmetricSettings`) plus the network kind.

    Attributes:
        kind: a key of :data:`~eqprop.core.NETWORKS`; ``update_rule`` and ``feedback_init``
            apply to ``asymmetric`` only.
        graph: ``graph`` only: the states and edges (:class:`~eqprop.core.GraphSettings`);
            conv, dense, output and activation are then unused.
    """

    kind: str = field(default="symmetric", metadata={"choices": NETWORKS})
    graph: GraphSettings | None = None

    @property
    def n_layers(self) -> int:
        """Number of weight layers (a graph's edges, node biases and readout)."""
        return super().n_layers if self.graph is None else self.graph.n_layers

    def _validate(self) -> None:
        if (self.kind == "graph") != (self.graph is not None):
            raise ConfigError("expected model.graph exactly when model.kind is graph", "graph")
        if self.kind == "asymmetric":
            return
        # A non-default value would be silently ignored by the other kinds.
        where = "model.graph.{}" if self.kind == "graph" else "model.kind: asymmetric"
        for name, default in (("update_rule", "different"), ("feedback_init", "random")):
            if getattr(self, name) != default:
                raise ConfigError(
                    f"{getattr(self, name)!r} applies to model.kind asymmetric only, not "
                    f"{self.kind!r}; use {where.format(name)}",
                    name,
                )


@dataclass(frozen=True)
class DynamicsConfig(Section, Solver):
    """Relaxation of the network state (spec §2): the :class:`~eqprop.dynamics.Solver`'s
    settings (schedule, tol, check_every, init, compile, precision) plus the step budgets.

    Attributes:
        free_steps: T1, steps of the free phase from s = 0.
        nudged_steps: T2, steps of each nudged phase from the free equilibrium.
        eval_steps: free steps at evaluation; None means ``free_steps``.
        batch_phases: relax the +β and −β phases together as one batch (faster; set false to
            reproduce the paper's sequential phases exactly).
    """

    free_steps: int = field(default=20, metadata=INT_GE1)
    nudged_steps: int = field(default=4, metadata=INT_GE1)
    eval_steps: int | None = field(default=None, metadata=INT_GE1)
    batch_phases: bool = True

    @property
    def resolved_eval_steps(self) -> int:
        """Free steps used at evaluation."""
        return self.free_steps if self.eval_steps is None else self.eval_steps


@dataclass(frozen=True)
class EstimatorConfig(Section):
    """Gradient estimator (spec §2 and §5).

    Attributes:
        kind: ``one_sided`` (+β), ``random_sign`` (±β drawn per minibatch), ``symmetric``
            (+β and −β), or ``bptt``: backpropagation through time, the paper's baseline
            (``dynamics.free_steps`` − ``dynamics.nudged_steps`` steps without a graph, then
            ``nudged_steps`` steps with one; memory grows with the steps kept).
        beta: nudging strength |β| (unused by ``bptt``); for ``holomorphic`` and
            ``generalized`` the radius of the circle of complex β.
        full_bptt: ``bptt`` only: back-propagate through all ``free_steps`` steps.
        points: ``holomorphic``: N >= 1 points on the circle (1 one-sided, 2 symmetric EP
            exactly; more need holomorphic pieces: dsilu/mysig/sigmoid/tanh, softmax or average
            pools); ``generalized``: N points for the neuronal error vector, or 0 for the
            forward-mode "exact δ".
        online: ``holomorphic``: β keeps turning round the circle, ``nudged_steps`` steps per
            point, the state carried from point to point.
        online_periods: periods of the online variant, the first (the transient) discarded.
        guard: ``holomorphic``/``generalized`` with N > 2: leave out examples whose relaxation
            did not converge, or fall back to N = 2 for them (counts in the run log).
        jacobian_reg: ``generalized``: weight λ_h of the Jacobian-homeostasis regulariser.
        jacobian_probes: ``generalized``: random probes per example of that regulariser.
        warm_start: EP: start each training free phase from the previous batch's +β state
            (from zero when the batch size changes; evaluation always starts from zero).
    """

    kind: str = field(default="symmetric", metadata={"choices": ESTIMATORS})
    beta: float = field(default=0.5, metadata=POSITIVE)
    full_bptt: bool = False
    points: int = field(default=2, metadata=INT_GE0)
    online: bool = False
    online_periods: int = field(default=3, metadata=INT_GE1)
    guard: bool = True
    jacobian_reg: float = field(default=0.0, metadata=NON_NEGATIVE)
    jacobian_probes: int = field(default=5, metadata=INT_GE1)
    warm_start: bool = False


@dataclass(frozen=True)
class SchedulerConfig(Section):
    """Learning-rate schedule, stepped once per epoch.

    Attributes:
        kind: ``none`` or ``cosine`` annealing.
        t_max: epochs of the cosine half-period; None means ``train.epochs``.
        eta_min: floor of the cosine schedule (the same for every layer).
    """

    kind: str = field(default="none", metadata={"choices": SCHEDULERS})
    t_max: int | None = field(default=None, metadata=INT_GE1)
    eta_min: float = field(default=0.0, metadata=NON_NEGATIVE)

    def resolved_t_max(self, epochs: int) -> int:
        """Return the cosine half-period for a run of ``epochs`` epochs."""
        return epochs if self.t_max is None else self.t_max


@dataclass(frozen=True)
class OptimConfig(Section):
    """Optimiser of the weights.

    Attributes:
        kind: ``sgd``, ``adam`` or ``adamw``.
        lr: learning rate; a tuple gives one per weight layer (``model.n_layers`` entries).
        weight_decay: weight decay, a number or one per weight layer.
        momentum: SGD momentum (ignored by adam/adamw).
        nesterov: Nesterov momentum for SGD (needs ``momentum`` > 0).
        betas: Adam/AdamW moment decay rates.
        scheduler: learning-rate schedule.
        clip_grad_norm: EP: scale the gradients to a global L2 norm of at most this before
            the step (weight decay is added after, inside the optimiser); None: no clipping.
    """

    kind: str = field(default="sgd", metadata={"choices": OPTIMIZERS})
    lr: float | tuple[float, ...] = field(default=0.05, metadata=POSITIVE)
    weight_decay: float | tuple[float, ...] = field(default=0.0, metadata=NON_NEGATIVE)
    momentum: float = field(default=0.0, metadata=UNIT_INTERVAL)
    nesterov: bool = False
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=UNIT_INTERVAL)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    clip_grad_norm: float | None = field(default=None, metadata=POSITIVE)

    def _validate(self) -> None:
        for name in ("lr", "weight_decay"):
            if getattr(self, name) == ():
                raise invalid((), "a number or a non-empty list of numbers", name)
        # torch.optim.SGD rejects this combination only when the optimiser is built.
        if self.kind == "sgd" and self.nesterov and self.momentum == 0:
            raise invalid(
                True, "false when momentum is 0 (Nesterov needs momentum > 0)", "nesterov"
            )

    def layer_lrs(self, n: int) -> tuple[float, ...]:
        """Return one learning rate per weight layer for a network of ``n`` weight layers."""
        return _per_layer(self.lr, n, "optim.lr")

    def layer_weight_decays(self, n: int) -> tuple[float, ...]:
        """Return one weight decay per weight layer for a network of ``n`` weight layers."""
        return _per_layer(self.weight_decay, n, "optim.weight_decay")


def _per_layer(value: float | tuple[float, ...], n: int, path: str) -> tuple[float, ...]:
    if not isinstance(value, tuple):
        return (value,) * n
    if len(value) != n:
        raise invalid(value, f"a number or {n} numbers, one per weight layer", path)
    return value


@dataclass(frozen=True)
class TrainConfig(Section):
    """Training loop.

    Attributes:
        epochs: passes over the training set.
        batch_size: training minibatch size.
        eval_batch_size: evaluation minibatch size; None means ``max(batch_size, 256)``.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: floating-point type of weights and states.
        num_threads: torch CPU threads; None leaves torch's default.
        save_every: epochs between 'last' checkpoints.
    """

    epochs: int = field(default=10, metadata=INT_GE1)
    batch_size: int = field(default=64, metadata=INT_GE1)
    eval_batch_size: int | None = field(default=None, metadata=INT_GE1)
    device: str = "auto"
    dtype: str = field(default="float32", metadata={"choices": DTYPES})
    num_threads: int | None = field(default=None, metadata=INT_GE1)
    save_every: int = field(default=1, metadata=INT_GE1)

    def _validate(self) -> None:
        if not _DEVICE_RE.fullmatch(self.device):
            raise invalid(self.device, "auto, cpu, cuda or cuda:N", "device")

    @property
    def resolved_eval_batch_size(self) -> int:
        """Evaluation minibatch size."""
        if self.eval_batch_size is None:
            return max(self.batch_size, 256)
        return self.eval_batch_size


@dataclass(frozen=True)
class LogConfig(Section):
    """Run outputs besides checkpoints.

    Attributes:
        progress: show progress bars.
        tensorboard: write TensorBoard scalars.
        plots: save training-curve plots.
        check_every: every this many epochs, run a small EP-versus-BPTT check (spec §5) on
            ``check_batch`` validation examples and log its summary numbers; also once on the
            initial weights, into ``check_at_start.json``; 0 turns it off.
        check_batch: examples in that check.
        check_reference: what the run's update is compared with in that check: ``truncated``,
            BPTT through the last ``nudged_steps`` free steps (the paper's equivalence), or
            ``full``, BPTT through every free step (the exact gradient of the network the run
            trains; the one that reaches every layer when a single nudged sweep does not).
    """

    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    check_every: int = field(default=0, metadata=INT_GE0)
    check_batch: int = field(default=8, metadata=INT_GE1)
    check_reference: str = field(default="truncated", metadata={"choices": ("truncated", "full")})


@dataclass(frozen=True)
class ExperimentConfig(Section):
    """A whole experiment; checks the rules that span sections.

    Attributes:
        name: run name (used for the run directory).
        description: what the experiment is for.
        seed: seed of every random generator of the run.
    """

    name: str = "experiment"
    description: str = ""
    seed: int = field(default=0, metadata=INT_GE0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def _validate(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name:
            raise invalid(self.name, "a non-empty string without path separators", "name")
        n = self.model.n_layers
        self.optim.layer_lrs(n)
        self.optim.layer_weight_decays(n)
        side = first = DATASETS[self.data.dataset].image_side
        if side is None:
            return
        for i, layer in enumerate(self.model.conv):
            side = layer.output_side(side)
            if side < 1:
                raise ConfigError(
                    f"{show(config_to_dict(layer))} is not valid; it shrinks the feature map to "
                    f"nothing on {self.data.dataset} ({first}x{first} input)",
                    f"model.conv[{i}]",
                )
