"""The timm teacher wrapper, on a tiny randomly initialised DINOv2-style ViT."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import pipeline  # noqa: F401  (torchvision shim before timm)
from pipeline.teachers import (
    ArchitectureOverridesConfig,
    TeacherConfig,
    TeacherError,
    TimmViTTeacher,
    teacher_patch_size,
    teacher_shape,
)
from pipeline.teachers.images import load_image
from pipeline.teachers.upsampling import mean_normalized_pixel_feature, pixel_features_at

TINY = ArchitectureOverridesConfig(depth=2, embed_dim=64, num_heads=2)
CONFIG = TeacherConfig(
    model_name="vit_small_patch14_dinov2.lvd142m",
    input_size=(28, 56),
    template_size=(28, 28),
    overrides=TINY,
    device="cpu",
)


@pytest.fixture(scope="module")
def teacher() -> TimmViTTeacher:
    return TimmViTTeacher(CONFIG)


@pytest.fixture(scope="module")
def weights_file(teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(path))
    return path


def _images(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_patch_features_shape(teacher):
    feats = teacher.patch_features(_images(2, (28, 56)))
    assert feats.shape == (2, 64, 2, 4)
    assert feats.dtype == torch.float32
    assert teacher.grid_size == (2, 4)
    assert teacher.patch_size == 14 and teacher.embed_dim == 64


def test_shape_without_building_weights(teacher):
    assert teacher_shape(CONFIG) == (14, 64)
    assert teacher_patch_size(CONFIG) == teacher.patch_size
    assert teacher_shape(dataclasses.replace(CONFIG, overrides=ArchitectureOverridesConfig())) == (14, 384)


def test_same_seed_same_features_and_global_rng_untouched(teacher):
    state = torch.random.get_rng_state()
    again = TimmViTTeacher(CONFIG)
    assert torch.equal(torch.random.get_rng_state(), state)
    images = _images(1, (28, 56))
    assert torch.equal(again.patch_features(images), teacher.patch_features(images))
    other = TimmViTTeacher(dataclasses.replace(CONFIG, seed=1))
    assert not torch.allclose(other.patch_features(images), teacher.patch_features(images))
    assert "random-init seed 0" in teacher.teacher_id
    assert teacher.teacher_id != other.teacher_id


def test_random_init_warns_loudly(caplog):
    with caplog.at_level("WARNING", logger="pipeline.teachers.timm_vit"):
        TimmViTTeacher(CONFIG)
    assert any("RANDOM" in record.getMessage() for record in caplog.records)


def test_weights_file_round_trip(teacher, weights_file):
    loaded = TimmViTTeacher(dataclasses.replace(CONFIG, weights=str(weights_file)))
    images = _images(2, (28, 56), seed=3)
    assert torch.equal(loaded.patch_features(images), teacher.patch_features(images))
    assert "sha256:" in loaded.teacher_id


def test_one_model_matches_a_model_built_at_each_size(weights_file):
    """dynamic_img_size gives what create_model(img_size=...) gives, size by size."""
    teacher = TimmViTTeacher(dataclasses.replace(CONFIG, weights=str(weights_file)))
    for size in [(28, 56), (28, 28), (42, 28)]:
        static = timm.create_model(
            CONFIG.model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_file)),
            img_size=size, num_classes=0, **TINY.as_kwargs(),
        ).eval()
        images = _images(1, size, seed=5)
        x = (images - teacher._mean) / teacher._std
        with torch.inference_mode():
            expected = static.forward_intermediates(
                x, indices=1, return_prefix_tokens=False, norm=False,
                stop_early=True, intermediates_only=True,
            )[-1]
        torch.testing.assert_close(teacher.patch_features(images), expected, rtol=0, atol=1e-6)


def test_weights_for_another_architecture_fail_clearly(weights_file):
    wrong = dataclasses.replace(CONFIG, weights=str(weights_file),
                                overrides=ArchitectureOverridesConfig(depth=2, embed_dim=32, num_heads=2))
    with pytest.raises(TeacherError) as info:
        TimmViTTeacher(wrong)
    message = str(info.value)
    assert str(weights_file) in message
    assert "size mismatch" in message and "torch.Size([64" in message


def test_missing_weights_file(tmp_path):
    with pytest.raises(TeacherError, match="not found"):
        TimmViTTeacher(dataclasses.replace(CONFIG, weights=str(tmp_path / "nope.safetensors")))


def test_unreachable_hub_gives_one_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherError) as info:
        TimmViTTeacher(dataclasses.replace(CONFIG, from_hub=True))
    message = str(info.value)
    assert CONFIG.model_name in message and "weights" in message


def test_config_validation():
    with pytest.raises(ValueError, match="precision"):
        TeacherConfig(precision="fp8")
    with pytest.raises(ValueError, match="not both"):
        TeacherConfig(weights="x.safetensors", from_hub=True)
    with pytest.raises(TeacherError, match="multiple of the patch size"):
        TimmViTTeacher(dataclasses.replace(CONFIG, input_size=(30, 56)))


def test_pixel_features_match_full_upsampling():
    feats = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(0))
    patch = 14
    full = F.interpolate(feats[None], scale_factor=patch, mode="bilinear", align_corners=True)[0]
    rng = np.random.default_rng(0)
    uv = np.stack([rng.integers(0, 5 * patch, 500), rng.integers(0, 3 * patch, 500)], axis=1)
    uv = np.concatenate([uv, [[0, 0], [5 * patch - 1, 3 * patch - 1], [13, 14], [14, 13]]])
    got = pixel_features_at(feats, uv, patch, mode="pixel")
    expected = full[:, uv[:, 1], uv[:, 0]].T
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    got_patch = pixel_features_at(feats, torch.from_numpy(uv), patch, mode="patch")
    torch.testing.assert_close(got_patch, feats[:, uv[:, 1] // patch, uv[:, 0] // patch].T)

    with pytest.raises(ValueError, match="outside"):
        pixel_features_at(feats, np.array([[5 * patch, 0]]), patch)
    with pytest.raises(TypeError, match="integer"):
        pixel_features_at(feats, np.array([[1.5, 0.0]]), patch)


def test_encode_templates_normalises_each_pixel_before_averaging(teacher):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in [(40, 40), (28, 28), (64, 32)]]
    got = teacher.encode_templates(images, batch_size=2)
    assert got.shape == (3, 64) and got.dtype == np.float32

    batch = torch.stack([load_image(image, (28, 28)) for image in images])
    feats = teacher.patch_features(batch)
    pixels = F.interpolate(feats, scale_factor=14, mode="bilinear", align_corners=True)
    expected = F.normalize(pixels, dim=1).mean(dim=(2, 3))
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)
    # Averaging before normalising is a different vector: the order matters.
    unnormalised = pixels.mean(dim=(2, 3))
    assert not np.allclose(got, (unnormalised / unnormalised.norm(dim=1, keepdim=True)).numpy(), atol=1e-3)


def test_template_vector_equals_direct_computation_on_a_larger_grid():
    feats = torch.randn(16, 5, 7, generator=torch.Generator().manual_seed(2))
    feats[:, 2, 3] = -feats[:, 2, 4]  # neighbours that cancel: small norms in between
    pixels = F.interpolate(feats[None], scale_factor=14, mode="bilinear", align_corners=True)[0]
    expected = F.normalize(pixels, dim=0).mean(dim=(1, 2))
    torch.testing.assert_close(mean_normalized_pixel_feature(feats, 14), expected, rtol=0, atol=1e-6)


def test_load_image_formats(tmp_path):
    grey = np.full((10, 20), 255, dtype=np.uint8)
    out = load_image(grey, (14, 28))
    assert out.shape == (3, 14, 28) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))
    rgba = Image.new("RGBA", (5, 5), (0, 255, 0, 128))
    path = tmp_path / "x.png"
    rgba.save(path)
    out = load_image(path, (5, 5))
    assert out[1].eq(1).all() and out[0].eq(0).all()
