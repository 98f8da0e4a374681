"""Print the evaluation metrics as a table and name the pictures (not a DVC stage).

    python -m stages.report

After `dvc repro segmenters/dvc.yaml`, the segmenter stages' results follow, side by side with
the zero-shot labels (metrics/<stage>.json).
"""

from __future__ import annotations

import json

from stages.common import METRICS, PLOTS, run_command

RESULT_TITLES = {
    "3d": "3D student, all points",
    "3d_visible": "3D student, visible points",
    "2d_baseline": "2D baseline, visible points",
}


def format_table(metrics: dict) -> str:
    names = [n for n in RESULT_TITLES if n in metrics]
    classes = list(metrics[names[0]]["iou"])
    header = f"{'class':<20}" + "".join(f"{n:>14}" for n in names)
    lines = [header, "-" * len(header)]
    for c in classes:
        cells = [metrics[n]["iou"][c] for n in names]
        if all(v is None for v in cells):
            continue
        lines.append(f"{c:<20}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>14}" for v in cells))
    lines.append("-" * len(header))
    for key in ("miou", "oacc", "macc"):  # null: no point to measure (e.g. a split without labels)
        cells = [metrics[n][key] for n in names]
        lines.append(f"{key:<20}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>14}" for v in cells))
    lines.append("")
    lines += [f"{n:>14}: {title}" for n, title in RESULT_TITLES.items() if n in metrics]
    if metrics.get("notes"):
        lines += ["", f"note: {metrics['notes']}"]
    return "\n".join(lines)


def format_capability(report: dict) -> str:
    """The capability stage's summary (metrics/capability.json): per teacher, the share of
    held-out prototypes recognised and the warning lines."""
    lines = [f"capability ({report['method']}, {report['protocol']}):"]
    for teacher, scores in report["teachers"].items():
        accuracy = "-" if scores["accuracy"] is None else f"{100 * scores['accuracy']:.1f}%"
        lines.append(f"  {teacher}: {accuracy} of held-out prototypes recognised")
        lines += [f"    {line}" for line in scores["warnings"]]
    return "\n".join(lines)


SEGMENTERS = {  # segmenters/dvc.yaml: metrics/<stage>.json, and the seed paper each stage comes from
    "linear_probe": "linear probe (ScaLR / ScaLR+)",
    "finetune": "fine-tuned (ScaLR+, D-DITR)",
    "inject": "teacher injection (DITR)",
    "self_train": "self-trained, no labels (SAS 3.4)",
}


def format_segmenters(results: dict[str, dict]) -> str:
    """The segmenter stages' mIoU on all, visible and invisible points, beside the zero-shot 3D
    labels and the 2D baseline of the same evaluation (rows), with what each was trained on."""
    parts = ("all", "visible", "invisible")
    header = f"{'segmenter (mIoU, %)':<58}" + "".join(f"{p:>11}" for p in parts) + "  trained on"
    first = next(iter(results.values()))
    rows = [("zero-shot 3D (IGLOSS)", [first[f"zero_shot_{p}"]["miou"] for p in parts], "no label"),
            ("2D baseline", [None, first["2d_baseline_visible"]["miou"], None], "no label")]
    for name, result in results.items():
        run = result["run"]
        trained = (f"pseudo-labels of {run['train_scans']} scans" if name == "self_train" else
                   f"labels of {run['train_scans']} scans ({run['fraction']:.0%})")
        title = SEGMENTERS[name] + "".join(f", {run[key]}{suffix}" for key, suffix in (("arch", ""), ("init", " init"))
                                           if key in run)
        rows.append((title, [result[p]["miou"] for p in parts], f"{trained}, {run['steps']} steps, "
                     f"{run['train_seconds']:.0f} s"))
    lines = [header, "-" * len(header)]
    for title, cells, trained in rows:
        lines.append(f"{title:<58}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>11}" for v in cells)
                     + f"  {trained}")
    return "\n".join(lines)


def main() -> None:
    metrics = json.loads((METRICS / "metrics.json").read_text())
    print(format_table(metrics))
    segmenters = {name: json.loads((METRICS / f"{name}.json").read_text())
                  for name in SEGMENTERS if (METRICS / f"{name}.json").is_file()}
    if segmenters:
        print("\n" + format_segmenters(segmenters))
    if (METRICS / "capability.json").is_file():
        print("\n" + format_capability(json.loads((METRICS / "capability.json").read_text())))
    print("\npictures:")
    for path in sorted(PLOTS.rglob("*.png")) + sorted((p for p in ("data/demo/preview_nuscenes.png",
                                                                     "data/demo/preview_semantic_kitti.png"))):
        print(f"  {path}")


if __name__ == "__main__":
    run_command(main)
