"""The timm ViT teacher (DINOv2): pre-norm last-block patch features of a frozen timm model.

The first implementation of the `Teacher` protocol (`pipeline.teachers.base`):

* **camera images** -> (D, h, w) patch features (`TimmViTTeacher.patch_features`);
* **templates** -> one vector per image (`TimmViTTeacher.encode_templates`): upsampled to
  pixels, L2-normalised per pixel, averaged (`upsampling.mean_normalized_pixel_feature`).

The features are the last block's patch tokens *before* the final norm, as the
reference computes them with `forward_intermediates(..., norm=False)`.

Building the model::

    teacher = TimmViTTeacher(TeacherConfig(
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

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.devices import DeviceChoice, resolve_device
from pipeline.precision import Precision
from pipeline.teachers.base import TeacherError, file_sha256
from pipeline.teachers.images import ImageLike, load_image, load_images
from pipeline.teachers.upsampling import mean_normalized_pixel_feature

# timm is imported inside the functions that build models: importing it costs seconds
# (it pulls in torchvision), and the params loader imports this module for TeacherConfig.
# `pipeline/__init__` has already applied the torchvision shim timm needs on CPU torch.

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ArchitectureOverridesConfig:
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
        greyscale: the teacher sees every image (camera and template) as grey (ITU-R 601
            luma in all three channels): a teacher that discards colour, for the demo's second
            teacher (README, "Several teachers").
        kind: this config's key in `pipeline.teachers.TEACHER_KINDS` (the `kind:` of a teacher
            params entry; the default, so params written before kinds existed still load).
    """

    model_name: str = "vit_small_patch14_dinov2.lvd142m"
    input_size: tuple[int, int] = (448, 896)
    template_size: tuple[int, int] = (448, 448)
    weights: str | None = None
    from_hub: bool = False
    seed: int = 0
    overrides: ArchitectureOverridesConfig = field(default_factory=ArchitectureOverridesConfig)
    precision: Precision = "fp32"
    device: DeviceChoice = "auto"
    greyscale: bool = False
    kind: Literal["timm_vit"] = "timm_vit"

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

    def build(self) -> TimmViTTeacher:
        """The teacher this config describes (loads the weights)."""
        return TimmViTTeacher(self)

    def shape(self) -> tuple[int, int]:
        """(patch_size, embed_dim), without weights or compute (`teacher_shape`)."""
        return teacher_shape(self)


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


class TimmViTTeacher:
    """A frozen timm ViT giving pre-norm last-block patch features (a `Teacher`).

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
        self._luma = torch.tensor([0.299, 0.587, 0.114], device=self.device).view(1, 3, 1, 1)
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
        if cfg.greyscale:
            parts.insert(1, "greyscale")
        return " ".join(parts)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.input_size

    @property
    def template_size(self) -> tuple[int, int]:
        return self.config.template_size

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
        if self.config.greyscale:
            x = (x * self._luma).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        x = (x - self._mean) / self._std
        with torch.inference_mode(), self._autocast():
            out = self.model.forward_intermediates(
                x, indices=1, return_prefix_tokens=False, norm=False,
                stop_early=True, intermediates_only=True,
            )
        # Cloning outside inference mode gives an ordinary tensor the caller may edit in place.
        return out[-1].float().clone()

    def load_image(self, source: ImageLike, expected_size: tuple[int, int] | None = None) -> torch.Tensor:
        """A camera image resized to the teacher input size: (3, H, W) float32 in [0, 1];
        expected_size: the (H, W) its calibration is for (`images.load_image`)."""
        return load_image(source, self.config.input_size, expected_size)

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
