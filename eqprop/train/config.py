"""Typed, validated experiment configs, their YAML form and the bundled presets.

An experiment is an :class:`ExperimentConfig`: one frozen dataclass per concern (data, model,
dynamics, estimator, optimiser, training loop, logging). Every default lives in its dataclass
field and nowhere else. Each dataclass checks its fields in ``__post_init__`` (type, then range or
choice), so a config built in Python is as safe as one loaded from YAML; errors are
:class:`ConfigError` with a one-line message naming the dotted field path, the bad value and what
is accepted. The presets in ``eqprop/presets/*.yaml`` include the paper's CIFAR-10 recipes
(spec §6).

Example:
    >>> cfg = load_config("digits-quickstart", ["optim.lr=1e-3", "model.dense=[32]"])
    >>> cfg.optim.lr, cfg.model.dense, cfg.model.n_layers
    (0.001, (32,), 2)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import os
import re
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from eqprop.core.activations import ACTIVATIONS

__all__ = [
    "ConfigError",
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
    "config_from_dict",
    "config_to_dict",
    "list_presets",
    "load_config",
    "preset_path",
    "save_config",
]

# Choice sets. Validation reads them with typing.get_args, so adding a value here is all it
# takes to accept it in configs.
DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz"]
Normalization = Literal["none", "standard", "paper"]
PoolKind = Literal["m", "a", "i"]
ModelKind = Literal["symmetric", "asymmetric"]
UpdateRule = Literal["different", "same"]
FeedbackInit = Literal["random", "forward"]
OutputKind = Literal["mse", "ce"]
ScheduleName = Literal["synchronous", "even_odd", "forward_backward"]
InitName = Literal["zeros", "feedforward"]
PrecisionName = Literal["float32", "tf32", "bf16"]
EstimatorKind = Literal["one_sided", "symmetric", "random_sign", "bptt"]
SchedulerKind = Literal["none", "cosine"]
OptimizerKind = Literal["sgd", "adam", "adamw"]
DtypeName = Literal["float32", "float64"]

#: Validation-split size when ``data.val_size`` is None (npz: a tenth of the training set).
DEFAULT_VAL_SIZES: Mapping[str, int] = {
    "digits": 150,
    "mnist": 5000,
    "fashion_mnist": 5000,
    "cifar10": 5000,
    "cifar100": 5000,
}

# Input side length (square images) of the built-in datasets, to catch conv stacks that shrink
# the feature map to nothing before any training starts.
_IMAGE_SIDE: Mapping[str, int] = {
    "digits": 8,
    "mnist": 28,
    "fashion_mnist": 28,
    "cifar10": 32,
    "cifar100": 32,
}

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """An invalid config, override, config file or preset name.

    ``str(err)`` is one line: ``"<dotted.path>: <problem>"``.

    Attributes:
        path: dotted path of the offending field ("" when the problem is not about one field).
        problem: what is wrong and what is accepted.
    """

    def __init__(self, problem: str, path: str = "") -> None:
        # YAML parser messages span lines; a config error must stay one line for logs and CLIs.
        self.problem = re.sub(r"\s*\n\s*", " ", problem).strip()
        self.path = path
        super().__init__(f"{path}: {self.problem}" if path else self.problem)

    def within(self, prefix: str) -> ConfigError:
        """Return the same error with its path placed under ``prefix``."""
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        return type(self)(self.problem, path)


def _fmt(value: Any) -> str:
    """Show a value as the user wrote it (tuples as lists), truncated to stay readable."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _invalid(value: Any, expected: str, path: str = "") -> ConfigError:
    return ConfigError(f"{_fmt(value)} is not valid; expected {expected}", path)


def _suggest(word: object, choices: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _not_one_of(value: Any, choices: Sequence[str], path: str = "") -> ConfigError:
    return ConfigError(
        f"{_fmt(value)} is not one of {', '.join(choices)}{_suggest(value, choices)}", path
    )


def _unknown_key(key: object, valid: Sequence[str], path: str = "") -> ConfigError:
    return ConfigError(
        f"unknown key{_suggest(key, valid)}; valid keys: {', '.join(valid)}",
        f"{path}.{key}" if path else str(key),
    )


# --------------------------------------------------------------------------------------------
# Per-field range checks, attached to dataclass fields as metadata and applied to each element
# of a tuple value.


@dataclass(frozen=True)
class _Check:
    expected: str
    ok: Callable[[Any], bool]


def _range(expected: str, ok: Callable[[Any], bool]) -> dict[str, _Check]:
    return {"check": _Check(expected, ok)}


_INT_GE0 = _range("an integer >= 0", lambda v: v >= 0)
_INT_GE1 = _range("an integer >= 1", lambda v: v >= 1)
_POSITIVE = _range("a number > 0", lambda v: v > 0)
_NON_NEGATIVE = _range("a number >= 0", lambda v: v >= 0)
_UNIT_INTERVAL = _range("a number in [0, 1)", lambda v: 0 <= v < 1)


# --------------------------------------------------------------------------------------------
# Type-directed coercion shared by every section: strict about types (bool is not an int, a
# string is not a number), lenient only where YAML cannot express the Python type (a list
# becomes a tuple, a mapping becomes a section, an int is a valid float).

_NoneType = type(None)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _describe(tp: Any, plural: bool = False) -> str:
    if tp is int:
        return "integers" if plural else "an integer"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str:
        return "strings" if plural else "a string"
    if tp is bool:
        return "booleans" if plural else "true or false"
    if tp is _NoneType:
        return "null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if dataclasses.is_dataclass(tp):
        return "mappings" if plural else "a mapping"
    if (args := _union_args(tp)) is not None:
        return " or ".join(_describe(a, plural) for a in args)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + _describe(args[0], plural=True)
        if len(set(args)) == 1:
            return f"a list of {len(args)} " + _describe(args[0], plural=True)
        return "a list of " + ", ".join(_describe(a) for a in args)
    return getattr(tp, "__name__", str(tp))


class _TypeMismatch(ConfigError):
    """A value of the wrong type (as opposed to a value of the right type out of range)."""


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` checked against the annotation ``tp`` and normalised.

    Raises:
        ConfigError: with a path relative to the value ("" or "[i]" or "key...").
    """
    if (args := _union_args(tp)) is not None:
        if value is None and _NoneType in args:
            return None
        options = [a for a in args if a is not _NoneType]
        # Dispatch on the value's shape so the error comes from the branch the user meant.
        seq_options = [a for a in options if typing.get_origin(a) is tuple]
        chosen = seq_options if _is_seq(value) else [a for a in options if a not in seq_options]
        if len(chosen) == 1:
            try:
                return _coerce(value, chosen[0])
            except _TypeMismatch as err:
                if err.path:  # a bad entry inside a list: report that entry
                    raise
        raise _TypeMismatch(f"{_fmt(value)} is not valid; expected {_describe(tp)}")
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        raise _not_one_of(value, choices)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _invalid(value, "a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(tp, value)
    elif typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        variadic = len(args) == 2 and args[1] is Ellipsis
        if _is_seq(value) and (variadic or len(value) == len(args)):
            items = []
            for i, item in enumerate(value):
                try:
                    items.append(_coerce(item, args[0] if variadic else args[i]))
                except ConfigError as err:
                    raise err.within(f"[{i}]") from None
            return tuple(items)
    else:  # pragma: no cover - only reachable by adding a field of an unsupported type
        raise TypeError(f"unsupported config annotation {tp!r}")
    raise _TypeMismatch(f"{_fmt(value)} is not valid; expected {_describe(tp)}")


def _from_mapping(cls: type, raw: Mapping[Any, Any]) -> Any:
    """Build section ``cls`` from a mapping, rejecting unknown and missing keys by name."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise _unknown_key(key, names)
    for f in dataclasses.fields(cls):
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and f.name not in raw:
            raise ConfigError("required key is missing", f.name)
    return cls(**raw)


def _apply_check(value: Any, raw: Any, check: _Check) -> None:
    """Range-check a coerced value (each entry of a tuple), reporting the value as written."""
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            if not check.ok(item):
                raise _invalid(raw[i], check.expected, f"[{i}]")
    elif value is not None and not check.ok(value):
        raise _invalid(raw, check.expected)


class _Section:
    """Mixin for the config dataclasses: type-check, normalise and range-check every field."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            raw = getattr(self, f.name)
            try:
                value = _coerce(raw, hints[f.name])
                if "check" in f.metadata:
                    _apply_check(value, raw, f.metadata["check"])
            except ConfigError as err:
                raise err.within(f.name) from None
            # Frozen dataclass: normalising (list → tuple, int → float) needs the raw setter.
            object.__setattr__(self, f.name, value)
        self._validate()

    def _validate(self) -> None:
        """Cross-field rules; raise ConfigError with a path relative to this section."""


# --------------------------------------------------------------------------------------------
# The config sections.


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which dataset to load and how to prepare it.

    Attributes:
        dataset: dataset name; ``npz`` reads ``x_train, y_train, x_test, y_test`` from ``root``.
        root: data directory (the ``.npz`` file for ``npz``); None means ``$EQPROP_DATA`` or
            ``./data``.
        val_size: examples held out of the training set for model selection; None means
            :data:`DEFAULT_VAL_SIZES` (npz: a tenth of the training set); 0 means no split.
        augment: random horizontal flip and random crop with 4 pixels of edge padding (the
            paper's CIFAR recipe).
        normalize: ``standard`` (per-channel mean/std), ``paper`` (CIFAR: three times the usual
            std, spec §6) or ``none``.
        download: fetch the dataset if it is not under ``root``.
        train_size: keep only the first ``train_size`` examples (in dataset order) of the
            training split, for quick experiments; None keeps all.
    """

    dataset: DatasetName = "digits"
    root: str | None = None
    val_size: int | None = field(default=None, metadata=_INT_GE0)
    augment: bool = False
    normalize: Normalization = "standard"
    download: bool = False
    train_size: int | None = field(default=None, metadata=_INT_GE1)

    def _validate(self) -> None:
        if self.dataset == "npz" and not self.root:
            raise _invalid(self.root, "the path of the .npz file when dataset is 'npz'", "root")

    def resolved_root(self) -> Path:
        """Return ``root``, or ``$EQPROP_DATA``, or ``./data``, in that order."""
        if self.root:
            return Path(self.root)
        return Path(os.environ.get("EQPROP_DATA") or "data")

    def resolved_val_size(self, n_train: int) -> int:
        """Return the validation-split size for a training set of ``n_train`` examples."""
        if self.val_size is not None:
            return self.val_size
        return DEFAULT_VAL_SIZES.get(self.dataset, n_train // 10)


@dataclass(frozen=True)
class ConvLayerConfig(_Section):
    """One conv layer of the dynamical network, its neurons living in the pooled space (spec §1).

    Attributes:
        channels: output channels.
        kernel: square kernel size.
        stride: convolution stride.
        padding: zero padding on each side.
        pool: ``m`` 2×2 max pool, ``a`` 2×2 average pool, ``i`` no pooling.
    """

    channels: int = field(metadata=_INT_GE1)
    kernel: int = field(default=3, metadata=_INT_GE1)
    stride: int = field(default=1, metadata=_INT_GE1)
    padding: int = field(default=0, metadata=_INT_GE0)
    pool: PoolKind = "m"

    def output_side(self, side: int) -> int:
        """Return the side of this layer's (pooled) state for a square input of side ``side``."""
        out = (side + 2 * self.padding - self.kernel) // self.stride + 1
        return out if self.pool == "i" else out // 2


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Architecture of the network: conv stack, dense hidden layers, then the final linear map.

    Attributes:
        kind: network family.
        conv: conv layers, input side first.
        dense: hidden dense layer sizes after the conv stack.
        output: ``mse`` (dynamical output layer, squared error) or ``ce`` (readout outside the
            energy, cross-entropy; spec §3).
        activation: name of σ in :data:`eqprop.core.activations.ACTIVATIONS`.
        init_scale: weight-init gain; a tuple gives one per weight layer; None means the
            library default.
        update_rule: asymmetric nets only (spec §4): ``different`` (postsynaptic change ×
            free presynaptic activity) or ``same`` (W and B get the mean of their updates).
        feedback_init: asymmetric nets only: ``random`` (an independent draw, about 90° from
            W) or ``forward`` (B starts equal to W).
    """

    kind: ModelKind = "symmetric"
    conv: tuple[ConvLayerConfig, ...] = ()
    dense: tuple[int, ...] = field(default=(), metadata=_INT_GE1)
    output: OutputKind = "mse"
    activation: str = "my_hard_sig"
    init_scale: float | tuple[float, ...] | None = field(default=None, metadata=_POSITIVE)
    update_rule: UpdateRule = "different"
    feedback_init: FeedbackInit = "random"

    @property
    def n_layers(self) -> int:
        """Number of weight layers: conv, dense and the final map (output layer or readout)."""
        return len(self.conv) + len(self.dense) + 1

    def _validate(self) -> None:
        if not self.conv and not self.dense:
            raise ConfigError(
                "conv and dense are both empty; expected at least one hidden layer in either"
            )
        if self.activation not in ACTIVATIONS:
            raise _not_one_of(self.activation, list(ACTIVATIONS), "activation")
        if isinstance(self.init_scale, tuple) and len(self.init_scale) != self.n_layers:
            raise _invalid(
                self.init_scale,
                f"a number or {self.n_layers} numbers, one per weight layer",
                "init_scale",
            )


@dataclass(frozen=True)
class DynamicsConfig(_Section):
    """Relaxation of the network state (spec §2).

    Attributes:
        free_steps: T1, steps of the free phase from s = 0.
        nudged_steps: T2, steps of each nudged phase from the free equilibrium.
        eval_steps: free steps at evaluation; None means ``free_steps``.
        schedule: order of the layer updates within a step.
        batch_phases: relax the +β and −β phases together as one batch (faster; set false to
            reproduce the paper's sequential phases exactly).
        tol: stop each phase once the largest state change of a step falls below ``tol``
            (``free_steps`` / ``nudged_steps`` then act as caps); None runs fixed step counts.
        check_every: steps between tolerance checks (each check syncs with the device).
        init: free-phase starting point: ``zeros`` (the paper's) or ``feedforward``.
        compile: run the relaxation step through ``torch.compile``.
        precision: ``float32`` (the run's dtype), ``tf32`` (CUDA tensor cores) or ``bf16``
            (autocast convolutions; states and the EP contrast stay in float32).
    """

    free_steps: int = field(default=20, metadata=_INT_GE1)
    nudged_steps: int = field(default=4, metadata=_INT_GE1)
    eval_steps: int | None = field(default=None, metadata=_INT_GE1)
    schedule: ScheduleName = "synchronous"
    batch_phases: bool = True
    tol: float | None = field(default=None, metadata=_POSITIVE)
    check_every: int = field(default=1, metadata=_INT_GE1)
    init: InitName = "zeros"
    compile: bool = False
    precision: PrecisionName = "float32"

    @property
    def resolved_eval_steps(self) -> int:
        """Free steps used at evaluation."""
        return self.free_steps if self.eval_steps is None else self.eval_steps


@dataclass(frozen=True)
class EstimatorConfig(_Section):
    """Gradient estimator (spec §2 and §5).

    Attributes:
        kind: ``one_sided`` (+β), ``random_sign`` (±β drawn per minibatch), ``symmetric``
            (+β and −β), or ``bptt``: backpropagation through time, the paper's baseline
            (``dynamics.free_steps`` − ``dynamics.nudged_steps`` steps without a graph, then
            ``nudged_steps`` steps with one; memory grows with the steps kept).
        beta: nudging strength |β| (unused by ``bptt``).
        full_bptt: ``bptt`` only: back-propagate through all ``free_steps`` steps.
    """

    kind: EstimatorKind = "symmetric"
    beta: float = field(default=0.5, metadata=_POSITIVE)
    full_bptt: bool = False


@dataclass(frozen=True)
class SchedulerConfig(_Section):
    """Learning-rate schedule, stepped once per epoch.

    Attributes:
        kind: ``none`` or ``cosine`` annealing.
        t_max: epochs of the cosine half-period; None means ``train.epochs``.
        eta_min: floor of the cosine schedule (the same for every layer).
    """

    kind: SchedulerKind = "none"
    t_max: int | None = field(default=None, metadata=_INT_GE1)
    eta_min: float = field(default=0.0, metadata=_NON_NEGATIVE)

    def resolved_t_max(self, epochs: int) -> int:
        """Return the cosine half-period for a run of ``epochs`` epochs."""
        return epochs if self.t_max is None else self.t_max


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimiser of the weights.

    Attributes:
        kind: ``sgd``, ``adam`` or ``adamw``.
        lr: learning rate; a tuple gives one per weight layer (``model.n_layers`` entries).
        weight_decay: weight decay, a number or one per weight layer.
        momentum: SGD momentum (ignored by adam/adamw).
        nesterov: Nesterov momentum for SGD (needs ``momentum`` > 0).
        betas: Adam/AdamW moment decay rates.
        scheduler: learning-rate schedule.
    """

    kind: OptimizerKind = "sgd"
    lr: float | tuple[float, ...] = field(default=0.05, metadata=_POSITIVE)
    weight_decay: float | tuple[float, ...] = field(default=0.0, metadata=_NON_NEGATIVE)
    momentum: float = field(default=0.0, metadata=_UNIT_INTERVAL)
    nesterov: bool = False
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_UNIT_INTERVAL)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def _validate(self) -> None:
        for name in ("lr", "weight_decay"):
            if getattr(self, name) == ():
                raise _invalid((), "a number or a non-empty list of numbers", name)
        # torch.optim.SGD rejects this combination only when the optimiser is built.
        if self.kind == "sgd" and self.nesterov and self.momentum == 0:
            raise _invalid(
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
        raise _invalid(value, f"a number or {n} numbers, one per weight layer", path)
    return value


@dataclass(frozen=True)
class TrainConfig(_Section):
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

    epochs: int = field(default=10, metadata=_INT_GE1)
    batch_size: int = field(default=64, metadata=_INT_GE1)
    eval_batch_size: int | None = field(default=None, metadata=_INT_GE1)
    device: str = "auto"
    dtype: DtypeName = "float32"
    num_threads: int | None = field(default=None, metadata=_INT_GE1)
    save_every: int = field(default=1, metadata=_INT_GE1)

    def _validate(self) -> None:
        if not _DEVICE_RE.fullmatch(self.device):
            raise _invalid(self.device, "auto, cpu, cuda or cuda:N", "device")

    @property
    def resolved_eval_batch_size(self) -> int:
        """Evaluation minibatch size."""
        if self.eval_batch_size is None:
            return max(self.batch_size, 256)
        return self.eval_batch_size


@dataclass(frozen=True)
class LogConfig(_Section):
    """Run outputs besides checkpoints.

    Attributes:
        progress: show progress bars.
        tensorboard: write TensorBoard scalars.
        plots: save training-curve plots.
        check_every: every this many epochs, run a small EP-versus-BPTT check (spec §5) on
            ``check_batch`` validation examples and log its summary numbers; 0 turns it off.
        check_batch: examples in that check.
    """

    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    check_every: int = field(default=0, metadata=_INT_GE0)
    check_batch: int = field(default=8, metadata=_INT_GE1)


@dataclass(frozen=True)
class ExperimentConfig(_Section):
    """A whole experiment; checks the rules that span sections.

    Attributes:
        name: run name (used for the run directory).
        description: what the experiment is for.
        seed: seed of every random generator of the run.
    """

    name: str = "experiment"
    description: str = ""
    seed: int = field(default=0, metadata=_INT_GE0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def _validate(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name:
            raise _invalid(self.name, "a non-empty string without path separators", "name")
        n = self.model.n_layers
        self.optim.layer_lrs(n)
        self.optim.layer_weight_decays(n)
        side = _IMAGE_SIDE.get(self.data.dataset)
        if side is None:
            return
        for i, layer in enumerate(self.model.conv):
            side = layer.output_side(side)
            if side < 1:
                raise ConfigError(
                    f"{_fmt(config_to_dict(layer))} is not valid; it shrinks the feature map to "
                    f"nothing on {self.data.dataset} ({_IMAGE_SIDE[self.data.dataset]}x"
                    f"{_IMAGE_SIDE[self.data.dataset]} input)",
                    f"model.conv[{i}]",
                )


# --------------------------------------------------------------------------------------------
# Dict and YAML conversion.


def config_from_dict(d: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an experiment config from plain data (e.g. parsed YAML).

    Unknown keys are rejected at every level; missing keys and sections take their defaults.

    Raises:
        ConfigError: naming the first invalid field.
    """
    if not isinstance(d, Mapping):
        raise _invalid(d, "a mapping at the top level of the config")
    return _from_mapping(ExperimentConfig, d)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a config (or one of its sections) as plain, YAML-ready data.

    ``config_from_dict(config_to_dict(cfg)) == cfg`` for every experiment config.
    """
    return _to_plain(cfg)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a float and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML silently keeps the last of two equal keys, which hides a doubled section.
        keys = Counter(
            k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"
        )
        for key, count in keys.items():
            if count > 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads '1e-3' (no dot) as a string; learning rates are commonly written that way.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"invalid YAML{where}: {problem}"


def _read_yaml(path: Path) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file ({err.strerror or err})", str(path)) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(err), str(path)) from None
    if data is None:  # an empty file is an empty config
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"top level is a {type(data).__name__}; expected a mapping", str(path))
    return data


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Overrides ("a.b=value", "model.conv[0].channels=64").


def _parse_override(text: str) -> tuple[str, list[str | int], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    # "model.conv[0].channels" and "model.conv.0.channels" name the same field.
    segments: list[str | int] = [
        int(seg) if seg.strip().isdigit() else seg.strip()
        for seg in key.replace("[", ".").replace("]", "").split(".")
    ]
    if not sep or any(seg == "" for seg in segments):
        raise _invalid(text, "KEY=VALUE, e.g. optim.lr=0.1 or model.dense=[512,512]", "override")
    try:
        value = yaml.load(raw, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(f"{raw.strip()!r} is not valid: {_yaml_error(err)}", key) from None
    # "name=42" means the string '42' for a str field: the value is read with the field's type.
    if value is None or isinstance(value, (bool, int, float)):
        value = _RawScalar(raw.strip(), value)
    return key, segments, value


@dataclass(frozen=True)
class _RawScalar:
    """A YAML scalar override kept with its source text, for fields that accept strings."""

    text: str
    value: Any


def _is_section_tuple(tp: Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and bool(args) and dataclasses.is_dataclass(args[0])


def _set_override(root: dict[Any, Any], text: str) -> None:
    key, segments, value = _parse_override(text)
    node: Any = root  # the dict (section) or list (of sections) being walked
    tp: Any = ExperimentConfig  # its schema type
    path = ""
    for depth, seg in enumerate(segments):
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if seg not in names:
                raise _unknown_key(seg, names, path)
            child_tp = _hints(tp)[seg]
            child_path = f"{path}.{seg}" if path else str(seg)
        else:
            child_path = f"{path}[{seg}]"
            if not isinstance(seg, int) or seg >= len(node):
                raise ConfigError(
                    f"index {seg!r} is not valid; {path} has {len(node)} entries", child_path
                )
            child_tp = typing.get_args(tp)[0]
        if depth == len(segments) - 1:
            if isinstance(value, _RawScalar):
                accepted = _union_args(child_tp) or (child_tp,)
                keep = str not in accepted or (value.value is None and _NoneType in accepted)
                value = value.value if keep else value.text
            node[seg] = value
            return
        sectioned = dataclasses.is_dataclass(child_tp)
        if not sectioned and not _is_section_tuple(child_tp):
            raise ConfigError(f"unknown key; {child_path} is a value, not a section", key)
        child = node[seg] if isinstance(node, list) else node.get(seg)
        if child is None:
            child = {} if sectioned else []
        if sectioned and not isinstance(child, Mapping):
            raise _invalid(child, "a mapping", child_path)
        if not sectioned and not _is_seq(child):
            raise _invalid(child, _describe(child_tp), child_path)
        # Copy on the way down so the caller's data is never modified.
        node[seg] = child = dict(child) if sectioned else list(child)
        node, tp, path = child, child_tp, child_path


def _apply_overrides(raw: Mapping[Any, Any], overrides: Sequence[str]) -> dict[Any, Any]:
    root = dict(raw)
    for text in overrides:
        _set_override(root, text)
    return root


# --------------------------------------------------------------------------------------------
# Presets and loading.


def _preset_files() -> list[Path]:
    # Presets ship as package data in a regular directory (setuptools package-data).
    directory = Path(str(resources.files("eqprop.presets")))
    return sorted(directory.glob("*.yaml"), key=lambda p: p.stem)


def list_presets() -> list[tuple[str, str]]:
    """Return ``(name, description)`` of every bundled preset, sorted by name."""
    return [(p.stem, str(_read_yaml(p).get("description", "")).strip()) for p in _preset_files()]


def preset_path(name: str) -> Path:
    """Return the YAML file of the bundled preset ``name``.

    Raises:
        ConfigError: if there is no such preset (the message lists the available ones).
    """
    files = {p.stem: p for p in _preset_files()}
    if name not in files:
        raise ConfigError(
            f"{name!r} is not a preset{_suggest(name, list(files))}; available: {', '.join(files)}",
            "preset",
        )
    return files[name]


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a config from a YAML file or a preset name, then apply ``overrides``.

    Args:
        source: a YAML path, or the name of a bundled preset (see :func:`list_presets`).
        overrides: ``"dotted.key=value"`` strings; the value is YAML (``optim.lr=0.1``,
            ``model.dense=[512,512]``, ``data.root=null``), except that a string field keeps
            the text (``name=42`` is ``'42'``); list entries are indexed as
            ``model.conv[0].channels=64``. Applied in order before validation.

    Raises:
        ConfigError: for an unreadable or invalid file, an unknown preset, a malformed or
            unknown override, or an invalid resulting config.
    """
    return config_from_dict(_apply_overrides(_resolve_raw(source, ()), overrides))


def _source_path(source: str | Path) -> Path:
    path = Path(source)
    if not path.is_file():
        if isinstance(source, Path) or len(path.parts) > 1 or path.suffix in (".yaml", ".yml"):
            raise ConfigError("no such config file", str(path))
        path = preset_path(str(source))
    return path


def _merge(base: dict[Any, Any], child: Mapping[Any, Any]) -> dict[Any, Any]:
    """Deep-merge ``child`` into ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_raw(source: str | Path, seen: tuple[str, ...]) -> dict[Any, Any]:
    """Read a config, following ``extends: <preset or path>`` (relative to the file) chains."""
    path = _source_path(source)
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(
            f"{_fmt(parent)} is not valid; expected a preset name or a path", "extends"
        )
    if str(path.resolve()) in seen:
        raise ConfigError(f"{_fmt(parent)} makes a cycle of 'extends'", "extends")
    relative = path.parent / parent
    base = _resolve_raw(relative if relative.is_file() else parent, (*seen, str(path.resolve())))
    return _merge(base, raw)
