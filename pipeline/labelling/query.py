"""Free-text queries over cached point features: prototypes for a name, point scores, matches.

A query names one or more things ("car", "traffic cone"). Each name gets prototype images
from the configured source (procedural, diffusers or an authors' folder, exactly as the
`prototypes` stage makes them), encoded by the teacher into one vector per image
(`Teacher.encode_templates`, as the `template_features` stage does). The student's point
features were distilled to match the teacher's pixel features, so a point and a prototype
compare by cosine similarity, as in `pipeline.labelling.classifier`.

**Cache key.** A name's prototypes and template vectors are a pure function of the name, its
prompts, the source and that source's own settings (the image size for procedural, the
diffusers config but its device and batch size, the bytes of the class's images for a
folder), the number of images, the seed and the teacher (its config but its device, and the
SHA-256 of its weights file).
`query_key` hashes exactly that; a change to anything else (the student, the dataset, another
source's settings) keeps the key, and the key never needs the teacher model to be built.
`PrototypeCache` keeps each name's images and vectors in a folder named by the key's hash.

**Scoring.** A point's similarity to a name is its best cosine over the name's prototypes
(`NearestPrototypeClassifier.logits`). Two scores, chosen by `ScoreMode`:

* `vocabulary` (the default): the margin by which the name's similarity beats every
  competitor: the other query names and the params vocabulary's classes (their template
  vectors), a vocabulary class of the same name left out. A point matches the name it
  scores best on when that margin exceeds the threshold; the natural threshold is 0 ("looks
  more like a car than like anything else we know").
* `absolute`: the raw best cosine, with a threshold the user picks.

Measured on the default demo world (`dvc repro`: 16 val scans, 525,956 points, 8 prototypes per
class, student 3D mIoU 0.90), against the evaluation label each class counts as:

    name        vocabulary > 0   absolute > 0.7   absolute > 0.8   absolute > 0.9   (precision / recall)
    car           0.99 / 0.99      0.17 / 1.00      0.96 / 0.99      0.99 / 0.99
    bus           0.88 / 0.92      0.02 / 0.93      0.80 / 0.92      0.90 / 0.92
    barrier       0.99 / 1.00      0.70 / 1.00      0.80 / 1.00      1.00 / 1.00
    terrain       0.78 / 0.79      0.72 / 0.90      0.76 / 0.83      0.84 / 0.68
    pedestrian    0.99 / 0.83      0.97 / 0.86      0.99 / 0.84      1.00 / 0.80
    pole          0.82 / 0.04      0.93 / 0.97      0.95 / 0.97      0.97 / 0.96   (truth: all of manmade)

The raw cosine of a class's own points and of other points overlap differently per class,
so no one threshold fits every name (0.7 floods car and bus, 0.9 cuts terrain), and it
cannot tell look-alikes apart: "pole" above 0.8 takes 97% of manmade points, buildings
included, where the margin keeps 4% of them (the truth has no pole label to say which are
poles). The margin at 0 needs no tuning. Hence `vocabulary` by default; `absolute` is there
for names far from everything in the vocabulary. (On the small test world, with the teacher's own pixel features
as point features, the margin gives car 0.90 / 0.90 and bus 1.00 / 0.99.)

**Top-k** keeps, per name, the k highest-scoring points among those scoring best on it,
whatever their score.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.generation.image_folder import class_folder, list_class_images
from pipeline.generation.prototype_sets import (
    PrototypesConfig,
    make_prototype_images,
    read_prototype_folder,
    write_prototype_folder,
)
from pipeline.labelling.classifier import NearestPrototypeClassifier, l2_normalize
from pipeline.store.atomic import atomic_output
from pipeline.store.safetensors import load_safetensors, save_safetensors
from pipeline.teachers import Teacher, TeacherConfig, build_teacher, file_sha256

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = ("a photo of a {}",)
KEY_VERSION = 1
UNMATCHED = -1
# Points scored per block: bounds the (block x prototypes) float64 similarity array.
_SCORE_BLOCK = 16384


class QueryError(ValueError):
    """A query cannot run; the message names the file or setting and what to do."""


# --------------------------------------------------------------------------- prototypes


def source_fingerprint(cfg: PrototypesConfig, name: str) -> dict:
    """The settings of the configured source that change the images of `name` (nothing else)."""
    if cfg.source == "procedural":
        return {"image_size": cfg.image_size}
    if cfg.source == "diffusers":
        # Where it runs and how it batches do not change what it draws (up to float rounding).
        return {k: v for k, v in dataclasses.asdict(cfg.diffusers).items() if k not in ("device", "batch_size")}
    # A folder's images are its files: hash their bytes, so replacing an image is a new key.
    digest = hashlib.sha256()
    for path in list_class_images(class_folder(cfg.folder, name)):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return {"folder": str(cfg.folder), "images_sha256": digest.hexdigest()}


def teacher_fingerprint(cfg: TeacherConfig) -> dict:
    """The teacher's config (but its device) and the SHA-256 of its weights file, which may change in place."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "device"}
    if cfg.weights is not None:
        fields["weights_sha256"] = file_sha256(cfg.weights)
    return fields


def query_key(name: str, prompts: Sequence[str], prototypes: PrototypesConfig, teacher: TeacherConfig) -> tuple[str, dict]:
    """(16-hex-digit hash, the JSON-able fields it hashes) of one query name's prototypes and vectors."""
    fields = {
        "version": KEY_VERSION,
        "name": name,
        "prompts": list(prompts),
        "source": prototypes.source,
        "source_config": source_fingerprint(prototypes, name),
        "images_per_class": prototypes.images_per_class,
        "seed": prototypes.seed,
        "teacher": teacher_fingerprint(teacher),
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    # The fields as JSON gives them back (tuples become lists), to compare with a stored key.
    return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)


def check_source_knows(cfg: PrototypesConfig, name: str, params_file: str | Path = "params.yaml") -> None:
    """Fail early, before any model loads, when the procedural source cannot draw `name`."""
    if cfg.source != "procedural":
        return
    from pipeline.demo_world.classes import DEMO_CLASS_NAMES

    if name not in DEMO_CLASS_NAMES:
        raise QueryError(
            f"query {name!r}: prototypes.source is 'procedural', which draws only the demo world's classes "
            f"({', '.join(DEMO_CLASS_NAMES)}). To query other names, pick the diffusers backend: set "
            f"prototypes.source: diffusers in {params_file} (prototypes.diffusers.model: a local diffusers "
            "pipeline folder or hub id), or use prototypes.source: folder with ready-made images."
        )


@dataclass(frozen=True)
class NamePrototypes:
    """One query name's prototype images and their (M, D) teacher vectors."""

    name: str
    folder: Path
    images: list[Image.Image]
    features: np.ndarray
    teacher_id: str
    cached: bool


class PrototypeCache:
    """Query names' prototype images and template vectors, one folder per name and key.

    `<root>/<query_key hash>/` holds the PNGs and manifest.json of `write_prototype_folder` and
    `templates.safetensors` (the vectors; metadata: the key, the name, the teacher id). Asking
    again for a name reuses them without loading the teacher or the generator.
    """

    TEMPLATES_NAME = "templates.safetensors"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read(self, folder: Path, name: str, key: dict) -> NamePrototypes | None:
        """The cached prototypes of `name`, or None when the folder does not hold exactly this key."""
        if not (folder / self.TEMPLATES_NAME).is_file():
            return None
        tensors, metadata = load_safetensors(folder / self.TEMPLATES_NAME)
        if json.loads(metadata.get("key", "null")) != key:
            log.warning("%s: holds another query's prototypes (a hash collision?); making them again", folder)
            return None
        return NamePrototypes(name, folder, read_prototype_folder(folder), tensors["features"],
                              metadata["teacher"], cached=True)

    def load_or_make(self, queries: Sequence[tuple[str, tuple[str, ...]]], prototypes: PrototypesConfig,
                     teacher_config: TeacherConfig, batch_size: int) -> list[NamePrototypes]:
        """Each (name, prompts)'s prototypes from the cache, made (and cached) when absent.

        prototypes: the source that draws them; teacher_config: the teacher that encodes them,
        `batch_size` images at a time (built only when some name is not cached).
        """
        teacher: Teacher | None = None
        found = []
        for name, prompts in tqdm(queries, desc="query prototypes", unit="name", disable=len(queries) < 2):
            key_hash, key = query_key(name, prompts, prototypes, teacher_config)
            folder = self.root / key_hash
            cached = self.read(folder, name, key)
            if cached is not None:
                log.info("%r: prototypes and template vectors from %s", name, folder)
                found.append(cached)
                continue
            log.info("%r: drawing %d %s prototypes (prompts %s)", name, prototypes.images_per_class,
                     prototypes.source, list(prompts))
            images, source = make_prototype_images(prototypes, name, prompts)
            teacher = teacher or build_teacher(teacher_config)
            features = teacher.encode_templates([image for image, _ in images], batch_size)
            with atomic_output(folder) as tmp:
                tmp.mkdir(parents=True)
                write_prototype_folder(tmp, name, source, images)
                save_safetensors(tmp / self.TEMPLATES_NAME, {"features": features},
                                 {"key": key, "name": name, "teacher": teacher.teacher_id})
            found.append(NamePrototypes(name, folder, [image for image, _ in images], features,
                                        teacher.teacher_id, cached=False))
        return found


def vocabulary_competitors(templates_file: Path, names: Sequence[str], teacher_id: str) -> list[np.ndarray]:
    """The template vectors of each vocabulary class not queried by name, from the
    template_features stage's file; they must come from the query's teacher."""
    tensors, metadata = load_safetensors(templates_file)
    if metadata.get("teacher") != teacher_id:
        raise QueryError(f"{templates_file}: encoded by teacher {metadata.get('teacher')!r}, but params give "
                         f"{teacher_id!r}: run `dvc repro template_features`")
    class_names = json.loads(metadata["class_names"])
    return [tensors["features"][tensors["labels"] == i] for i, c in enumerate(class_names) if c not in names]


# --------------------------------------------------------------------------- scoring


class ScoreMode(enum.Enum):
    """How a point's similarity to a name becomes its score (module docstring)."""

    VOCABULARY = "vocabulary"  # margin over every competitor; threshold 0 by default
    ABSOLUTE = "absolute"  # raw best cosine; the user picks the threshold


@dataclass(frozen=True)
class QueryScorer:
    """Scores points against Q query names, with C competitor classes behind them.

    classifier: nearest-prototype logits over Q + C classes, the Q query names first.
    """

    names: tuple[str, ...]
    classifier: NearestPrototypeClassifier
    mode: ScoreMode

    def best(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) int64 index of the name each point scores best on, and (N,) float32 its score."""
        features = np.asarray(features)
        q = len(self.names)
        index = np.empty(len(features), dtype=np.int64)
        score = np.empty(len(features), dtype=np.float32)
        for start in range(0, len(features), _SCORE_BLOCK):
            logits = self.classifier.logits(features[start:start + _SCORE_BLOCK])
            best = logits[:, :q].argmax(axis=1)
            rows = np.arange(len(best))
            similarity = logits[rows, best]
            if self.mode is ScoreMode.VOCABULARY:
                logits[rows, best] = -np.inf  # what remains: the other names and the vocabulary
                similarity = similarity - logits.max(axis=1)
            index[start:start + len(best)] = best
            score[start:start + len(best)] = similarity
        return index, score


def build_scorer(
    names: Sequence[str],
    query_templates: Sequence[np.ndarray],
    competitors: Sequence[np.ndarray],
    mode: ScoreMode,
) -> QueryScorer:
    """A scorer from each name's (M_q, D) template vectors and each competitor's (M_c, D).

    Competitors only matter in `vocabulary` mode, which needs at least one (another name or a
    vocabulary class) to compare with.
    """
    if len(names) != len(query_templates) or not names:
        raise ValueError(f"need one template array per name, got {len(names)} names and "
                         f"{len(query_templates)} arrays")
    groups = list(query_templates) + (list(competitors) if mode is ScoreMode.VOCABULARY else [])
    if mode is ScoreMode.VOCABULARY and len(groups) < 2:
        raise QueryError("vocabulary scoring compares the name with other classes, and there are none "
                         "(the vocabulary holds only the queried names): add a class, or score absolute")
    if any(len(group) == 0 for group in groups):
        raise ValueError("every name and competitor needs at least one template vector")
    starts = np.cumsum([0] + [len(group) for group in groups[:-1]])
    classifier = NearestPrototypeClassifier(prototypes=l2_normalize(np.concatenate(groups)), starts=starts)
    return QueryScorer(tuple(names), classifier, mode)


def select_matches(index: np.ndarray, score: np.ndarray, num_names: int,
                   threshold: float | None = None, top_k: int | None = None) -> np.ndarray:
    """(N,) int64: the matched name of each point, or UNMATCHED (-1). Give threshold or top_k.

    threshold: a point matches its best name when its score is above it.
    top_k: each name keeps its k best-scoring points among those scoring best on it.
    """
    if (threshold is None) == (top_k is None):
        raise ValueError("give exactly one of threshold and top_k")
    if threshold is not None:
        return np.where(score > threshold, index, UNMATCHED)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    match = np.full(len(index), UNMATCHED, dtype=np.int64)
    for name in range(num_names):
        candidates = np.flatnonzero(index == name)
        keep = candidates[np.argsort(-score[candidates], kind="stable")[:top_k]]
        match[keep] = name
    return match
