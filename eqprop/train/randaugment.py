"""RandAugment (Cubuk et al. 2020) on a batch of uint8 images, on their device.

The Hopfield-ResNet recipe (residual spec §3) applies RandAugment(N ops, magnitude M) between a
random horizontal flip and a random crop. Each image draws its own N ops (uniformly among the 14
of torchvision's ``RandAugment``) and, for signed ops, its own sign; magnitudes are torchvision's
(31 bins): at M = 9, shear 0.09, translation 150/331 × 9/30 of the side, rotation 9°,
brightness / colour / contrast / sharpness factors 1 ± 0.27, posterize to 7 bits, solarize
above 178.5. All draws come from a CPU generator (device-independent, like the rest of the
augmentation); the images never leave the device.

What differs from torchvision's ops: geometric ops map every output pixel to the nearest source
pixel by our own rounding (torchvision's ``affine`` goes through ``grid_sample`` with its own
centre conventions), so a few edge pixels can differ; the shears are about the top-left corner
as in torchvision and the rotation about the image centre; fill is 0 as in torchvision.
Blends (brightness, colour, contrast, sharpness) truncate to integers as torchvision does on
uint8; equalize uses torchvision's lookup-table rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RANDAUGMENT_OPS", "rand_augment"]

#: The ops RandAugment draws from, in torchvision's order.
RANDAUGMENT_OPS = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
    "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
)  # fmt: skip

_BINS = 31


def _geometric(x: Tensor, op: str, mag: float, sign: Tensor) -> Tensor:
    """Shear, translate or rotate each image by ``sign * mag``; nearest source pixel, fill 0."""
    b, c, h, w = x.shape
    i = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1).expand(b, h, w)
    j = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w).expand(b, h, w)
    s = (sign * mag).view(b, 1, 1)
    if op == "shear_x":
        si, sj = i, j - s * i
    elif op == "shear_y":
        si, sj = i - s * j, j
    elif op == "translate_x":
        si, sj = i, j - s.round()
    elif op == "translate_y":
        si, sj = i - s.round(), j
    else:  # rotate about the centre, angle in degrees
        theta = s * math.pi / 180
        ci, cj = (h - 1) / 2, (w - 1) / 2
        si = (i - ci) * torch.cos(theta) - (j - cj) * torch.sin(theta) + ci
        sj = (i - ci) * torch.sin(theta) + (j - cj) * torch.cos(theta) + cj
    si, sj = si.round().long(), sj.round().long()
    inside = (si >= 0) & (si < h) & (sj >= 0) & (sj < w)
    flat = (si.clamp(0, h - 1) * w + sj.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = x.flatten(2).gather(2, flat).view(b, c, h, w)
    return out * inside.unsqueeze(1)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (0.2989 * r + 0.587 * g + 0.114 * b).floor()


def _blend(img: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * img + (1 - f) * other).clamp(0, 255).floor()


def _sharpness_base(x: Tensor) -> Tensor:
    c = x.shape[1]
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, k, groups=c).round().clamp(0, 255)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = smooth
    return out


def _equalize(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    v = x.long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.long).scatter_add_(
        1, v, torch.ones_like(v)
    )
    last = 255 - (hist > 0).flip(1).long().argmax(1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    safe = step.clamp(min=1)
    lut = (hist.cumsum(1) + safe // 2) // safe
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    out = lut.gather(1, v).to(x.dtype)
    return torch.where(step == 0, v.to(x.dtype), out).view(b, c, h, w)


def _apply(x: Tensor, op: str, m: int, sign: Tensor) -> Tensor:
    """One op at magnitude bin ``m`` on float images holding integers in [0, 255]."""
    h, w = x.shape[-2:]
    level = m / (_BINS - 1)
    if op in ("shear_x", "shear_y"):
        return _geometric(x, op, 0.3 * level, sign)
    if op == "translate_x":
        return _geometric(x, op, 150 / 331 * w * level, sign)
    if op == "translate_y":
        return _geometric(x, op, 150 / 331 * h * level, sign)
    if op == "rotate":
        return _geometric(x, op, 30 * level, sign)
    factor = 1 + 0.9 * level * sign
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if op == "color":
        return _blend(x, _gray(x).expand_as(x), factor)
    if op == "contrast":
        return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True).floor().expand_as(x), factor)
    if op == "sharpness":
        return _blend(x, _sharpness_base(x), factor)
    if op == "posterize":
        bits = 8 - round(m / ((_BINS - 1) / 4))  # 7 bits at M = 9
        shift = 2 ** (8 - bits)
        return (x / shift).floor() * shift
    if op == "solarize":
        return torch.where(x >= 255.0 * (1 - level), 255 - x, x)
    if op == "autocontrast":
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        scale = torch.where(hi > lo, 255 / (hi - lo).clamp(min=1), torch.ones_like(hi))
        return torch.where(hi > lo, ((x - lo) * scale).clamp(0, 255).floor(), x)
    if op == "equalize":
        return _equalize(x)
    return x


def rand_augment(x: Tensor, num_ops: int, magnitude: int, gen: torch.Generator) -> Tensor:
    """RandAugment(``num_ops``, ``magnitude``) on uint8 images (B, C, H, W), draws from ``gen``.

    Returns uint8 images of the same shape on the same device.
    """
    b = x.shape[0]
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (num_ops, b), generator=gen)
    signs = torch.where(torch.rand(num_ops, b, generator=gen) < 0.5, -1.0, 1.0)
    img = x.float()
    for k in range(num_ops):
        out = img.clone()
        for i, op in enumerate(RANDAUGMENT_OPS):
            sel = (ops[k] == i).nonzero().flatten()  # on the CPU: no device sync
            if op == "identity" or sel.numel() == 0:
                continue
            idx = sel.to(x.device)
            out[idx] = _apply(img[idx], op, magnitude, signs[k][sel].to(x.device))
        img = out
    return img.clamp(0, 255).to(torch.uint8)


def flip_rand_augment_crop(
    x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, num_ops: int, magnitude: int,
    gen: torch.Generator,
) -> Tensor:  # fmt: skip
    """The recipe's order: flip where ``flip`` (B, 1), RandAugment, then the crop at offsets
    ``dy``, ``dx`` (B, 1) of the edge-padded image (edge padding: clamped coordinates)."""
    b, c, h, w = x.shape
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    x = rand_augment(x, num_ops, magnitude, gen)
    rows = (dy + torch.arange(h, device=x.device)).clamp_(0, h - 1)
    cols = (dx + torch.arange(w, device=x.device)).clamp_(0, w - 1)
    x = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
