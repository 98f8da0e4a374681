"""Pictures a person looks at to check the data and the results.

Colours: one fixed colour per evaluation class (matplotlib's tab20), grey for ignored points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from PIL import Image

from pipeline.datasets.base import IGNORE_LABEL, ScanRecord
from pipeline.geometry import project_to_cameras

IGNORED_COLOUR = (0.6, 0.6, 0.6, 1.0)


def class_colours(labels: np.ndarray) -> np.ndarray:
    """RGBA colour per label; IGNORE_LABEL is grey."""
    palette = plt.get_cmap("tab20")
    colours = palette(np.asarray(labels) % 20)
    colours[np.asarray(labels) == IGNORE_LABEL] = IGNORED_COLOUR
    return colours


def legend_handles(labels: np.ndarray, class_names: Sequence[str]) -> list[Patch]:
    present = [int(c) for c in np.unique(labels) if c != IGNORE_LABEL]
    return [Patch(color=class_colours(np.array([c]))[0], label=class_names[c]) for c in present]


def draw_bev(ax, xyz: np.ndarray, labels: np.ndarray, extent: float = 50.0, title: str = "") -> None:
    """Bird's-eye view of a scan (lidar frame, x to the right of the page)."""
    ax.scatter(xyz[:, 0], xyz[:, 1], c=class_colours(labels), s=0.3, linewidths=0)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def draw_camera_overlay(ax, record: ScanRecord, labels: np.ndarray, camera_index: int = 0) -> None:
    """Points of the scan projected into one camera, coloured by label, over the image."""
    camera = record.cameras[camera_index]
    pairs = project_to_cameras(record.points[:, :3], [camera])
    with Image.open(camera.image_path) as image:
        ax.imshow(np.asarray(image.convert("RGB")))
    ax.scatter(pairs.pixel[:, 0], pairs.pixel[:, 1], c=class_colours(labels[pairs.point_index]),
               s=1.0, linewidths=0)
    ax.set_xlim(0, camera.width)
    ax.set_ylim(camera.height, 0)
    ax.set_title(f"{camera.name}: {len(pairs)} points", fontsize=9)
    ax.axis("off")


def save_scan_preview(record: ScanRecord, class_names: Sequence[str], out_path: Path, title: str = "") -> Path:
    """One PNG: every camera with its points coloured by class, and the bird's-eye view."""
    labels = record.labels if record.labels is not None else np.full(len(record.points), IGNORE_LABEL)
    n_cams = max(1, len(record.cameras))
    columns = min(3, n_cams)
    camera_rows = int(np.ceil(n_cams / columns)) if record.cameras else 0
    fig = plt.figure(figsize=(5 * columns + 5, 3 * max(camera_rows, 2)))
    grid = fig.add_gridspec(max(camera_rows, 2), columns + 1)
    for i in range(len(record.cameras)):
        draw_camera_overlay(fig.add_subplot(grid[i // columns, i % columns]), record, labels, i)
    draw_bev(fig.add_subplot(grid[:, columns]), record.points, labels, title="bird's-eye view")
    fig.legend(handles=legend_handles(labels, class_names), loc="lower center", ncol=8, fontsize=8)
    fig.suptitle(title or f"scan {record.scan_id}", fontsize=10)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path
