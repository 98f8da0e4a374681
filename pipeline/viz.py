"""Pictures a person looks at to check the data and the results.

Colours: one fixed, saturated colour per evaluation class index, grey for ignored points.
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

from pipeline.datasets.base import IGNORE_LABEL, CameraView, ScanRecord
from pipeline.geometry import project_to_cameras

IGNORED_COLOUR = (0.6, 0.6, 0.6, 1.0)
# 20 well-separated saturated colours (index = evaluation class), readable over photos.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (128, 0, 0), (0, 128, 128), (170, 110, 40),
    (255, 250, 200), (128, 128, 0), (0, 0, 128), (0, 255, 0), (255, 0, 0), (0, 0, 0),
    (255, 215, 180), (170, 255, 195),
]) / 255.0


def class_colours(labels: np.ndarray) -> np.ndarray:
    """RGBA colour per label; IGNORE_LABEL is grey."""
    labels = np.asarray(labels)
    colours = np.ones((len(labels), 4))
    colours[:, :3] = PALETTE[labels % len(PALETTE)]
    colours[labels == IGNORE_LABEL] = IGNORED_COLOUR
    return colours


def legend_handles(labels: np.ndarray, class_names: Sequence[str]) -> list[Patch]:
    present = [int(c) for c in np.unique(labels) if c != IGNORE_LABEL]
    return [Patch(color=class_colours(np.array([c]))[0], label=class_names[c]) for c in present]


def draw_bev(ax, xyz: np.ndarray, labels: np.ndarray, extent: float = 50.0, title: str = "") -> None:
    """Bird's-eye view of a scan (lidar frame, x to the right of the page)."""
    ax.scatter(xyz[:, 0], xyz[:, 1], c=class_colours(labels), s=0.8, linewidths=0)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def camera_picture(camera: CameraView) -> np.ndarray:
    """A camera's image as (H, W, 3) uint8 array, checked against the size its calibration
    is for (a picture of another size would put every point on the wrong pixel)."""
    with Image.open(camera.image_path) as image:
        if image.size != (camera.width, camera.height):
            raise ValueError(f"{camera.image_path}: the image is {image.size[0]}x{image.size[1]} pixels but its "
                             f"calibration is for {camera.width}x{camera.height} (width x height), so the picture "
                             "would put the points on the wrong pixels; put back the image of the calibrated size")
        return np.asarray(image.convert("RGB"))


def draw_camera_overlay(ax, record: ScanRecord, labels: np.ndarray, camera_index: int = 0) -> None:
    """Points of the scan projected into one camera, coloured by label, over the image."""
    camera = record.cameras[camera_index]
    pairs = project_to_cameras(record.points[:, :3], [camera])
    ax.imshow(camera_picture(camera))
    ax.scatter(pairs.pixel[:, 0], pairs.pixel[:, 1], c=class_colours(labels[pairs.point_index]),
               s=2.5, linewidths=0)
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


def save_iou_bars(class_names: Sequence[str], series: dict[str, np.ndarray], out_path: Path, title: str) -> Path:
    """Grouped bars of per-class IoU, one group per class, one bar per result (e.g. 3D, 2D).

    Classes with no value in any result (absent from the truth) are left out.
    """
    shown_classes = [i for i in range(len(class_names))
                     if any(not np.isnan(float(values[i])) for values in series.values())]
    class_names = [class_names[i] for i in shown_classes]
    series = {name: np.asarray(values, dtype=float)[shown_classes] for name, values in series.items()}
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(class_names) + 2), 4.5))
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(class_names))
    for i, (name, values) in enumerate(series.items()):
        shown = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
        ax.bar(positions + (i - (len(series) - 1) / 2) * width, shown, width, label=name)
    ax.set_xticks(positions, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=len(series))
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return Path(out_path)


def save_confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], out_path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction); empty rows stay blank."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(rows > 0, confusion / rows, np.nan)
    fig, ax = plt.subplots(figsize=(0.45 * len(class_names) + 3, 0.45 * len(class_names) + 2))
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return Path(out_path)


def save_prediction_bev(
    xyz: np.ndarray, prediction: np.ndarray, truth: np.ndarray, class_names: Sequence[str], out_path: Path, title: str
) -> Path:
    """Bird's-eye views side by side: truth, prediction, and the errors in red."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    draw_bev(axes[0], xyz, truth, title="ground truth")
    draw_bev(axes[1], xyz, prediction, title="prediction")
    evaluated = truth != IGNORE_LABEL
    wrong = evaluated & (prediction != truth)
    axes[2].scatter(xyz[~wrong, 0], xyz[~wrong, 1], c="0.8", s=0.3, linewidths=0)
    axes[2].scatter(xyz[wrong, 0], xyz[wrong, 1], c="red", s=0.6, linewidths=0)
    axes[2].set_xlim(axes[0].get_xlim())
    axes[2].set_ylim(axes[0].get_ylim())
    axes[2].set_aspect("equal")
    share = wrong.sum() / max(evaluated.sum(), 1)
    axes[2].set_title(f"errors in red ({100 * share:.1f}% of labelled points)", fontsize=9)
    fig.legend(handles=legend_handles(np.concatenate([truth, prediction]), class_names),
               loc="lower center", ncol=8, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return Path(out_path)


def save_contact_sheet(images_by_class: dict[str, list[Image.Image]], out_path: Path, thumb: int = 96,
                       per_row: int = 8) -> Path:
    """One row per class: its name, then up to `per_row` prototype thumbnails."""
    rows = len(images_by_class)
    fig, axes = plt.subplots(rows, per_row + 1, figsize=(1.1 * (per_row + 1), 1.1 * rows), squeeze=False)
    for row, (name, images) in enumerate(images_by_class.items()):
        axes[row, 0].text(1.0, 0.5, name, ha="right", va="center", fontsize=8)
        for col in range(per_row + 1):
            axes[row, col].axis("off")
        for col, image in enumerate(images[:per_row], start=1):
            axes[row, col].imshow(np.asarray(image.convert("RGB").resize((thumb, thumb))))
    fig.suptitle("prototype images per class", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return Path(out_path)


def save_loss_curve(steps: Sequence[int], losses: Sequence[float], learning_rates: Sequence[float],
                    out_path: Path, title: str = "distillation", ylabel: str = "loss (normalised L2)") -> Path:
    """The distillation loss per optimiser step (log scale) with the learning rate beneath it.

    A picture of the same numbers as the loss csv, so the curve shows in `dvc plots show`
    without the vega scripts its csv charts load from the internet.
    """
    fig, (loss_ax, lr_ax) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, height_ratios=(3, 1),
                                         layout="constrained")
    loss_ax.plot(steps, losses, linewidth=0.8, color="tab:blue")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel(ylabel)
    loss_ax.set_title(f"{title}: {len(steps)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}", fontsize=10)
    loss_ax.grid(True, which="both", alpha=0.3)
    lr_ax.plot(steps, learning_rates, linewidth=0.8, color="tab:orange")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.grid(True, alpha=0.3)
    fig.savefig(out_path, dpi=90, format="png")
    plt.close(fig)
    return Path(out_path)

# Query pictures (stages/query.py): a fixed size, so the file is always QUERY_FIGURE_INCHES x QUERY_DPI pixels.
QUERY_FIGURE_INCHES = (16, 8)
QUERY_DPI = 80
UNMATCHED_COLOUR = (0.75, 0.75, 0.75, 1.0)


def _name_colour(index: int) -> tuple:
    return (*PALETTE[index % len(PALETTE)], 1.0)


def draw_matches_bev(ax, xyz: np.ndarray, match: np.ndarray, names: Sequence[str], extent: float = 50.0) -> None:
    """Bird's-eye view: every point light grey, matched points (match >= 0) larger in their name's colour."""
    ax.scatter(xyz[:, 0], xyz[:, 1], color=UNMATCHED_COLOUR, s=0.5, linewidths=0)
    for index, name in enumerate(names):
        hit = match == index
        ax.scatter(xyz[hit, 0], xyz[hit, 1], color=_name_colour(index), s=3.0, linewidths=0,
                   label=f"{name} ({int(hit.sum())} points)")
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_title("bird's-eye view (lidar frame, metres)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(loc="upper right", fontsize=8, markerscale=4)


def best_camera(record: ScanRecord, match: np.ndarray) -> int:
    """The index of the camera that sees the most matched points (0 when none sees any)."""
    pairs = project_to_cameras(record.points[:, :3], record.cameras)
    matched = match[pairs.point_index] >= 0
    return int(np.bincount(pairs.camera_index[matched], minlength=len(record.cameras)).argmax())


def draw_matches_camera(ax, record: ScanRecord, match: np.ndarray, names: Sequence[str], camera_index: int) -> None:
    """One camera image with the scan's points projected: faint grey, matched ones in their name's colour."""
    camera = record.cameras[camera_index]
    pairs = project_to_cameras(record.points[:, :3], [camera])
    ax.imshow(camera_picture(camera))
    matched = match[pairs.point_index]
    rest = matched < 0
    ax.scatter(pairs.pixel[rest, 0], pairs.pixel[rest, 1], color=UNMATCHED_COLOUR, s=1.0, alpha=0.3, linewidths=0)
    for index in range(len(names)):
        hit = matched == index
        ax.scatter(pairs.pixel[hit, 0], pairs.pixel[hit, 1], color=_name_colour(index), s=5.0, linewidths=0)
    ax.set_xlim(0, camera.width)
    ax.set_ylim(camera.height, 0)
    ax.set_title(f"camera {camera.name}: {int((~rest).sum())} of {len(pairs)} projected points match", fontsize=9)
    ax.axis("off")


def save_query_picture(record: ScanRecord, match: np.ndarray, names: Sequence[str],
                       prototypes: Sequence[Sequence[Image.Image]], out_path: Path, title: str,
                       per_row: int = 8) -> Path:
    """The picture of a text query on one scan, QUERY_FIGURE_INCHES x QUERY_DPI pixels.

    Left: the bird's-eye view with the matched points of each name in its colour. Right, top:
    the camera that sees the most matches (`best_camera`), points projected. Right, bottom: the
    prototype images each name was matched with (up to `per_row`), framed in its colour.
    """
    fig = plt.figure(figsize=QUERY_FIGURE_INCHES, layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.0, 1.1), height_ratios=(1.6, 1.0))
    draw_matches_bev(fig.add_subplot(grid[:, 0]), record.points, match, names)
    camera_ax = fig.add_subplot(grid[0, 1])
    if record.cameras:
        draw_matches_camera(camera_ax, record, match, names, best_camera(record, match))
    else:
        camera_ax.text(0.5, 0.5, "this scan has no camera", ha="center", va="center")
        camera_ax.axis("off")
    thumbs = grid[1, 1].subgridspec(len(names), per_row + 1)
    for row, (name, images) in enumerate(zip(names, prototypes)):
        label_ax = fig.add_subplot(thumbs[row, 0])
        label_ax.text(1.0, 0.5, name, ha="right", va="center", fontsize=9, color=_name_colour(row))
        label_ax.axis("off")
        for col in range(per_row):
            ax = fig.add_subplot(thumbs[row, col + 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                ax.imshow(np.asarray(images[col].convert("RGB")))
                for spine in ax.spines.values():
                    spine.set_color(_name_colour(row))
                    spine.set_linewidth(2.0)
            else:
                ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(out_path, dpi=QUERY_DPI, format="png")
    plt.close(fig)
    return Path(out_path)
