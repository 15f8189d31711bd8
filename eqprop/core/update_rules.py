"""Update rules of networks with feedback weights (spec §4), per interaction.

An interaction with feedback weights couples a presynaptic state s_p to a postsynaptic state
s_q through its forward weight W (and bias) and carries s_q back through its feedback weight B
of W's shape. A rule turns the compared phases (c_k, s_k) and the free state s* into the
updates of one such interaction (:meth:`UpdateRule.edge_grads`, given the indices p and q of
its two states), so chains (p = n − 1, q = n) and energy graphs (any edge between two free
states) share the same code. :class:`PhaseStates` holds the phases as the rules read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, Phase, WeightGrads, repeat_batch
from eqprop.core.interactions import Interaction
from eqprop.core.kernels import fast_layout

if TYPE_CHECKING:
    from eqprop.core.asymmetric import AsymmetricInteraction

__all__ = ["UPDATE_RULES", "DifferentRule", "PhaseStates", "SameRule", "UpdateRule"]


def _phase_weights(phases: Sequence[Phase], x: Tensor) -> Tensor:
    """c_k / B for every example of the phases stacked along the batch, shape (K·B,)."""
    coefs = torch.tensor([c for c, _ in phases], dtype=x.dtype, device=x.device)
    return coefs.repeat_interleave(x.shape[0]) / x.shape[0]


def _per_example(w: Tensor, like: Tensor) -> Tensor:
    return w.view(-1, *([1] * (like.dim() - 1)))


class PhaseStates:
    """The compared phases of one EP update, read state by state (no gradients kept).

    Args:
        x: the input batch (its size B, dtype and device).
        free: the free state s*.
        phases: the compared states and their coefficients (c_k, s_k).
    """

    def __init__(self, x: Tensor, free: Sequence[Tensor], phases: Sequence[Phase]) -> None:
        self.batch = x.shape[0]
        self.free = [t.detach() for t in free]
        self.phases = phases
        #: c_k / B per example of the stacked phases, shape (K·B,).
        self.weights = _phase_weights(phases, x)
        self._stacked: dict[int, Tensor] = {}

    @property
    def count(self) -> int:
        """The number K of compared phases."""
        return len(self.phases)

    def stacked(self, n: int) -> Tensor:
        """s_{k,n} of every phase, stacked along the batch: (K·B, ...), computed once."""
        if n not in self._stacked:
            self._stacked[n] = torch.cat([s[n].detach() for _, s in self.phases], 0)
        return self._stacked[n]

    def weighted(self, t: Tensor) -> Tensor:
        """A (K·B, ...) tensor of the stacked phases with c_k / B folded into each example."""
        return t * _per_example(self.weights, t)

    def combined(self, n: int) -> Tensor:
        """Σ_k c_k s_{k,n} / B, shape (B, ...)."""
        return cast(Tensor, sum(s[n].detach() * (c / self.batch) for c, s in self.phases))


class UpdateRule:
    """How the compared phases become the updates of the interactions with feedback weights."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def edge_grads(
        self, layer: AsymmetricInteraction, states: PhaseStates, pre: int, post: int
    ) -> WeightGrads:
        """The batch-mean update of one interaction's W, its bias (if any) and B; ``pre`` and
        ``post`` index its presynaptic and postsynaptic states."""
        raise NotImplementedError

    def input_grads(
        self, layer: Interaction, x: Tensor, states: PhaseStates, post: int, input_ctx: Any
    ) -> WeightGrads:
        """The update of a chain's first interaction (from the clamped input, no feedback)."""
        raise NotImplementedError

    def weight_contrast(
        self, net: ChainNetwork, x: Tensor, free: Sequence[Tensor], phases: Sequence[Phase],
        input_ctx: Any,
    ) -> WeightGrads:  # fmt: skip
        """The batch-mean update of every weight of a chain's dynamics (not the readout):
        interaction 0 from the input, interactions n ≥ 1 with feedback between s_{n−1}, s_n."""
        states = PhaseStates(x, free, phases)
        layers = net.interactions
        with torch.no_grad():
            out = self.input_grads(layers[0], x, states, 0, input_ctx)
            for n in range(1, len(layers)):
                layer = cast("AsymmetricInteraction", layers[n])  # n ≥ 1 have feedback
                out += self.edge_grads(layer, states, n - 1, n)
        return out


class DifferentRule(UpdateRule):
    """Each synapse pairs its postsynaptic *nudged* state with its presynaptic *free* state.

    For an interaction from s_p to s_q: ΔW ∝ Σ_k c_k s_{k,q} ⊗ s*_p and ΔB ∝ Σ_k c_k s*_q ⊗
    s_{k,p} (spec §4 default), each pool argmax taken at the arguments of its term.
    """

    name = "different"
    description = "post nudged ⊗ pre free for every synapse (spec §4 default)"

    def edge_grads(
        self, layer: AsymmetricInteraction, states: PhaseStates, pre: int, post: int
    ) -> WeightGrads:
        with torch.no_grad():
            # W's presynaptic state is s* in every phase and its term is linear in the
            # postsynaptic state: the phases combine into one state before a single conv.
            out = layer.paired_weight_grads(states.free[pre], states.combined(post))
            # B's presynaptic state varies per phase and may pass a max pool (argmax at that
            # state), so its phases are stacked along the batch instead.
            back = states.weighted(repeat_batch(states.free[post], states.count))
            out.append((layer.feedback, layer.feedback_grad(states.stacked(pre), back)))
        return out

    def input_grads(
        self, layer: Interaction, x: Tensor, states: PhaseStates, post: int, input_ctx: Any
    ) -> WeightGrads:
        with torch.no_grad():
            return layer.paired_weight_grads(fast_layout(x), states.combined(post), input_ctx)


class SameRule(UpdateRule):
    """The plain per-layer φ contrasted at the compared states; then W and B (same shape)
    both receive the average of their two gradients (Kolen–Pollack-like)."""

    name = "same"
    description = "plain per-layer φ contrast, then W and B share the average gradient"

    def edge_grads(
        self, layer: AsymmetricInteraction, states: PhaseStates, pre: int, post: int
    ) -> WeightGrads:
        with torch.no_grad():
            s_pre = states.stacked(pre)
            s_post = states.weighted(states.stacked(post))
            grads = layer.weight_grads(s_pre, s_post)  # W first, then the bias if any
            mean = (grads[0] + layer.feedback_grad(s_pre, s_post)).mul_(0.5)
            weights = layer.weights()
        return [(weights[0], mean), (layer.feedback, mean.clone()),
                *zip(weights[1:], grads[1:], strict=True)]  # fmt: skip

    def input_grads(
        self, layer: Interaction, x: Tensor, states: PhaseStates, post: int, input_ctx: Any
    ) -> WeightGrads:
        with torch.no_grad():
            # All phases in one evaluation, stacked along the batch (summing the phases first
            # would round differently from the per-phase form).
            xs = repeat_batch(fast_layout(x), states.count)
            return layer.paired_weight_grads(xs, states.weighted(states.stacked(post)))


#: Update rules of networks with feedback weights by the name used in configs.
UPDATE_RULES: dict[str, UpdateRule] = {r.name: r for r in (DifferentRule(), SameRule())}
