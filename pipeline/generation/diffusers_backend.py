"""Text-to-image prototypes with a diffusers pipeline (Stable Diffusion 1.x/XL/3, FLUX, ...).

Usage::

    generator = DiffusersGenerator(DiffusersConfig(model="/data/weights/sd3-medium"))
    images = generator.generate(["a photo of a car", "a photo of a bus"], seeds=[11, 12])

* **Model**: `model` is a local folder written by `save_pretrained` (or by
  `huggingface-cli download <id> --local-dir <dir>`), or a Hugging Face hub id. With
  `pipeline_class=None`, `AutoPipelineForText2Image` reads the folder's
  `model_index.json` and picks the right pipeline; naming a class
  ("StableDiffusion3Pipeline") forces it.
* **Fail fast**: the pipeline is loaded on first use (`load()` forces it). A missing
  folder, or a hub id that cannot be fetched (no network, `HF_HUB_OFFLINE=1`, unknown or
  gated repository) and is not in the local hub cache, raises one `ModelUnavailableError`
  that names the model and says how to point `prototypes.diffusers.model` at a local
  folder. Without `HF_HUB_OFFLINE`, reachability is probed with one short metadata
  request first, so a machine without network fails in about a second instead of
  waiting through the download retries.
* **Determinism**: one `torch.Generator(device).manual_seed(seed)` per image, so an image
  depends on its own seed and prompt only (up to float rounding that can differ with
  the batch composition), and any single image can be regenerated alone.
* **Precision**: fp16/bf16 only on CUDA; on CPU the pipeline runs in fp32 (logged),
  since half-precision convolutions on CPU are slow or unsupported.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from tqdm import tqdm

from pipeline.devices import DeviceChoice, resolve_device

log = logging.getLogger(__name__)

DType = Literal["fp32", "fp16", "bf16"]

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_AUTO_PIPELINE = "AutoPipelineForText2Image"
_EXAMPLE_PIPELINES = "StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline"
# A hub repository id: "name" or "owner/name" of letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_HUB_PROBE_TIMEOUT_S = 10.0


class DiffusersConfigError(ValueError):
    """A diffusers setting is invalid; the message names the key and what is allowed."""


class ModelUnavailableError(RuntimeError):
    """The diffusers model cannot be loaded from where the config points; says how to fix it."""


@dataclass(frozen=True)
class DiffusersConfig:
    """Which diffusers pipeline draws the prototypes, and how.

    Args:
        model: a local folder holding a diffusers pipeline (`model_index.json` plus one
            sub-folder per component), or a hub id such as
            "stabilityai/stable-diffusion-3-medium-diffusers".
        pipeline_class: None lets `AutoPipelineForText2Image` choose from the model's
            `model_index.json`; otherwise the name of a diffusers pipeline class, e.g.
            "StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline".
        steps: denoising steps per image.
        guidance_scale: classifier-free guidance; None keeps the pipeline's default.
        negative_prompt: optional negative prompt for pipelines that take one.
        height, width: image size in pixels; None keeps the model's default size.
        dtype: weights/compute precision on CUDA; CPU always runs fp32.
        device: "auto" takes CUDA when torch sees it.
        batch_size: images per pipeline call.
        max_blank_retries: how many times a blank (safety-checker black) image is
            regenerated with a new seed before the class fails.
        variant: weights variant to load, e.g. "fp16" for hub repositories that ship
            half-precision files; None loads the default files.
    """

    model: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    pipeline_class: str | None = None
    steps: int = 28
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    dtype: DType = "fp16"
    device: DeviceChoice = "auto"
    batch_size: int = 4
    max_blank_retries: int = 3
    variant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise DiffusersConfigError("diffusers.model must name a local folder or a hub id, got an empty value")
        if self.pipeline_class is not None and not str(self.pipeline_class).isidentifier():
            raise DiffusersConfigError(
                f"diffusers.pipeline_class {self.pipeline_class!r} is not a class name; use null for "
                f"{_AUTO_PIPELINE} or a diffusers pipeline class such as {_EXAMPLE_PIPELINES}"
            )
        if self.steps < 1:
            raise DiffusersConfigError(f"diffusers.steps must be >= 1, got {self.steps}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise DiffusersConfigError(f"diffusers.guidance_scale must be >= 0 or null, got {self.guidance_scale}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DiffusersConfigError(f"diffusers.{name} must be a positive number of pixels or null, got {value}")
        if self.dtype not in _TORCH_DTYPES:
            raise DiffusersConfigError(f"diffusers.dtype must be one of fp32, fp16, bf16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise DiffusersConfigError(f"diffusers.device must be one of auto, cpu, cuda, got {self.device!r}")
        if self.batch_size < 1:
            raise DiffusersConfigError(f"diffusers.batch_size must be >= 1, got {self.batch_size}")
        if self.max_blank_retries < 0:
            raise DiffusersConfigError(f"diffusers.max_blank_retries must be >= 0, got {self.max_blank_retries}")


def resolve_pipeline_class(name: str | None) -> type:
    """The diffusers class that loads the model: `AutoPipelineForText2Image` for None.

    Any other name must be exported by diffusers and be a `DiffusionPipeline` subclass.
    """
    import diffusers

    if name is None or name == _AUTO_PIPELINE:
        return diffusers.AutoPipelineForText2Image
    found = getattr(diffusers, name, None)
    if isinstance(found, type) and issubclass(found, diffusers.DiffusionPipeline):
        return found
    what = "is not exported by diffusers" if found is None else "is not a diffusers pipeline (DiffusionPipeline subclass)"
    raise DiffusersConfigError(
        f"diffusers.pipeline_class {name!r} {what} (diffusers {diffusers.__version__}). Use null to let "
        f"{_AUTO_PIPELINE} choose from the model's model_index.json, or name a text-to-image pipeline "
        f"class such as {_EXAMPLE_PIPELINES}."
    )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for `name` on `device`; CPU is forced to fp32 (logged)."""
    if device.type == "cpu" and name != "fp32":
        log.info("diffusers: dtype %s requested but running on CPU, using fp32", name)
        return torch.float32
    return _TORCH_DTYPES[name]


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (`HF_HUB_OFFLINE` set)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def probe_hub(model_id: str) -> None:
    """One short metadata request for `model_id`; raises what huggingface_hub raises."""
    from huggingface_hub import HfApi

    HfApi().model_info(model_id, timeout=_HUB_PROBE_TIMEOUT_S)


def _how_to_fix(model: str) -> str:
    hub_id = model if _HUB_ID.match(model) else "<hub id>"
    return (
        "Point prototypes.diffusers.model at a local folder holding the diffusers pipeline "
        f"(model_index.json plus its component folders), e.g. one downloaded on a machine with network with "
        f"`huggingface-cli download {hub_id} --local-dir <dir>` (`hf download` in newer huggingface_hub) "
        "and copied here."
    )


def _looks_local(model: str) -> bool:
    """A path that exists, or a string that cannot be a hub id (absolute, ./, ~, backslash, ...)."""
    return Path(model).expanduser().exists() or not _HUB_ID.match(model)


def _dtype_keyword() -> str:
    """`from_pretrained`'s dtype argument: "dtype" in recent diffusers, "torch_dtype" before."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


class DiffusersGenerator:
    """A diffusers text-to-image pipeline, loaded on first use, with one seed per image."""

    def __init__(self, config: DiffusersConfig) -> None:
        self.config = config
        self.pipeline_class = resolve_pipeline_class(config.pipeline_class)
        self.device = resolve_device(config.device, "prototypes.diffusers.device")
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._pipe: Any = None

    @property
    def generator_id(self) -> str:
        """What the manifest records as the generator: the model as configured."""
        return self.config.model

    @property
    def max_blank_retries(self) -> int:
        return self.config.max_blank_retries

    def load(self) -> Any:
        """Load the pipeline now (idempotent); raises `ModelUnavailableError` when it cannot."""
        if self._pipe is None:
            self._pipe = self._load_pipeline()
        return self._pipe

    def _load_pipeline(self) -> Any:
        model = self.config.model
        kwargs: dict[str, Any] = {_dtype_keyword(): self.dtype}
        if self.config.variant is not None:
            kwargs["variant"] = self.config.variant
        if _looks_local(model):
            source = str(self._check_local_folder(model))
            where = f"local folder {source}"
            reason = f"loading the local folder {source} failed"
        else:
            source = model
            where = f"hub id {model!r}"
            offline_reason = self._hub_offline_reason(model)
            kwargs["local_files_only"] = offline_reason is not None
            reason = f"{offline_reason} and it is not in the local hub cache" if offline_reason else "the download failed"
        log.info("diffusers: loading %s (%s) on %s in %s", where, self.pipeline_class.__name__, self.device, self.dtype)
        try:
            with warnings.catch_warnings():
                # diffusers 0.42 passes an argument huggingface_hub 1.x deprecated; the warning is noise.
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
                pipe = self.pipeline_class.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(
                f"diffusers model {model!r} cannot be loaded: {reason}. {_how_to_fix(model)} "
                f"[diffusers said: {_first_line(error)}]"
            ) from None
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        log.info("diffusers: loaded %s", type(pipe).__name__)
        return pipe

    def _check_local_folder(self, model: str) -> Path:
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise ModelUnavailableError(
                f"diffusers model folder {folder} does not exist (prototypes.diffusers.model = {model!r}). "
                f"{_how_to_fix(model)}"
            )
        if not (folder / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"diffusers model folder {folder} has no model_index.json, so it is not a diffusers pipeline "
                f"folder (prototypes.diffusers.model = {model!r}). {_how_to_fix(model)}"
            )
        return folder

    def _hub_offline_reason(self, model: str) -> str | None:
        """None when the hub id may be downloaded; otherwise why it must come from the local cache."""
        if hub_offline():
            return "HF_HUB_OFFLINE is set"
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            probe_hub(model)
        except GatedRepoError:
            raise ModelUnavailableError(
                f"diffusers model {model!r} is a gated hub repository: accept its licence on huggingface.co and "
                f"log in (`huggingface-cli login`), or: {_how_to_fix(model)}"
            ) from None
        except RepositoryNotFoundError:
            raise ModelUnavailableError(
                f"diffusers model {model!r} is neither a local folder nor a hub repository that can be seen "
                f"(misspelt, private, or needs `huggingface-cli login`). {_how_to_fix(model)}"
            ) from None
        except Exception as error:  # no network, DNS failure, timeout, proxy: try the local cache only
            log.warning("diffusers: the hub is unreachable (%s); trying the local hub cache for %r", _first_line(error), model)
            return f"the Hugging Face hub is unreachable ({_first_line(error)})"
        return None

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """One RGB image per (prompt, seed), in order, in batches of `batch_size`."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return []
        pipe = self.load()
        images: list[Image.Image] = []
        size = self.config.batch_size
        progress = tqdm(total=len(prompts), desc="diffusers", unit="image", leave=False)
        for start in range(0, len(prompts), size):
            batch_prompts = list(prompts[start : start + size])
            batch_seeds = seeds[start : start + size]
            call: dict[str, Any] = {
                "prompt": batch_prompts,
                "num_inference_steps": self.config.steps,
                "generator": [torch.Generator(device=self.device).manual_seed(int(s)) for s in batch_seeds],
                "output_type": "pil",
            }
            if self.config.guidance_scale is not None:
                call["guidance_scale"] = self.config.guidance_scale
            if self.config.negative_prompt is not None:
                call["negative_prompt"] = [self.config.negative_prompt] * len(batch_prompts)
            if self.config.height is not None:
                call["height"] = self.config.height
            if self.config.width is not None:
                call["width"] = self.config.width
            log.debug("diffusers: images %d-%d of %d", start, start + len(batch_prompts) - 1, len(prompts))
            output = pipe(**call)
            batch_images = list(output.images)
            if len(batch_images) != len(batch_prompts):
                raise RuntimeError(
                    f"diffusers pipeline {type(pipe).__name__} returned {len(batch_images)} images "
                    f"for {len(batch_prompts)} prompts"
                )
            images.extend(image.convert("RGB") for image in batch_images)
            progress.update(len(batch_images))
        progress.close()
        return images


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:400]
