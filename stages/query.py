"""Ad-hoc command query: find the points of the evaluation split that look like free text.

    python -m stages.query car
    python -m stages.query car bus --scan <scan id> --out car_bus.png
    python -m stages.query "traffic cone" --top-k 300
    python -m stages.query car --absolute --threshold 0.8

Not a DVC stage: it reads params.yaml (prototype source, images per class, teacher, evaluation
split) and the pipeline's cached outputs, and writes only its own cache and picture.

1. Prototypes: for each name, the source of `prototypes.source` draws
   `prototypes.images_per_class` images (prompts: `--prompt`, else the vocabulary's prompts
   when the name is a vocabulary class, else "a photo of a {}") and the teacher encodes them.
   Both are kept in cache/query/<key>/ (PNGs, manifest.json, templates.safetensors), keyed
   by a hash of everything that determines them (`pipeline.query.query_key`), so asking again
   reuses them without loading the teacher or the generator.
2. Scores: every point of cache/point_features/<eval split> is scored against the names
   (`pipeline.query`): by default the margin by which the best name beats the other names and
   the vocabulary's classes (cache/template_features), matched above `--threshold` (default
   0); `--absolute` scores raw cosine similarity and needs a threshold; `--top-k` keeps each
   name's k best points per scan instead of thresholding.
3. Picture: plots/query/<names>.png (or `--out`) of one scan, `--scan` or else the scan with the
   most matches (top-k: the best mean score): the bird's-eye view and the camera that sees
   the most matches with matched points in each name's colour, and the prototypes used.
   Choosing a scan scores every scan of the split (about half a second per demo scan on a
   CPU): on a large split, pass --scan.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.datasets import open_reader
from pipeline.feature_pca import PcaBasis
from pipeline.generation.prototype_sets import (
    make_prototype_images,
    read_prototype_folder,
    write_prototype_folder,
)
from pipeline.query import (
    DEFAULT_PROMPTS,
    UNMATCHED,
    QueryError,
    QueryScorer,
    ScoreMode,
    build_scorer,
    check_source_knows,
    query_key,
    select_matches,
)
from pipeline.store import (
    RaggedReader,
    atomic_output,
    load_safetensors,
    save_safetensors,
)
from pipeline.teacher import Teacher
from pipeline.viz import save_query_picture
from stages.common import (
    CACHE,
    PLOTS,
    POINT_FEATURES,
    TEMPLATES_FILE,
    log,
    stage_arguments,
    start_stage,
    summary,
)
from stages.label import open_point_features, read_point_features

QUERY_CACHE = CACHE / "query"  # /<key>/: PNGs, manifest.json, templates.safetensors
QUERY_PICTURES = PLOTS / "query"  # /<names>.png
TEMPLATES_NAME = "templates.safetensors"


@dataclass(frozen=True)
class NamePrototypes:
    """One query name's prototype images and their (M, D) teacher vectors."""

    name: str
    folder: Path
    images: list[Image.Image]
    features: np.ndarray
    teacher_id: str
    cached: bool


@dataclass(frozen=True)
class QueryOutcome:
    """What one query did, for tests and callers: the summary line in numbers.

    match: (N,) int64 of the pictured scan: the index of the name each point matched, or -1.
    prototype_seconds: generating and encoding the prototypes, or reading them from the cache.
    """

    names: tuple[str, ...]
    scan_id: str
    match: np.ndarray
    picture: Path
    cached: tuple[bool, ...]
    cache_folders: tuple[Path, ...]
    prototype_seconds: float


def slug(names: tuple[str, ...]) -> str:
    """A file name for the names: "traffic cone", "bus" -> "traffic_cone+bus"."""
    return "+".join(re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "query" for name in names)


def prompts_for(params, name: str, prompts: list[str] | None) -> tuple[str, ...]:
    if prompts:
        return tuple(prompts)
    return params.vocabulary[name].prompts if name in params.vocabulary else DEFAULT_PROMPTS


def read_cached(folder: Path, name: str, key: dict) -> NamePrototypes | None:
    """The cached prototypes of `name`, or None when the folder does not hold exactly this key."""
    if not (folder / TEMPLATES_NAME).is_file():
        return None
    tensors, metadata = load_safetensors(folder / TEMPLATES_NAME)
    if json.loads(metadata.get("key", "null")) != key:
        log.warning("%s: holds another query's prototypes (a hash collision?); making them again", folder)
        return None
    return NamePrototypes(name, folder, read_prototype_folder(folder), tensors["features"],
                          metadata["teacher"], cached=True)


def load_or_make_prototypes(params, names: tuple[str, ...], prompts: list[str] | None) -> list[NamePrototypes]:
    """Each name's prototypes from cache/query/<key>/, made (and cached) when absent."""
    teacher = None  # built only when some name is not cached
    found = []
    for name in tqdm(names, desc="query prototypes", unit="name", disable=len(names) < 2):
        name_prompts = prompts_for(params, name, prompts)
        key_hash, key = query_key(name, name_prompts, params.prototypes, params.teacher)
        folder = QUERY_CACHE / key_hash
        cached = read_cached(folder, name, key)
        if cached is not None:
            log.info("%r: prototypes and template vectors from %s", name, folder)
            found.append(cached)
            continue
        log.info("%r: drawing %d %s prototypes (prompts %s)", name, params.prototypes.images_per_class,
                 params.prototypes.source, list(name_prompts))
        images, source = make_prototype_images(params.prototypes, name, name_prompts)
        teacher = teacher or Teacher(params.teacher)
        features = teacher.encode_templates([image for image, _ in images], params.template_features.batch_size)
        with atomic_output(folder) as tmp:
            tmp.mkdir(parents=True)
            write_prototype_folder(tmp, name, source, images)
            save_safetensors(tmp / TEMPLATES_NAME, {"features": features},
                             {"key": key, "name": name, "teacher": teacher.teacher_id})
        found.append(NamePrototypes(name, folder, [image for image, _ in images], features,
                                    teacher.teacher_id, cached=False))
    return found


def vocabulary_competitors(names: tuple[str, ...], teacher_id: str) -> list[np.ndarray]:
    """The template vectors of each vocabulary class not queried by name (cache/template_features)."""
    tensors, metadata = load_safetensors(TEMPLATES_FILE)
    if metadata.get("teacher") != teacher_id:
        raise QueryError(f"{TEMPLATES_FILE}: encoded by teacher {metadata.get('teacher')!r}, but params give "
                         f"{teacher_id!r}: run `dvc repro template_features`")
    class_names = json.loads(metadata["class_names"])
    return [tensors["features"][tensors["labels"] == i] for i, c in enumerate(class_names) if c not in names]


@dataclass(frozen=True)
class PointFeatures:
    """The cached point features of the evaluation split, read as the label stage reads them."""

    path: Path
    store: RaggedReader
    basis: PcaBasis | None  # when the store holds PCA coefficients rather than features

    @property
    def scan_ids(self) -> tuple[str, ...]:
        return self.store.scan_ids

    def read(self, scan_id: str) -> np.ndarray:
        return read_point_features(self.store, self.basis, scan_id)


def open_features(params, args) -> PointFeatures:
    path = POINT_FEATURES / params.dataset.eval_split
    if not path.is_dir():
        raise QueryError(f"{path}: no cached point features of the evaluation split "
                         f"{params.dataset.eval_split!r}; run `dvc repro point_features` first")
    store, basis = open_point_features(path)
    if args.scan is not None and args.scan not in store:
        shown = ", ".join(store.scan_ids[:5])
        raise QueryError(f"{path}: no scan {args.scan!r} in split {params.dataset.eval_split!r} "
                         f"({len(store)} scans, e.g. {shown})")
    return PointFeatures(path, store, basis)


def warn_if_other_teacher(features: PointFeatures, teacher_id: str) -> None:
    source = features.store.attributes.get("student_teacher")
    if source and source != teacher_id:
        # A released ScaLR checkpoint names its file here, not a teacher id: warn, do not refuse.
        log.warning("%s: the point features come from %r, the query's templates from teacher %r (params); "
                    "they compare only if that student was distilled from this teacher", features.path, source,
                    teacher_id)


def scan_match(scorer: QueryScorer, features: PointFeatures, scan_id: str, args) -> tuple[np.ndarray, np.ndarray]:
    """(match, score) of every point of one scan."""
    index, score = scorer.best(features.read(scan_id))
    match = select_matches(index, score, len(scorer.names), args.threshold, args.top_k)
    return match, score


def pick_scan(scorer: QueryScorer, features: PointFeatures, args) -> tuple[str, str]:
    """(scan id, why): `--scan`, else the most matches (top-k: the best mean matched score)."""
    if args.scan is not None:
        return args.scan, "given"
    ranking = []
    for scan_id in tqdm(features.scan_ids, desc="query scans", unit="scan"):
        match, score = scan_match(scorer, features, scan_id, args)
        matched = match != UNMATCHED
        ranking.append(float(score[matched].mean()) if args.top_k and matched.any() else int(matched.sum()))
    best = int(np.argmax(ranking))
    what = "best mean score of its top-k points" if args.top_k else "most matches"
    return features.scan_ids[best], f"{what} of {len(features.scan_ids)} scans"


def arguments():
    parser = stage_arguments(__doc__)
    parser.add_argument("names", nargs="+", help="one or more free-text class names, e.g. car \"traffic cone\"")
    parser.add_argument("--scan", help="scan id of the evaluation split to picture (default: the one with most matches)")
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--threshold", type=float,
                        help="match above this score (default 0 for vocabulary scoring; required with --absolute)")
    select.add_argument("--top-k", type=int, help="match each name's k best-scoring points per scan")
    parser.add_argument("--absolute", action="store_true",
                        help="score raw cosine similarity instead of the margin over the vocabulary's classes")
    parser.add_argument("--prompt", action="append",
                        help="prompt template, '{}' is the name (repeatable; default: the vocabulary's, or "
                             f"{DEFAULT_PROMPTS[0]!r})")
    parser.add_argument("--out", type=Path, help="picture path (default: plots/query/<names>.png)")
    return parser


def main(argv: list[str] | None = None) -> QueryOutcome:
    parser = arguments()
    args = parser.parse_args(argv)
    names = tuple(dict.fromkeys(name.strip() for name in args.names))
    if not all(names):
        parser.error("names must not be empty")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    mode = ScoreMode.ABSOLUTE if args.absolute else ScoreMode.VOCABULARY
    if mode is ScoreMode.ABSOLUTE and args.threshold is None and args.top_k is None:
        parser.error("--absolute needs --threshold (a cosine similarity, e.g. 0.8) or --top-k")
    if args.threshold is None and args.top_k is None:
        args.threshold = 0.0
    params = start_stage("query", args)
    out = args.out or QUERY_PICTURES / f"{slug(names)}.png"
    with summary("query") as facts:
        # Every input is checked before any model loads.
        for name in names:
            check_source_knows(params.prototypes, name, args.params)
        features = open_features(params, args)
        if mode is ScoreMode.VOCABULARY and not TEMPLATES_FILE.is_file():
            raise QueryError(f"{TEMPLATES_FILE}: not found. Vocabulary scoring compares the query with the "
                             "vocabulary's templates: run `dvc repro template_features`, or score with --absolute")
        start = time.perf_counter()
        prototypes = load_or_make_prototypes(params, names, args.prompt)
        prototype_seconds = time.perf_counter() - start
        teacher_id = prototypes[0].teacher_id
        warn_if_other_teacher(features, teacher_id)
        competitors = vocabulary_competitors(names, teacher_id) if mode is ScoreMode.VOCABULARY else []
        scorer = build_scorer(names, [p.features for p in prototypes], competitors, mode)
        scan_id, why = pick_scan(scorer, features, args)
        match, _ = scan_match(scorer, features, scan_id, args)
        record = open_reader(params.dataset, params.dataset.eval_split).read(scan_id)
        if len(record.points) != len(match):
            raise QueryError(f"{features.path}: scan {scan_id} has {len(match)} point "
                             f"features for {len(record.points)} points; run `dvc repro point_features`")
        rule = f"top {args.top_k} per name" if args.top_k else f"{mode.value} score > {args.threshold:g}"
        with atomic_output(out) as tmp:
            save_query_picture(record, match, names, [p.images for p in prototypes], tmp,
                               f"query {', '.join(names)} on scan {scan_id} ({rule})")
        counts = {name: int((match == i).sum()) for i, name in enumerate(names)}
        hits = sum(p.cached for p in prototypes)
        facts["query"] = ", ".join(f"{name!r} {count} points" for name, count in counts.items())
        facts["scan"] = f"{scan_id} ({why}), {len(match)} points, {rule}"
        facts["prototypes"] = (f"{len(names) - hits} generated and encoded, {hits} cache hits, "
                               f"in {prototype_seconds:.2f} s")
        facts["wrote"] = str(out)
    return QueryOutcome(names, scan_id, match, Path(out), tuple(p.cached for p in prototypes),
                        tuple(p.folder for p in prototypes), prototype_seconds)


if __name__ == "__main__":
    main()
