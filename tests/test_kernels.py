"""The small kernels: cached scalar constants combine like numbers."""

from __future__ import annotations

import torch

from eqprop.core.kernels import scalar


def test_scalar_is_a_cached_0d_tensor_that_combines_like_the_number() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    four = scalar(4.0, x)
    assert isinstance(four, torch.Tensor) and four.dim() == 0 and four.dtype == x.dtype
    assert scalar(4.0, x) is four and four.device == x.device  # cached per value, dtype, device
    assert scalar(4.0, x.float()) is not four
    assert torch.equal(x.clone().mul_(four).sub_(scalar(2.0, x)), x * 4.0 - 2.0)


def test_scalar_works_under_compile() -> None:
    @torch.compile(backend="eager", fullgraph=True)
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(scalar(1.0, x), x, x, value=3.0)

    x = torch.randn(5)
    # Against the same kernel run eagerly: 1 + 3·x·x written out rounds differently in the last
    # bit for some x (addcmul may fuse), which made an exact comparison fail at random.
    assert torch.equal(f(x), torch.addcmul(torch.ones(()), x, x, value=3.0))
