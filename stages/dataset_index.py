"""Stage dataset_index: the files the other stages read, with their size and modification time.

    python -m stages.dataset_index

For each split the pipeline uses (dataset.distill_split, dataset.eval_split and each entry of
`distill_datasets`), lists every scan and its point, label and image files from the dataset's
own tables, with each file's size and modification time, into cache/dataset_index/
{points,labels,cameras}.json (`pipeline.datasets.index`). The stages that read scans depend on
these small files instead of the dataset folder, so DVC never hashes the dataset. DVC reruns
this stage when the main dataset's tables (the `dataset.root`/`dataset.version` folder) or the
dataset params change; after replacing dataset files in place, force it (README, "Run on real
data"): `dvc repro -f -s dataset_index`, then `dvc repro`.
"""

from __future__ import annotations

from pipeline.datasets import open_reader
from pipeline.datasets.index import KINDS, index_split, write_index
from pipeline.store.atomic import atomic_output
from stages.common import (
    DATASET_INDEX,
    human_size,
    run_command,
    split_sources,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("dataset_index", args)
    with summary("dataset_index") as facts:
        index: dict[str, dict] = {kind: {} for kind in KINDS}
        for source in split_sources(params):
            entries = index_split(open_reader(source.dataset, source.split), source.dataset, source.split,
                                  source.key)
            for kind in KINDS:
                index[kind][source.key] = entries[kind]
            listed = [entry for kind in KINDS for entry in entries[kind]["files"]]
            facts[source.key] = (f"{len(entries['points']['files'])} scans, {len(listed)} files "
                                 f"({sum(entry[2] for entry in listed) / 2**30:.2f} GiB)")
        with atomic_output(DATASET_INDEX, scratch=stage_scratch("dataset_index")) as folder:
            write_index(folder, index)
        facts["wrote"] = f"{DATASET_INDEX} ({human_size(DATASET_INDEX)})"


if __name__ == "__main__":
    run_command(main)
