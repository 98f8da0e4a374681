"""The training data of the distillation: scans and their teacher targets, read from the caches.

* `DistillSample`: one training scan and the teacher targets of its (point, camera) pairs, in
  their compact cached form (which pairs teach in a step: `pipeline.training.recipe`).
* `SourceLoader`: the samples of one distillation source (a split of one dataset), from its
  assignment store and its teacher-feature stores (`patches`, `taps`);
* `OnlinePatches`: with `distill.teacher_source: online`, a sample's patch features computed by
  the teacher on the cameras the requested rows read, instead of read from the store.
* `DistillationSet`: every source as one training set, what the loop (`pipeline.training.loop`)
  draws from.
* `run_fingerprint`: what makes two distillation runs one run, hashed, so a checkpoint of
  another run is never resumed.

Nothing here knows where the caches live: the stage passes each source's folders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.assignments import combine_taps
from pipeline.datasets.base import ScanReader
from pipeline.store.ragged import RaggedReader
from pipeline.students import StudentConfig
from pipeline.datasets.base import IntensityStats
from pipeline.teachers.base import Teacher
from pipeline.teachers.encoding import scan_patch_features
from pipeline.teachers.patch_encoding import patch_feature_dim, read_patch_features, require_patch_features
from pipeline.training.config import DistillConfig


@dataclass(frozen=True)
class StoredPatches:
    """One scan's patch features as the `patches` store keeps them (`distill.teacher_source: store`)."""

    features: torch.Tensor  # (U, D)

    def covering(self, tap: torch.Tensor) -> torch.Tensor:
        """(U, D) features: every row `tap` may read is already there."""
        return self.features


class OnlinePatches:
    """One scan's patch features from the teacher itself (`distill.teacher_source: online`):
    the rows of the `patches` store, filled camera by camera when a step first asks for a row of
    that camera, each camera encoded once per sample (with ScaLR+'s per_scan_epoch, one camera per
    scan and step). Rounded to fp16, as an fp16 store keeps them, so the targets are the store's
    (bit for bit where the teacher's forward does not depend on its batch). Runs outside any
    autocast of the training step: the teacher's own `precision` applies, as in teacher_features.

    teacher: the first teacher (`teacher:`); cameras: the scan's (`ScanRecord.cameras`);
    patch_id: the store's flat patch ids of the scan (camera * h * w + patch).
    """

    def __init__(self, teacher: Teacher, cameras: Sequence, patch_id: np.ndarray) -> None:
        self.teacher = teacher
        self.cameras = cameras
        self.patch_id = patch_id.astype(np.int64)
        self.camera = self.patch_id // (teacher.grid_size[0] * teacher.grid_size[1])
        self.features = torch.zeros(len(patch_id), teacher.embed_dim, dtype=torch.float16)
        self.encoded = np.zeros(0, dtype=np.int64)  # the cameras whose rows are filled
        self.images = 0  # teacher forwards run, one per image

    def covering(self, tap: torch.Tensor) -> torch.Tensor:
        """(U, D) float16 features whose rows `tap` reads are the teacher's (the others may be zeros)."""
        wanted = np.unique(self.camera[np.unique(tap.numpy())])
        new = np.setdiff1d(wanted, self.encoded)
        if len(new):
            rows = np.flatnonzero(np.isin(self.camera, new))
            with ExitStack() as stack:  # the training step's autocast must not reach the teacher
                for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
                features = scan_patch_features(self.teacher, self.cameras, self.patch_id[rows], len(new))
            self.features[torch.from_numpy(rows)] = features.half()
            self.encoded = np.union1d(self.encoded, new)
            self.images += len(new)
        return self.features


@dataclass(frozen=True)
class DistillSample:
    """One training scan and the teacher targets of its (point, camera) pairs, kept in their
    compact cached form.

    points: float32 (N, 4) x, y, z, intensity.
    intensity_stats: the standardisation of its dataset's intensity (each dataset of a merged
        distillation set has its own).
    point_index, camera: int64 (A,) the point and camera of each assignment row (every pair
        that passes the visibility rules, sorted by point then camera).
    patch_features: the (U, D) teacher features of the patches the assignments read, as the
        store keeps them (`StoredPatches`) or computed by the teacher when a step first needs
        them (`OnlinePatches`, `distill.teacher_source: online`); both give them by `covering`.
    tap, weight: (A, 4) per assignment row, the rows of `patch_features` it combines and their
        weights (`pipeline.assignments.combine_taps`). Targets are only built for the points a
        training step keeps, a few thousand of the scan's tens of thousands.
    extra: the same (patch_features, tap, weight) of each extra teacher (`extra_teachers`), whose
        targets follow the first teacher's in each target row (one head per teacher).
    """

    points: np.ndarray
    intensity_stats: IntensityStats
    point_index: np.ndarray
    camera: np.ndarray
    patch_features: StoredPatches | OnlinePatches
    tap: torch.Tensor
    weight: torch.Tensor
    extra: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] = ()

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), D) float32 teacher features of the given assignment rows; with extra
        teachers, every teacher's features side by side (D the sum of their widths)."""
        index = torch.from_numpy(rows)
        first = combine_taps(self.patch_features.covering(self.tap[index]), self.tap[index], self.weight[index])
        if not self.extra:
            return first
        return torch.cat([first, *(combine_taps(features, tap[index], weight[index])
                                   for features, tap, weight in self.extra)], dim=1)


class SourceLoader:
    """Loads training scans of one distillation source: points, and the teacher target of each
    (point, camera) pair.

    key: the source's name in the set (scan ids there are `<key>/<scan id>`).
    reader: the dataset reader of the source's split; intensity_stats: its dataset's.
    assignments: its assignment store; teacher_features: the folder of its teacher-feature
        stores, `patches` and `taps`; extra_teacher_features: the same folder of each extra
        teacher, in teacher order.
    online_teacher: the first teacher, to compute the patch features inside the steps
        (`distill.teacher_source: online`; its store then needs only the patch ids); None: read
        them from the store, which must hold them.
    """

    def __init__(self, key: str, reader: ScanReader, intensity_stats: IntensityStats, assignments: Path,
                 teacher_features: Path, extra_teacher_features: Sequence[Path] = (),
                 online_teacher: Teacher | None = None) -> None:
        self.key = key
        self.reader = reader
        self.intensity_stats = intensity_stats
        self.assignments = RaggedReader(assignments)
        self.patches = RaggedReader(teacher_features / "patches")
        self.taps = RaggedReader(teacher_features / "taps")
        self.extra = [(RaggedReader(folder / "patches"), RaggedReader(folder / "taps"))
                      for folder in extra_teacher_features]
        self.online_teacher = online_teacher
        if online_teacher is None:
            require_patch_features(self.patches)
        else:
            if self.extra:
                raise ValueError("distill.teacher_source: online runs the first teacher only; with "
                                 "extra_teachers set distill.teacher_source: store")
            if online_teacher.teacher_id != self.patches.attributes.get("teacher"):
                raise ValueError(f"{self.patches.path}: made for teacher {self.patches.attributes.get('teacher')!r}, "
                                 f"not the `teacher:` of params.yaml ({online_teacher.teacher_id!r}); "
                                 "rerun `dvc repro teacher_features`")
        for patches, _ in self.extra:
            require_patch_features(patches)
        self.dims = tuple(patch_feature_dim(patches) for patches in [self.patches, *(p for p, _ in self.extra)])
        self.dim = sum(self.dims)

    def __call__(self, scan_id: str) -> DistillSample:
        record = self.reader.read(scan_id)
        rows = self.assignments.read(scan_id, ["point_index", "camera"])
        taps = self.taps.read(scan_id)
        if self.online_teacher is None:
            patch_features = StoredPatches(torch.from_numpy(read_patch_features(self.patches, scan_id)))
        else:
            patch_features = OnlinePatches(self.online_teacher, record.cameras,
                                           self.patches.read(scan_id, ["patch_id"])["patch_id"])
        return DistillSample(
            points=record.points,
            intensity_stats=self.intensity_stats,
            point_index=rows["point_index"].astype(np.int64),
            camera=rows["camera"].astype(np.int64),
            patch_features=patch_features,
            tap=torch.from_numpy(taps["tap"]),
            weight=torch.from_numpy(taps["weight"]),
            extra=tuple(self._extra_targets(patches, tap_store, scan_id) for patches, tap_store in self.extra),
        )

    @staticmethod
    def _extra_targets(patches: RaggedReader, taps: RaggedReader, scan_id: str):
        rows = taps.read(scan_id)
        return (torch.from_numpy(read_patch_features(patches, scan_id)), torch.from_numpy(rows["tap"]),
                torch.from_numpy(rows["weight"]))

    def identity(self) -> list:
        """The assignment and teacher feature attributes, scans and row counts of this source."""
        identity = [self.key, self.assignments.attributes, self.assignments.scan_ids,
                    self.assignments.offsets.tolist(), self.patches.attributes, self.patches.offsets.tolist()]
        return identity + [[patches.attributes, patches.offsets.tolist()] for patches, _ in self.extra]


class DistillationSet:
    """The scans of every distillation source as one training set.

    A scan's id here is `<source key>/<scan id>`, so scans of different datasets never clash.
    """

    def __init__(self, loaders: Sequence[SourceLoader]) -> None:
        self.loaders = list(loaders)
        teachers = {loader.key: (loader.patches.attributes.get("teacher", ""),
                                 tuple(p.attributes.get("teacher", "") for p, _ in loader.extra), loader.dims)
                    for loader in self.loaders}
        if len(set(teachers.values())) > 1:
            stores = ", ".join(str(loader.patches.path) for loader in self.loaders)
            raise ValueError(f"{stores}: the distillation sources were encoded by different teachers "
                             f"{teachers}; rerun `dvc repro teacher_features extra_teacher_features`")
        self.teacher, self.extra_teachers, self.dims = next(iter(teachers.values()))
        self.dim = sum(self.dims)
        self._scans = {f"{loader.key}/{scan_id}": (loader, scan_id)
                       for loader in self.loaders for scan_id in loader.assignments.scan_ids}
        self.scan_ids = tuple(self._scans)

    def __call__(self, scan_id: str) -> DistillSample:
        loader, source_scan_id = self._scans[scan_id]
        return loader(source_scan_id)


def run_fingerprint(config: DistillConfig, data: DistillationSet, *, student: StudentConfig, dataset: Any,
                    distill_datasets: Mapping[str, Any]) -> str:
    """What makes two distill runs one run, hashed: a checkpoint of another run is ignored.

    The params the stage reads (`dataset`, `distill_datasets`: the params sections of those
    names) and the identity of its data: the assignment and teacher feature attributes (the
    teacher id includes a hash of its weights), the scans and their row counts. Left out: what
    does not change the result, so changing it keeps the checkpoint (turning gradient
    checkpointing on after running out of memory, say): how often to checkpoint, gradient
    checkpointing and the number of processes.
    """
    distill = asdict(config)
    for setting in ("checkpoint_every_epochs", "gradient_checkpointing"):
        del distill[setting]
    identity = {
        "dataset": asdict(dataset),
        "distill_datasets": {name: asdict(d) for name, d in distill_datasets.items()},
        "student": asdict(student),
        "distill": distill,
        "sources": [loader.identity() for loader in data.loaders],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
