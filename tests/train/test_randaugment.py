"""RandAugment on the device: shapes, determinism, magnitudes, and the recipe's order."""

from __future__ import annotations

import pytest
import torch

from eqprop.train.loader import EpochLoader
from eqprop.train.randaugment import RANDAUGMENT_OPS, _apply, rand_augment


def images(b: int = 6, c: int = 3, side: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, side, side), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)  # fmt: skip


@pytest.mark.parametrize(
    "op", ["shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
           "contrast", "sharpness", "posterize"],
)  # fmt: skip
def test_every_magnitude_op_is_the_identity_at_magnitude_zero(op):
    x = images().float()
    assert torch.equal(_apply(x, op, 0, torch.ones(6)), x)


def test_ops_keep_integer_pixels_in_range_and_translate_moves_by_the_magnitude():
    x = images().float()
    for op in RANDAUGMENT_OPS:
        out = _apply(x, op, 9, -torch.ones(6))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
        assert torch.equal(out, out.round()), op
    shift = round(150 / 331 * 12 * 9 / 30)  # 2 pixels at magnitude 9 on 12 pixels
    moved = _apply(x, "translate_x", 9, torch.ones(6))
    assert torch.equal(moved[..., shift:], x[..., :-shift])
    assert (moved[..., :shift] == 0).all()


def test_rand_augment_is_reproducible_from_its_generator():
    x = images()
    a = rand_augment(x, 3, 9, torch.Generator().manual_seed(5))
    b = rand_augment(x, 3, 9, torch.Generator().manual_seed(5))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, rand_augment(x, 3, 9, torch.Generator().manual_seed(6)))


def test_loader_flips_augments_and_crops_reproducibly():
    x, y = images(10), torch.arange(10)
    kw = {"augment": True, "seed": 3, "randaugment": 2, "shuffle": False}
    first = next(EpochLoader(x, y, 5, **kw).epoch(0))[0]
    again = next(EpochLoader(x, y, 5, **kw).epoch(0))[0]
    plain = next(EpochLoader(x, y, 5, augment=True, seed=3, shuffle=False).epoch(0))[0]
    assert torch.equal(first, again) and not torch.equal(first, plain)
