"""Benchmark 4: template features, the teacher's vector of every prototype image.

Ours is `Teacher.encode_templates`, as the template_features stage runs it: images in batches
(`template_features.batch_size`), and the per-pixel-normalised mean of the x14 upsampled patch
features computed exactly from the patches' Gram matrix, never materialising the upsampled map.

The reference, as IGLOSS does it: one image at a time, `F.interpolate` of the patch features
x patch size (bilinear, align_corners=True) to a full (D, H, W) map, L2-normalised per pixel,
averaged.

Two rows:
* the demo teacher of params.yaml over the procedural prototypes of every class (images per
  second, whole path);
* the template reduction alone at the release geometry, ViT-L/14 at 448 x 448 (1024 x 32 x 32
  patch features, random values): what the reference's full upsampled map costs there.

Agreement: every template vector within cosine 0.99999 of the reference's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.common import REPO, Fact, Row, Section, bench_params_data, cosine_check, measure
from pipeline.config import parse_params
from stages.common import project_stage_sections
from pipeline.teachers import Teacher, build_teacher
from pipeline.teachers.images import load_images
from pipeline.teachers.upsampling import mean_normalized_pixel_feature

MIN_COSINE = 0.99999
RELEASE_GRID = (1024, 32, 32)  # ViT-L/14 patch features of a 448 x 448 template
RELEASE_PATCH = 14


def reference_vector(patch_feats: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(D, h, w) -> (D,): upsample to pixels, L2-normalise each pixel, average (the full map)."""
    up = F.interpolate(patch_feats[None].float(), scale_factor=patch_size, mode="bilinear", align_corners=True)[0]
    return F.normalize(up, dim=0).mean(dim=(1, 2))


def reference_templates(teacher: Teacher, images: list) -> np.ndarray:
    """One image at a time: load, encode, reduce the full upsampled map."""
    out = np.zeros((len(images), teacher.embed_dim), dtype=np.float32)
    for i, image in enumerate(images):
        feats = teacher.patch_features(load_images([image], teacher.template_size))[0]
        out[i] = reference_vector(feats, teacher.patch_size).cpu().numpy()
    return out


def run(world: Path, device: torch.device, runs: int, images_per_class: int, classes: int | None = None,
        release_grid: tuple[int, int, int] = RELEASE_GRID) -> Section:
    """classes: the first this many vocabulary classes (None: all); release_grid: (D, h, w) of the
    second row (ViT-L/14 at 448 x 448 by default; smaller in --quick)."""
    from bench.vocabulary import prototype_images

    section = Section("4. Template features: the teacher over the prototypes")
    params = parse_params(bench_params_data(world, classes, images_per_class), "bench templates:",
                          project_stage_sections(REPO / "params.yaml"))
    teacher = build_teacher(params.teacher)
    images = [image for name in tqdm(params.class_names, desc="prototypes") for image in prototype_images(params, name)]
    batch = params.template_features.batch_size
    check = cosine_check("template vectors agree", teacher.encode_templates(images, batch),
                         reference_templates(teacher, images), MIN_COSINE)
    baseline, ours = measure([lambda: reference_templates(teacher, images),
                              lambda: teacher.encode_templates(images, batch)], runs, device,
                             work=len(images), unit="image")
    height, width = params.teacher.template_size
    section.rows.append(Row(
        case=f"demo teacher ({params.teacher.model_name}, overrides {params.teacher.overrides.as_kwargs()}), "
             f"{len(images)} prototypes at {height} x {width}",
        ours_name=f"Teacher.encode_templates, batches of {batch}",
        ours=ours,
        baseline_name="one image at a time, full upsampled map",
        baseline=baseline,
        checks=[check],
        facts=[Fact("ours, images per second", ours.rate, "image/s"),
               Fact("reference, images per second", baseline.rate, "image/s")],
    ))

    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(*release_grid, generator=generator).to(device)
    vectors = [mean_normalized_pixel_feature(feats, RELEASE_PATCH).cpu().numpy()[None],
               reference_vector(feats, RELEASE_PATCH).cpu().numpy()[None]]
    release_check = cosine_check("template vector agrees", vectors[0], vectors[1], MIN_COSINE)
    baseline, ours = measure([lambda: reference_vector(feats, RELEASE_PATCH),
                              lambda: mean_normalized_pixel_feature(feats, RELEASE_PATCH)], runs, device,
                             work=1, unit="image")
    section.rows.append(Row(
        case=f"template reduction alone, {' x '.join(map(str, release_grid))} patch features "
             f"({'ViT-L/14 at 448 x 448' if release_grid == RELEASE_GRID else 'reduced for a quick run'})",
        ours_name="exact Gram-based mean (mean_normalized_pixel_feature)",
        ours=ours,
        baseline_name="full upsampled map, normalise, mean",
        baseline=baseline,
        checks=[release_check],
        facts=[Fact("reference upsampled map, float32", release_grid[0] * release_grid[1] * release_grid[2]
                    * RELEASE_PATCH ** 2 * 4 / 2**20, "MiB")],
    ))
    section.notes.append(
        "The demo teacher is tiny (2 blocks, 192 wide, 224 x 224), so its row is dominated by per-call "
        "overheads that batching removes; with ViT-L at 448 x 448 the forward dominates and batching "
        "gains less, while the reference's full upsampled map (second row) costs more."
    )
    return section
