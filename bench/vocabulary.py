"""Benchmark 3: relabelling the evaluation split after a vocabulary change.

After one class's prompt changes, DVC reruns that class's prototypes, `template_features` (every
class's templates), `label` and `evaluate`; the cached point features are read again, never
recomputed. The IGLOSS reference caches no point features, so it must rerun the 3D student over
the whole split. Both then classify every point with the refitted classifier.

Measured on the demo world with the demo student of params.yaml (random weights: the time does
not depend on them), on the device the bench runs on:

* ours: for every scan, read its fp16 features from the store the real `point_features` stage
  wrote (the stage is run once, untimed, to make it) and label them;
* baseline: for every scan, read it, pre-process it, run the student (`config.prepare`,
  `run_batch`: what `point_features` runs) and label its features;
* shared by both, timed apart: regenerating the changed class's prototypes, encoding every
  class's prototypes and refitting the classifier.

Agreement: the labels of every point must be identical. The cache holds fp16 features, so the
baseline's features are rounded to fp16 before labelling (the check then tests the cache path
itself: a stale, shuffled or truncated cache fails it); how many labels fp16 rounding itself
changes is reported apart.

Extrapolation to nuScenes val (6019 scans of about 34,700 points): ours scales with the cost
per point of reading and labelling 1024-d features (measured here on synthetic features of that
width), the baseline with the release student's forward (benchmark 2) and the pre-processing.

Relabelling at nuScenes width (a second row, measured with or without benchmark 2): two
synthetic scans of 34,720 random-normal 1024-d fp16 features in a ragged store, 16 classes of a
random linear classifier. Before: each scan read through zarr and labelled from float64 logits
(`predict_float64`). Now: the shards decoded straight into the array (`RaggedReader`) and
labelled in float32 with a float64 re-check of the rows near a tie (`predict`). Beside them,
decode only: the same reads without labelling, the floor of any relabelling of those bytes.
Agreement: the share of points whose label both give (>= 99.99% asked; the float32 path is
exact by construction up to ties within float64 rounding).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bench.common import (
    REPO,
    Check,
    Fact,
    Row,
    Section,
    Target,
    bench_params_data,
    inside,
    measure,
    profile_top,
    write_params,
)
from pipeline.labelling.classifier import LinearClassifier, fit_classifier, float32_margin, prompt_to_eval_label
from pipeline.config import Params, parse_params
from stages.common import project_stage_sections
from pipeline.datasets import open_reader
from pipeline.datasets.base import ScanReader
from pipeline.store.ragged import RaggedReader, RaggedWriter
from pipeline.students.io import load_student, save_student
from pipeline.students.waffleiron import WaffleIronConfig, prepare_scan
from pipeline.teachers import Teacher, build_teacher

NUSCENES_VAL_SCANS = 6019
NUSCENES_POINTS_PER_SCAN = 34_720  # 32-beam lidar keyframes, mean
RELEASE_FEATURES = 1024
NUSCENES_CLASSES = 16


@dataclass(frozen=True)
class RelabelSetup:
    """Everything both paths need, made once (untimed)."""

    params: Params
    store: RaggedReader
    reader: ScanReader  # of the evaluation split
    model: torch.nn.Module
    teacher: Teacher
    images: dict[str, list]  # class -> prototype images (PIL)
    to_eval: np.ndarray
    device: torch.device


def prototype_images(params, class_name: str) -> list:
    """The class's prototypes, made as the prototypes stage makes them."""
    from pipeline.generation.prototype_sets import make_prototype_images

    made, _ = make_prototype_images(params.prototypes, class_name, params.vocabulary[class_name].prompts)
    return [image for image, _ in made]


def refit(setup: RelabelSetup, params, changed: str):
    """The shared work after `changed`'s prompt changed: its prototypes, every class's templates, the fit."""
    images = dict(setup.images)
    images[changed] = prototype_images(params, changed)
    features, labels = [], []
    for index, class_name in enumerate(params.class_names):
        features.append(setup.teacher.encode_templates(images[class_name], params.template_features.batch_size))
        labels.append(np.full(len(images[class_name]), index, dtype=np.int64))
    return fit_classifier(params.label.method, np.concatenate(features), np.concatenate(labels),
                          len(params.class_names))


def labels_from_cache(setup: RelabelSetup, classifier) -> list[np.ndarray]:
    """Ours: every scan's labels from its cached features."""
    return [setup.to_eval[classifier.predict(setup.store.read(scan_id, ["feature"])["feature"])]
            for scan_id in setup.store.scan_ids]


def student_features(setup: RelabelSetup, scan_id: str) -> torch.Tensor:
    """(N, D) float32 features of every original point, computed by the student."""
    record = setup.reader.read(scan_id)
    scan = setup.model.config.prepare(record.points, setup.params.dataset.intensity_stats())
    with torch.inference_mode():
        output = setup.model.run_batch([scan], setup.device)[0]
        return output[torch.from_numpy(scan.back_projection).to(setup.device)].float().cpu()


def labels_from_student(setup: RelabelSetup, classifier) -> list[np.ndarray]:
    """The baseline: rerun the student over the split, then label (features rounded to fp16 as cached)."""
    return [setup.to_eval[classifier.predict(student_features(setup, scan_id).half().numpy())]
            for scan_id in setup.store.scan_ids]


def compare_labels(ours: list[np.ndarray], baseline: list[np.ndarray]) -> Check:
    """Every point of every scan must get the same label."""
    if len(ours) != len(baseline):
        return Check("identical labels", False, f"{len(ours)} scans vs {len(baseline)}")
    differing = points = 0
    for a, b in zip(ours, baseline):
        if a.shape != b.shape:
            return Check("identical labels", False, f"a scan has {a.shape} labels against {b.shape}")
        differing += int((a != b).sum())
        points += len(a)
    return Check("identical labels", differing == 0, f"{len(ours)} scans, {points} points, {differing} labels differ")


def prepare(world: Path, scratch: Path, device: torch.device, classes: int | None,
            images_per_class: int | None) -> tuple[RelabelSetup, dict]:
    """Run the real point_features stage once to make the cache; build the rest.

    classes, images_per_class: shrink the vocabulary for quick runs (None: as params.yaml says).
    """
    data = bench_params_data(world, classes, images_per_class)
    params_file = write_params(scratch, data)
    params = parse_params(data, f"{params_file}:", project_stage_sections(REPO / "params.yaml"))
    torch.manual_seed(0)
    save_student(scratch / "cache" / "student", params.student.config.build(), {"teacher": "bench"})
    with inside(scratch):  # the stage as dvc runs it (bench/ imports no stage module)
        python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        subprocess.run([sys.executable, "-m", "stages.point_features", "--params", str(params_file)],
                       env={**os.environ, "PYTHONPATH": python_path}, check=True)
    # The baseline reruns the student as the stage runs it (folded, in point_features.precision).
    model = load_student(scratch / "cache" / "student", device)[0].for_inference(params.point_features.precision)
    split = params.dataset.eval_split
    images = {name: prototype_images(params, name) for name in tqdm(params.class_names, desc="prototypes")}
    setup = RelabelSetup(params, RaggedReader(scratch / "cache" / "point_features" / split),
                         open_reader(params.dataset, split), model, build_teacher(params.teacher), images,
                         prompt_to_eval_label([params.vocabulary[c].label for c in params.class_names],
                                              params.dataset.label_map().classes), device)
    return setup, data


def release_relabel(scratch: Path, runs: int, device: torch.device, points_per_scan: int) -> Row:
    """Read + label 1024-d fp16 features of two synthetic scans, 16 classes: before, now, decode only."""
    rng = np.random.default_rng(0)
    scans = [rng.standard_normal((points_per_scan, RELEASE_FEATURES), dtype=np.float32).astype(np.float16)
             for _ in range(2)]
    paths = {}
    # The code before read a zstd store through zarr; point_features now writes lz4 (its default).
    for compressor in ("zstd", "lz4"):
        paths[compressor] = scratch / f"release_features_{compressor}"
        with RaggedWriter(paths[compressor], {"feature": ("float16", (RELEASE_FEATURES,))},
                          compressor=compressor) as writer:
            for i, features in enumerate(scans):
                writer.append(f"scan-{i}", feature=features)
    # The label stage reads one scan at a time into buffers it reuses (`reuse_buffers`), its chunks
    # decoded on every core (`decode_threads`).
    cores = os.cpu_count() or 1
    through_zarr = RaggedReader(paths["zstd"], direct=False)
    direct = RaggedReader(paths["lz4"], reuse_buffers=True, decode_threads=cores)
    direct_zstd = RaggedReader(paths["zstd"], reuse_buffers=True, decode_threads=cores)
    one_thread = RaggedReader(paths["lz4"], reuse_buffers=True)  # chunks decoded one after another
    fresh_arrays = RaggedReader(paths["lz4"])  # a new array per scan on one thread, as before reuse_buffers
    classifier = LinearClassifier(rng.standard_normal((NUSCENES_CLASSES, RELEASE_FEATURES)),
                                  rng.standard_normal(NUSCENES_CLASSES))

    def before() -> list[np.ndarray]:
        return [classifier.predict_float64(through_zarr.read(s, ["feature"])["feature"]) for s in through_zarr]

    def now() -> list[np.ndarray]:
        return [classifier.predict(direct.read(s, ["feature"])["feature"]) for s in direct]

    def decode_only() -> None:
        for scan_id in direct:
            direct.read(scan_id, ["feature"])

    def decode_one_thread() -> None:
        for scan_id in one_thread:
            one_thread.read(scan_id, ["feature"])

    store_files = sorted(f for f in paths["lz4"].rglob("*") if f.is_file())

    file_buffer = memoryview(bytearray(max(f.stat().st_size for f in store_files)))

    def read_bytes() -> None:  # the store's files read whole into one buffer, no decoding: the disk's part
        for path in store_files:
            with open(path, "rb") as file:
                file.readinto(file_buffer)

    def decode_fresh() -> None:
        for scan_id in fresh_arrays:
            fresh_arrays.read(scan_id, ["feature"])

    def decode_zstd() -> None:
        for scan_id in direct_zstd:
            direct_zstd.read(scan_id, ["feature"])

    def before_one_thread() -> None:  # the code before with BLAS limited to one thread, as `predict` runs
        with threadpool_limits(limits=1, user_api="blas"):
            before()

    # Each path is timed in runs of its own, as the label stage runs one of them scan after scan: the
    # float64 path's temporaries (~8 KB per point) evict the caches and return pages that whatever
    # runs next faults in again, which adds ~0.5 us per point to the path timed right after it.
    old, old_one_thread = measure([before, before_one_thread], runs, device)
    new, decode, zstd_decode, fresh_decode, one_thread_decode, raw_read = measure(
        [now, decode_only, decode_zstd, decode_fresh, decode_one_thread, read_bytes], runs, device)
    (interleaved_old, interleaved_new) = measure([before, now], runs, device)
    sizes = {name: sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) for name, path in paths.items()}
    old_labels, new_labels = np.concatenate(before()), np.concatenate(now())
    points = direct.num_rows
    differing = int((old_labels != new_labels).sum())
    agreeing = 1 - differing / points
    logits = np.concatenate([classifier.logits(direct.read(s, ["feature"])["feature"]) for s in direct])
    top2 = np.sort(logits, axis=1)[:, -2:]
    near_tie = float(np.mean(top2[:, 1] - top2[:, 0] <= float32_margin(classifier.weight.T, classifier.bias)))
    per_point = {name: timing.median / points * 1e6
                 for name, timing in (("old", old), ("new", new), ("decode", decode), ("decode zstd", zstd_decode),
                                      ("decode fresh", fresh_decode), ("decode one thread", one_thread_decode),
                                      ("read bytes", raw_read))}
    print(f"[bench] relabel at nuScenes width (1024-d fp16, {NUSCENES_CLASSES} classes, {points} points), per point: "
          f"old {per_point['old']:.2f} us, new {per_point['new']:.2f} us, decode only {per_point['decode']:.2f} us "
          f"(on one thread {per_point['decode one thread']:.2f} us, into new arrays {per_point['decode fresh']:.2f} us, "
          f"zstd store {per_point['decode zstd']:.2f} us), reading the store's bytes {per_point['read bytes']:.2f} us; "
          f"store bytes lz4 / zstd {sizes['lz4'] / sizes['zstd']:.3f}; "
          f"ratio {per_point['old'] / per_point['new']:.2f}x (cpu {old.cpu_median / new.cpu_median:.2f}x; "
          f"{old_one_thread.median / new.median:.2f}x against the old path with BLAS on one thread; "
          f"{interleaved_old.median / interleaved_new.median:.2f}x with each run right after the other's); "
          f"labels agreeing {agreeing:.6%} ({differing} of {points} differ)", flush=True)
    return Row(
        case=f"nuScenes width: 2 synthetic scans x {points_per_scan} points, 1024-d fp16, {NUSCENES_CLASSES} classes",
        ours_name="lz4 store (point_features' default), chunks decoded on every core into reused buffers + float32 logits, "
                  "float64 re-check near ties (predict)",
        ours=new.scaled(1.0, work=points, unit="point"),
        baseline_name="zstd store read through zarr + float64 logits (predict_float64, the code before)",
        baseline=old.scaled(1.0, work=points, unit="point"),
        target=Target(">= 5x per point", min_ratio=5.0),
        checks=[Check("labels agree on >= 99.99% of points", agreeing >= 0.9999,
                      f"{differing} of {points} labels differ (float32 path against float64 logits)")],
        facts=[
            Fact("before, per point", per_point["old"] * 1e-6, "s"),
            Fact("before with BLAS on one thread, per point", old_one_thread.median / points, "s"),
            Fact("now, per point", per_point["new"] * 1e-6, "s"),
            Fact("before / now, each run right after the other's (ABAB: now pays the caches and pages the "
                 "float64 path left it)", interleaved_old.median / interleaved_new.median, "x"),
            Fact("decode only (the same reads, no labelling), per point", per_point["decode"] * 1e-6, "s"),
            Fact("now / decode only", per_point["new"] / per_point["decode"], "x"),
            Fact("reading the lz4 store's files whole into a reused buffer, no decoding (from the page cache), "
                 "per point",
                 per_point["read bytes"] * 1e-6, "s"),
            Fact("now / reading the bytes", per_point["new"] / per_point["read bytes"], "x"),
            Fact("decode only, chunks one after another (decode_threads=1), per point",
                 per_point["decode one thread"] * 1e-6, "s"),
            Fact("decode only, into a new array per scan (no reused buffers), per point",
                 per_point["decode fresh"] * 1e-6, "s"),
            Fact("decode only, the same features in a zstd store, per point", per_point["decode zstd"] * 1e-6, "s"),
            Fact("store bytes, lz4 / zstd (random fp16 features: real ones compress more under zstd)",
                 sizes["lz4"] / sizes["zstd"], "x"),
            Fact("labels agreeing with the float64 logits", agreeing, "fraction"),
            Fact("points within the float32 error bound of a tie (re-checked in float64)", near_tie, "fraction"),
        ],
    )


def run(world: Path, scratch: Path, device: torch.device, runs: int, student_seconds_per_point: float | None,
        classes: int | None = None, images_per_class: int | None = None,
        release_points: int = NUSCENES_POINTS_PER_SCAN) -> Section:
    """student_seconds_per_point: the release student's forward per voxelised point (benchmark 2),
    for the nuScenes extrapolation; None leaves it out. release_points: points per synthetic scan
    of the nuScenes-width row."""
    section = Section("3. Vocabulary change: relabel the evaluation split")
    scratch.mkdir(parents=True, exist_ok=True)
    release_row = release_relabel(scratch, runs, device, release_points)
    setup, data = prepare(world, scratch, device, classes, images_per_class)
    changed = setup.params.class_names[-1]
    data["vocabulary"][changed]["prompts"] = [f"a photo of a {changed} seen from the street"]
    changed_params = parse_params(data, "bench vocabulary change:", project_stage_sections(REPO / "params.yaml"))
    classifier = refit(setup, changed_params, changed)

    ours_labels = labels_from_cache(setup, classifier)
    float64_changed = sum(int((a != setup.to_eval[classifier.predict_float64(setup.store.read(s, ["feature"])["feature"])])
                              .sum()) for a, s in zip(ours_labels, setup.store.scan_ids))
    features = [student_features(setup, scan_id) for scan_id in setup.store.scan_ids]
    check = compare_labels(ours_labels, [setup.to_eval[classifier.predict(f.half().numpy())] for f in features])
    fp32_changed = sum(int((a != setup.to_eval[classifier.predict(f.numpy())]).sum())
                       for a, f in zip(ours_labels, features))
    del features
    points = sum(len(labels) for labels in ours_labels)
    scans = len(setup.store)

    baseline, ours = measure([lambda: labels_from_student(setup, classifier), lambda: labels_from_cache(setup, classifier)],
                             runs, device, work=scans, unit="scan")
    # The shared part re-encodes every template: minutes at 5 runs on 2 cores, and it is context, not
    # the compared figure, so it is timed once.
    (shared,) = measure([lambda: refit(setup, changed_params, changed)], 1, device)
    end_to_end = (shared.median + baseline.median) / (shared.median + ours.median)
    facts = [
        Fact(f"shared part, one run (prototypes of {changed!r}, every template, refit)", shared.median, "s"),
        Fact("end to end (shared part included), baseline / ours", end_to_end, "x"),
        Fact("labels fp16 caching changes against fp32 features", fp32_changed / max(points, 1), "fraction"),
        Fact("labels the float32 path (predict) changes against float64 logits", float64_changed / max(points, 1),
             "fraction"),
    ]
    ours_per_point = ours.median / points
    release = release_row.ours.median / release_row.ours.work
    if student_seconds_per_point is None:
        section.notes.append("No nuScenes extrapolation: it needs benchmark 2 at width 768 in the same run.")
    else:
        prepare_per_point = measure_prepare_per_point(setup, runs)
        ours_hours = NUSCENES_VAL_SCANS * NUSCENES_POINTS_PER_SCAN * release / 3600
        kept = kept_fraction(setup)
        student_hours = NUSCENES_VAL_SCANS * NUSCENES_POINTS_PER_SCAN * (
            prepare_per_point + kept * student_seconds_per_point) / 3600
        facts += [
            Fact("ours at nuScenes width (1024-d, 16 classes), per point", release, "s"),
            Fact("nuScenes val, ours (extrapolated)", ours_hours, "h"),
            Fact("nuScenes val, rerunning the release student (extrapolated)", student_hours, "h"),
            Fact("nuScenes val, ratio (extrapolated)", student_hours / ours_hours, "x"),
        ]
        section.notes.append(
            f"nuScenes val extrapolation: {NUSCENES_VAL_SCANS} scans x {NUSCENES_POINTS_PER_SCAN} points. Ours: "
            f"{release:.3g} s per point (read + label 1024-d fp16 features, 16 classes, measured here) = "
            f"{ours_hours:.3g} h. Baseline: per point {prepare_per_point:.3g} s of pre-processing (measured on the "
            f"demo) plus {kept:.2f} kept points per point (the demo's voxelisation ratio) x "
            f"{student_seconds_per_point:.3g} s per kept point of the depth-48 width-768 forward of the pipeline "
            f"module (benchmark 2) = {student_hours:.3g} h, on this device."
        )
    section.rows.append(Row(
        case=f"demo val: {scans} scans, {points} points, demo student, change of {changed!r}'s prompt",
        ours_name="read cached fp16 features + label",
        ours=ours,
        baseline_name="rerun the student (read, pre-process, forward) + label",
        baseline=baseline,
        target=Target(">= 20x on the demo world (relabel part)", min_ratio=20.0),
        checks=[check],
        facts=[Fact("ours, per point", ours_per_point, "s")] + facts,
    ))
    section.rows.append(release_row)
    section.notes.append(f"Profile of ours (one relabel of the split): {profile_top(lambda: labels_from_cache(setup, classifier))}.")
    section.notes.append(
        "The ratio is of the relabel part, after the classifier is refitted; the shared part (the same "
        "for both) is timed apart and the end-to-end ratio given with it. The prototypes of the other "
        "classes are held in memory instead of read back from PNG files."
    )
    return section


def measure_prepare_per_point(setup: RelabelSetup, runs: int) -> float:
    """Seconds per original point of reading and pre-processing the split's scans for the release student."""
    release, stats = WaffleIronConfig(), setup.params.dataset.intensity_stats()

    def prepare_all() -> None:
        for scan_id in setup.store.scan_ids:
            prepare_scan(setup.reader.read(scan_id).points, release, stats)

    points = sum(setup.store.scan_rows(scan_id) for scan_id in setup.store.scan_ids)
    (timing,) = measure([prepare_all], runs, torch.device("cpu"))
    return timing.median / points


def kept_fraction(setup: RelabelSetup) -> float:
    """Points the release student sees per original point (voxelisation and crop), over the split."""
    release, stats = WaffleIronConfig(), setup.params.dataset.intensity_stats()
    kept = total = 0
    for scan_id in setup.store.scan_ids:
        points = setup.reader.read(scan_id).points
        kept += prepare_scan(points, release, stats).num_points
        total += len(points)
    return kept / total
