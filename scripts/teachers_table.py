"""The several-teachers table (README, "Several teachers"): every fusion option on one finished run.

    python -m stages.preset two-teachers && dvc repro    # the demo with a second teacher
    python scripts/teachers_table.py                      # then this: a markdown table on stdout

In a workspace where `dvc repro` has run with two or more teachers, it labels and evaluates the
evaluation split once per `label.fusion` option (each teacher alone, average, capability) and
once more with capability fusion and the first two teachers' capability vectors swapped
(`label.swap_capability`, the sabotage), then the first teacher alone and capability fusion with
region pooling (`label.regions.method: ground_components`; the 2D baseline is not pooled), running `python -m stages.label` and `python -m stages.evaluate`
with a params file in tmp/ for each. Prints, per row, the mIoU of the 3D labels, of
the 3D labels of the points a camera sees, and of the 2D baseline, and each teacher's mean
held-out capability (metrics/capability.json). Leaves params.yaml as it was, and relabels with
it at the end, so `dvc status` is clean again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

PARAMS = Path("params.yaml")
OPTION_PARAMS = Path("tmp/teachers_table.params.yaml")  # git-ignored; removed at the end
CAPABILITY = Path("metrics/capability.json")
METRICS = Path("metrics/metrics.json")


def label_and_evaluate(params_file: Path) -> dict[str, float]:
    for stage in ("label", "evaluate"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}", "--params", str(params_file)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads(METRICS.read_text())
    return {name: result["miou"] for name, result in metrics.items() if isinstance(result, dict) and "miou" in result}


def main() -> None:
    params = yaml.safe_load(PARAMS.read_text())
    teachers = ["teacher", *(params.get("extra_teachers") or {})]
    if len(teachers) < 2:
        raise SystemExit("params.yaml has one teacher: switch to the two-teacher demo first "
                         "(`python -m stages.preset two-teachers && dvc repro`)")
    report = json.loads(CAPABILITY.read_text())
    rows = []
    try:
        regions = dict(params["label"].get("regions") or {})
        for option in [*teachers, "average", "capability", "swapped", "teacher+regions", "capability+regions"]:
            fusion = option.removesuffix("+regions")
            params["label"]["fusion"] = "capability" if option == "swapped" else fusion
            params["label"]["swap_capability"] = option == "swapped"
            params["label"]["regions"] = {**regions, "method": "ground_components"} if "+" in option else regions
            OPTION_PARAMS.parent.mkdir(exist_ok=True)
            OPTION_PARAMS.write_text(yaml.safe_dump(params, sort_keys=False))
            name = {"swapped": "capability, capability vectors swapped (sabotage)",
                    "capability": "capability-weighted fusion (SAS)", "average": "plain average",
                    "teacher+regions": "teacher alone + region pooling (ground_components)",
                    "capability+regions": "capability fusion + region pooling"}.get(option, f"{option} alone")
            rows.append((name, label_and_evaluate(OPTION_PARAMS)))
            print(f"{name}: {rows[-1][1]}", file=sys.stderr)
    finally:
        OPTION_PARAMS.unlink(missing_ok=True)
        label_and_evaluate(PARAMS)  # the workspace's own labels again
    print("| labels | 3D mIoU | 3D mIoU (points a camera sees) | 2D baseline mIoU |")
    print("| --- | --- | --- | --- |")
    for name, miou in rows:
        print(f"| {name} | {miou['3d']:.3f} | {miou['3d_visible']:.3f} | {miou['2d_baseline']:.3f} |")
    print()
    for entry in report["teachers"].values():
        print(f"- capability of {entry.get('name', 'teacher')}: held-out accuracy {entry['accuracy']:.3f}, "
              f"mean over classes {entry['mean_class_accuracy']:.3f}")


if __name__ == "__main__":
    main()
