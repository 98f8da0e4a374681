"""The frozen 2D teacher: a timm ViT (DINOv2) that turns images into patch features.

IGLOSS uses one teacher for two jobs, and both must see exactly the same network:

* **templates**: each prototype image becomes one L2-normalised vector
  (`Teacher.encode_templates`, REFERENCE "Template (prototype) features");
* **camera images**: each image becomes a (D, h, w) map of patch features
  (`Teacher.patch_features`) from which each lidar point takes its target, either the
  feature of its patch or the bilinearly upsampled feature at its pixel
  (`pixel_features_at`).

The features are the last block's patch tokens *before* the final norm, as the
reference computes them with `forward_intermediates(..., norm=False)`.

Building the model::

    teacher = Teacher(TeacherConfig(
        model_name="vit_large_patch14_dinov2.lvd142m",
        input_size=(448, 896),
        weights="data/weights/dinov2_vitl14.safetensors",   # or None: random init
    ))
    feats = teacher.patch_features(images)   # (B, 1024, 32, 64)

One model serves every image size: it is created at its native pretrained grid with
`dynamic_img_size=True`, so timm resamples the position embeddings (bicubic, antialiased)
for each input size. That is the very resampling `create_model(img_size=...)` applies
once at load time, so templates at 448 x 448 and camera images at 448 x 896 get the
same features as two separately built models would (checked in the tests), with one
copy of the weights in memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from pipeline.devices import DeviceChoice, resolve_device

# timm is imported inside the functions that build models: importing it costs seconds
# (it pulls in torchvision), and the params loader imports this module for TeacherConfig.
# `pipeline/__init__` has already applied the torchvision shim timm needs on CPU torch.

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PixelMode = Literal["pixel", "patch"]
ImageLike = Image.Image | np.ndarray | str | Path

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Pixels per chunk in `mean_normalized_pixel_feature`: bounds its work arrays (~16 x this
# many float64) whatever the template size.
_PIXEL_CHUNK = 65536


class TeacherError(RuntimeError):
    """The teacher cannot be built. The message names the model and, where relevant, the file."""


@dataclass(frozen=True)
class ArchitectureOverrides:
    """Changes to the timm architecture, for a tiny randomly initialised demo teacher.

    Left at None, the named model's own value is kept. With a weights file the overrides
    must describe the architecture the file was saved from.
    """

    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None

    def as_kwargs(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class TeacherConfig:
    """Which teacher, at which size, from which weights.

    Args:
        model_name: a timm model name, e.g. "vit_large_patch14_dinov2.lvd142m".
        input_size: (H, W) the camera images are resized to; multiples of the patch size.
        template_size: (H, W) the prototype images are resized to (448 x 448 in the reference).
        weights: a local weights file (.safetensors or .pth state_dict, loaded by timm with
            `weights_only=True`). None means no weights: random init (or the hub, below).
        from_hub: fetch the model's default pretrained weights through timm (Hugging Face
            hub). Needs network; cannot be combined with `weights`.
        seed: seeds the random init, so a weightless teacher is the same in every process.
        overrides: architecture changes for a tiny demo model.
        precision: autocast dtype on CUDA ("fp16" is what the reference uses); CPU runs fp32.
        device: "auto" takes CUDA when present.
    """

    model_name: str = "vit_small_patch14_dinov2.lvd142m"
    input_size: tuple[int, int] = (448, 896)
    template_size: tuple[int, int] = (448, 448)
    weights: str | None = None
    from_hub: bool = False
    seed: int = 0
    overrides: ArchitectureOverrides = field(default_factory=ArchitectureOverrides)
    precision: Precision = "fp32"
    device: DeviceChoice = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"teacher precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"teacher device must be auto, cpu or cuda, got {self.device!r}")
        if self.weights is not None and self.from_hub:
            raise ValueError("teacher: give either a weights file or from_hub, not both")
        for name in ("input_size", "template_size"):
            size = tuple(getattr(self, name))
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"teacher {name} must be (H, W) with positive sizes, got {size}")
            object.__setattr__(self, name, (int(size[0]), int(size[1])))


def _create_model(config: TeacherConfig, **kwargs) -> torch.nn.Module:
    """timm.create_model with the settings every teacher model shares."""
    import timm

    return timm.create_model(config.model_name, num_classes=0, dynamic_img_size=True,
                             **config.overrides.as_kwargs(), **kwargs)


def teacher_shape(config: TeacherConfig) -> tuple[int, int]:
    """(patch_size, embed_dim) of the configured architecture, without weights or compute.

    The model is built on the "meta" device (shapes only), so stages that only need the
    patch grid, such as point-to-patch assignments, never load a ViT.
    """
    with torch.device("meta"):
        model = _create_model(config, pretrained=False)
    return int(model.patch_embed.patch_size[0]), int(model.embed_dim)


def teacher_patch_size(config: TeacherConfig) -> int:
    """The ViT patch size of the configured teacher (14 for DINOv2); see `teacher_shape`."""
    return teacher_shape(config)[0]


def file_sha256(path: str | Path, length: int = 16) -> str:
    """Hex SHA-256 of a file (first `length` characters), read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def load_image(source: ImageLike, size: tuple[int, int]) -> torch.Tensor:
    """Load (if a path) and resize an image to `size` (H, W): a float32 (3, H, W) tensor in [0, 1].

    Accepts a PIL image, a uint8 array (H, W, 3) or (H, W), or a file path. Grey and RGBA
    images become RGB. Resizing is PIL bilinear (antialiased when shrinking).
    """
    if isinstance(source, (str, Path)):
        with Image.open(source) as opened:
            image = opened.convert("RGB")
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {source.dtype}")
        image = Image.fromarray(source).convert("RGB")
    elif isinstance(source, Image.Image):
        image = source.convert("RGB")
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_images(sources: Sequence[ImageLike], size: tuple[int, int]) -> torch.Tensor:
    """`load_image` for several images: a float32 (B, 3, H, W) tensor in [0, 1]."""
    return torch.stack([load_image(source, size) for source in sources])


def _bilinear_taps(
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
    y0, y1, wy = _bilinear_taps(v, height, h)
    x0, x1, wx = _bilinear_taps(u, width, w)
    wy = wy.to(patch_feats.dtype)
    wx = wx.to(patch_feats.dtype)
    top = flat[:, y0 * w + x0] * (1 - wx) + flat[:, y0 * w + x1] * wx
    bottom = flat[:, y1 * w + x0] * (1 - wx) + flat[:, y1 * w + x1] * wx
    return (top * (1 - wy) + bottom * wy).T


def _upsampling_taps(h: int, w: int, patch_size: int, device: torch.device):
    """For every pixel of the x patch_size upsampled map (row-major): the flat indices of
    its 4 source patches (P, 4) and their bilinear weights (P, 4), float64."""
    height, width = h * patch_size, w * patch_size
    y0, y1, wy = _bilinear_taps(torch.arange(height, device=device), height, h)
    x0, x1, wx = _bilinear_taps(torch.arange(width, device=device), width, w)
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


class Teacher:
    """A frozen timm ViT giving pre-norm last-block patch features.

    Args:
        config: see `TeacherConfig`.

    Raises:
        TeacherError: the weights file is missing or does not fit the architecture (the
            message names the file and the mismatched keys/shapes), or the hub is
            unreachable (the message says how to use a local file instead).
    """

    def __init__(self, config: TeacherConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device, "teacher.device")
        self.model = self._build_model().to(self.device).eval().requires_grad_(False)
        import timm.data

        data_config = timm.data.resolve_data_config({}, model=self.model)
        self._mean = torch.tensor(data_config["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(data_config["std"], device=self.device).view(1, 3, 1, 1)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.embed_dim = int(self.model.embed_dim)
        for name in ("input_size", "template_size"):
            size = getattr(config, name)
            if size[0] % self.patch_size or size[1] % self.patch_size:
                raise TeacherError(
                    f"teacher {name} {size} is not a multiple of the patch size {self.patch_size} "
                    f"of {config.model_name}"
                )
        if self.device.type != "cuda" and config.precision != "fp32":
            log.info("teacher precision %s applies on CUDA only; running fp32 on %s",
                     config.precision, self.device)

    def _build_model(self) -> torch.nn.Module:
        cfg = self.config
        if cfg.weights is not None:
            path = Path(cfg.weights)
            if not path.is_file():
                raise TeacherError(f"teacher weights file not found: {path} (model {cfg.model_name})")
            try:
                return _create_model(cfg, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
            except Exception as error:
                raise TeacherError(
                    f"teacher weights file {path} does not fit {cfg.model_name} "
                    f"with overrides {cfg.overrides.as_kwargs() or 'none'}: {error}"
                ) from error
        if cfg.from_hub:
            try:
                return _create_model(cfg, pretrained=True)
            except Exception as error:
                raise TeacherError(
                    f"could not fetch pretrained weights for teacher {cfg.model_name} from the hub "
                    f"({type(error).__name__}: {error}). This machine may be offline "
                    "(HF_HUB_OFFLINE=1 or no network): download the weights elsewhere and set the "
                    "teacher `weights` param to the local .safetensors/.pth file instead of from_hub."
                ) from error
        log.warning(
            "TEACHER HAS NO PRETRAINED WEIGHTS: %s is randomly initialised (seed %d); its "
            "features are RANDOM. Fine for the demo world, meaningless on real data: set the "
            "teacher `weights` param to a DINOv2 weights file.", cfg.model_name, cfg.seed,
        )
        # Seed a private RNG state so the random init is reproducible without touching
        # the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _create_model(cfg, pretrained=False)

    @cached_property
    def teacher_id(self) -> str:
        """Identifies the features this teacher produces, for artifact metadata.

        Name, sizes, precision, architecture overrides and the weights: a file's SHA-256
        prefix, "hub", or "random-init seed N".
        """
        cfg = self.config
        if cfg.weights is not None:
            weights = f"sha256:{file_sha256(cfg.weights)}"
        elif cfg.from_hub:
            weights = "hub"
        else:
            weights = f"random-init seed {cfg.seed}"
        overrides = ",".join(f"{k}={v}" for k, v in cfg.overrides.as_kwargs().items())
        parts = [
            cfg.model_name,
            f"input={cfg.input_size[0]}x{cfg.input_size[1]}",
            f"template={cfg.template_size[0]}x{cfg.template_size[1]}",
            cfg.precision,
            weights,
        ]
        if overrides:
            parts.insert(1, overrides)
        return " ".join(parts)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) patch grid of a camera image at the configured input size."""
        return self.config.input_size[0] // self.patch_size, self.config.input_size[1] // self.patch_size

    def _autocast(self):
        dtype = _AUTOCAST_DTYPES.get(self.config.precision)
        if dtype is None or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-norm last-block patch tokens: (B, D, h, w) float32 on the teacher's device.

        Args:
            images: (B, 3, H, W) float in [0, 1], already resized (H and W multiples of the
                patch size; normally the configured input size). Normalised here with the
                model's own mean/std.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size "
                             f"{self.patch_size}")
        x = images.to(self.device, torch.float32)
        x = (x - self._mean) / self._std
        with torch.inference_mode(), self._autocast():
            out = self.model.forward_intermediates(
                x, indices=1, return_prefix_tokens=False, norm=False,
                stop_early=True, intermediates_only=True,
            )
        # Cloning outside inference mode gives an ordinary tensor the caller may edit in place.
        return out[-1].float().clone()

    def load_image(self, source: ImageLike) -> torch.Tensor:
        """A camera image resized to the teacher input size: (3, H, W) float32 in [0, 1]."""
        return load_image(source, self.config.input_size)

    def pixel_features_at(
        self, patch_feats: torch.Tensor, pixel_uv: torch.Tensor | np.ndarray, mode: PixelMode = "pixel"
    ) -> torch.Tensor:
        """`pixel_features_at` with this teacher's patch size."""
        return pixel_features_at(patch_feats, pixel_uv, self.patch_size, mode)

    def encode_templates(self, images: Sequence[ImageLike], batch_size: int = 8) -> np.ndarray:
        """One L2-normalised-per-pixel, pixel-averaged vector per prototype image: (M, D) float32.

        Each image is resized to the template size, encoded, upsampled to pixels
        (bilinear x patch size, align_corners=True), L2-normalised per pixel and averaged
        (REFERENCE "Template (prototype) features"). The vectors themselves are not
        normalised again; the classifier does that.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(images), self.embed_dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = load_images(images[start:start + batch_size], self.config.template_size)
            feats = self.patch_features(batch)
            for i, image_feats in enumerate(feats):
                vector = mean_normalized_pixel_feature(image_feats, self.patch_size)
                out[start + i] = vector.cpu().numpy()
        return out
