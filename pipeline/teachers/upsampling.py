"""Teacher patch features at pixels: bilinear upsampling (align_corners=True), computed sparsely.

Every teacher gives a (D, h, w) map of patch features. Lidar points take the feature at
their pixel of that map upsampled x patch size (`pixel_features_at`), and each template
becomes the average of its per-pixel L2-normalised upsampled features
(`mean_normalized_pixel_feature`). Both equal what `F.interpolate(..., mode="bilinear",
align_corners=True)` followed by indexing gives, without building the upsampled map;
`bilinear_taps` (the two source indices and weight of an output index) is the shared step,
which `pipeline.assignments` also uses to store each point's 4 source patches.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

PixelMode = Literal["pixel", "patch"]

# Pixels per chunk in `mean_normalized_pixel_feature`: bounds its work arrays (~16 x this
# many float64) whatever the template size.
_PIXEL_CHUNK = 65536


def bilinear_taps(
    coord: torch.Tensor, out_len: int, in_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source taps of bilinear upsampling with align_corners=True along one axis.

    Output index i of an axis upsampled from `in_len` to `out_len` samples the input at
    i * (in_len - 1) / (out_len - 1): the two neighbouring input indices and the weight
    of the upper one. This is what F.interpolate(..., align_corners=True) computes, for
    the requested output indices only.
    """
    scale = (in_len - 1) / (out_len - 1) if out_len > 1 else 0.0
    source = coord.to(torch.float64) * scale
    low = source.floor().clamp_(0, in_len - 1)
    high = (low + 1).clamp_(max=in_len - 1)
    return low.long(), high.long(), source - low


def pixel_features_at(
    patch_feats: torch.Tensor,
    pixel_uv: torch.Tensor | np.ndarray,
    patch_size: int,
    mode: PixelMode = "pixel",
) -> torch.Tensor:
    """The teacher feature of each requested pixel: (P, D), in the dtype of `patch_feats`.

    Args:
        patch_feats: (D, h, w) patch features of one image.
        pixel_uv: (P, 2) integer pixel coordinates (u = column, v = row) in the teacher's
            input image, i.e. in [0, w * patch_size) x [0, h * patch_size).
        patch_size: the ViT patch size (14 for DINOv2).
        mode: "patch" takes the patch at floor(pixel / patch_size), with no interpolation
            (DITR). "pixel" takes the feature map upsampled x patch_size bilinearly with
            align_corners=True (the ScaLR reference), evaluated only at these pixels: the
            full upsampled map (D x 448 x 896 floats for ViT-L) is never built.
    """
    if patch_feats.ndim != 3:
        raise ValueError(f"patch_feats must be (D, h, w), got shape {tuple(patch_feats.shape)}")
    uv = torch.as_tensor(pixel_uv, device=patch_feats.device)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"pixel_uv must be (P, 2), got shape {tuple(uv.shape)}")
    if uv.is_floating_point():
        raise TypeError("pixel_uv must hold integer pixel indices (floor them first)")
    dim, h, w = patch_feats.shape
    height, width = h * patch_size, w * patch_size
    u, v = uv[:, 0].long(), uv[:, 1].long()
    if len(uv) and (u.min() < 0 or v.min() < 0 or u.max() >= width or v.max() >= height):
        raise ValueError(f"pixel_uv outside the {width} x {height} teacher image")
    flat = patch_feats.reshape(dim, h * w)
    if mode == "patch":
        return flat[:, (v // patch_size) * w + u // patch_size].T
    if mode != "pixel":
        raise ValueError(f"mode must be 'pixel' or 'patch', got {mode!r}")
    y0, y1, wy = bilinear_taps(v, height, h)
    x0, x1, wx = bilinear_taps(u, width, w)
    wy = wy.to(patch_feats.dtype)
    wx = wx.to(patch_feats.dtype)
    top = flat[:, y0 * w + x0] * (1 - wx) + flat[:, y0 * w + x1] * wx
    bottom = flat[:, y1 * w + x0] * (1 - wx) + flat[:, y1 * w + x1] * wx
    return (top * (1 - wy) + bottom * wy).T


def _upsampling_taps(h: int, w: int, patch_size: int, device: torch.device):
    """For every pixel of the x patch_size upsampled map (row-major): the flat indices of
    its 4 source patches (P, 4) and their bilinear weights (P, 4), float64."""
    height, width = h * patch_size, w * patch_size
    y0, y1, wy = bilinear_taps(torch.arange(height, device=device), height, h)
    x0, x1, wx = bilinear_taps(torch.arange(width, device=device), width, w)
    y0, y1, wy = y0[:, None], y1[:, None], wy[:, None]
    index = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=-1)
    weight = torch.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], dim=-1)
    return index.reshape(-1, 4), weight.reshape(-1, 4)


def mean_normalized_pixel_feature(
    patch_feats: torch.Tensor, patch_size: int, eps: float = 1e-12
) -> torch.Tensor:
    """One template vector from (D, h, w) patch features: (D,) float32.

    Defined as: upsample x patch_size (bilinear, align_corners=True) to pixels, L2-normalise
    each pixel's feature, average over all pixels. Materialising that map costs D x H x W
    floats (0.8 GB for ViT-L at 448 x 448) and seconds per image, so it is computed
    exactly but cheaply instead. A pixel's feature is sum_i a_i f_i over its 4 source
    patches, so

        mean_p up_p / |up_p| = (1/N) sum_patches f_k * g_k,   g_k = sum_{p, i: k_i = k} a_i / |up_p|,

    and |up_p|^2 = sum_ij a_i a_j <f_i, f_j> comes from the patches' Gram matrix. All of
    it is float64; the result equals the direct computation to float32 rounding (tested).
    """
    dim, h, w = patch_feats.shape
    flat = patch_feats.to(torch.float64).reshape(dim, h * w)
    gram = flat.T @ flat
    index, weight = _upsampling_taps(h, w, patch_size, flat.device)
    coefficient = torch.zeros(h * w, dtype=torch.float64, device=flat.device)
    for start in range(0, len(index), _PIXEL_CHUNK):
        idx, a = index[start:start + _PIXEL_CHUNK], weight[start:start + _PIXEL_CHUNK]
        pair_dots = gram[idx[:, :, None], idx[:, None, :]]  # (P, 4, 4)
        norm = torch.einsum("pi,pj,pij->p", a, a, pair_dots).clamp_(min=0).sqrt_()
        coefficient.index_add_(0, idx.reshape(-1), (a / norm.clamp(min=eps)[:, None]).reshape(-1))
    return (flat @ coefficient / len(index)).float()
