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
   by a hash of everything that determines them (`pipeline.labelling.query.PrototypeCache`), so
   asking again reuses them without loading the teacher or the generator.
2. Scores: every point of cache/point_features/<eval split> is scored against the names
   (`pipeline.labelling.query`): by default the margin by which the best name beats the other names and
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

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.datasets import open_reader
from pipeline.labelling.point_features import PointFeatureReader
from pipeline.labelling.query import (
    DEFAULT_PROMPTS,
    UNMATCHED,
    PrototypeCache,
    QueryError,
    QueryScorer,
    ScoreMode,
    build_scorer,
    check_source_knows,
    select_matches,
    vocabulary_competitors,
)
from pipeline.store.atomic import atomic_output
from pipeline.viz import save_query_picture
from stages.common import (
    CACHE,
    PLOTS,
    POINT_FEATURES,
    TEMPLATES_FILE,
    finite_float,
    log,
    run_command,
    stage_arguments,
    start_stage,
    summary,
)

QUERY_CACHE = CACHE / "query"  # /<key>/: PNGs, manifest.json, templates.safetensors
QUERY_PICTURES = PLOTS / "query"  # /<names>.png


@dataclass(frozen=True)
class QueryOutcome:
    """What one query did, for tests and callers: the summary line in numbers.

    match: (N,) int64 of the pictured scan, one per raw point: the index of the name each point
        matched, or -1 (always for a point dropped for NaN/inf coordinates).
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


def open_features(params, args) -> PointFeatureReader:
    path = POINT_FEATURES / params.dataset.eval_split
    if not path.is_dir():
        raise QueryError(f"{path}: no cached point features of the evaluation split "
                         f"{params.dataset.eval_split!r}; run `dvc repro point_features` first")
    features = PointFeatureReader(path)
    if args.scan is not None and args.scan not in features:
        shown = ", ".join(features.scan_ids[:5])
        raise QueryError(f"{path}: no scan {args.scan!r} in split {params.dataset.eval_split!r} "
                         f"({len(features)} scans, e.g. {shown})")
    return features


def warn_if_other_teacher(features: PointFeatureReader, teacher_id: str) -> None:
    source = features.store.attributes.get("student_teacher")
    if source and source != teacher_id:
        # A released ScaLR checkpoint names its file here, not a teacher id: warn, do not refuse.
        log.warning("%s: the point features come from %r, the query's templates from teacher %r (params); "
                    "they compare only if that student was distilled from this teacher", features.path, source,
                    teacher_id)


def scan_match(scorer: QueryScorer, features: PointFeatureReader, scan_id: str,
               args) -> tuple[np.ndarray, np.ndarray]:
    """(match, score) of every raw point of one scan; a point dropped for NaN/inf coordinates (no
    feature) matches nothing (score NaN)."""
    point_features, valid = features.read(scan_id), features.valid(scan_id)
    if valid.all():
        index, score = scorer.best(point_features)
        return select_matches(index, score, len(scorer.names), args.threshold, args.top_k), score
    index, kept_score = scorer.best(point_features[valid])
    match = np.full(len(valid), UNMATCHED, dtype=np.int64)
    match[valid] = select_matches(index, kept_score, len(scorer.names), args.threshold, args.top_k)
    score = np.full(len(valid), np.nan, dtype=kept_score.dtype)
    score[valid] = kept_score
    return match, score


def pick_scan(scorer: QueryScorer, features: PointFeatureReader, args) -> tuple[str, str]:
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
    select.add_argument("--threshold", type=finite_float,
                        help="match above this score (default 0 for vocabulary scoring; required with --absolute)")
    select.add_argument("--top-k", type=int, help="match each name's k best-scoring points per scan")
    parser.add_argument("--absolute", action="store_true",
                        help="score raw cosine similarity instead of the margin over the vocabulary's classes")
    parser.add_argument("--prompt", action="append",
                        help="prompt template, '{}' is the name (repeatable; default: the vocabulary's, or "
                             f"{DEFAULT_PROMPTS[0]!r})")
    parser.add_argument("--out", type=Path, help="picture path, or an existing folder to put <names>.png in "
                                                 "(default: plots/query/<names>.png)")
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
    if out.is_dir():  # a folder the user names keeps what it holds: the picture goes inside
        out = out / f"{slug(names)}.png"
    with summary("query") as facts:
        # Every input is checked before any model loads.
        for name in names:
            check_source_knows(params.prototypes, name, args.params)
        features = open_features(params, args)
        if mode is ScoreMode.VOCABULARY and not TEMPLATES_FILE.is_file():
            raise QueryError(f"{TEMPLATES_FILE}: not found. Vocabulary scoring compares the query with the "
                             "vocabulary's templates: run `dvc repro template_features`, or score with --absolute")
        start = time.perf_counter()
        queries = [(name, prompts_for(params, name, args.prompt)) for name in names]
        prototypes = PrototypeCache(QUERY_CACHE).load_or_make(queries, params.prototypes, params.teacher,
                                                              params.template_features.batch_size)
        prototype_seconds = time.perf_counter() - start
        teacher_id = prototypes[0].teacher_id
        warn_if_other_teacher(features, teacher_id)
        vocabulary = mode is ScoreMode.VOCABULARY
        competitors = vocabulary_competitors(TEMPLATES_FILE, names, teacher_id) if vocabulary else []
        scorer = build_scorer(names, [p.features for p in prototypes], competitors, mode)
        scan_id, why = pick_scan(scorer, features, args)
        match, _ = scan_match(scorer, features, scan_id, args)
        record = open_reader(params.dataset, params.dataset.eval_split).read(scan_id)
        if record.raw_count != len(match):
            raise QueryError(f"{features.path}: scan {scan_id} has {len(match)} point "
                             f"features for {record.raw_count} points; run `dvc repro point_features`")
        rule = f"top {args.top_k} per name" if args.top_k else f"{mode.value} score > {args.threshold:g}"
        with atomic_output(out) as tmp:
            pictured = match if record.dropped is None else match[record.dropped.kept_index]  # the finite points
            save_query_picture(record, pictured, names, [p.images for p in prototypes], tmp,
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
    run_command(main)
