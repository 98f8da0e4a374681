"""Kill test: every heavy stage, SIGKILLed at fixed points, leaves nothing half-written inside a
DVC output, and the next `dvc repro` ends with the same bytes as an uninterrupted run and a
clean `dvc status`.

The kill points are not wall-clock luck: `IGLOSS_KILL_AT=<stage>:<k>` (`pipeline.kill_switch`)
makes the stage kill itself once its loop has finished item k (a scan; for distill an optimiser
step; the count starts again for each split a stage writes). The small world has 2 train and
2 val scans, so k = 2 dies after the last append of the first store, before its commit; distill
(2 epochs here) makes one step per epoch, so distill:1 dies before its first checkpoint and
distill:2 after it.

After each kill the test forces the killed stage to run again (`dvc repro --force --single-item
<stage> --no-run-cache`: the outs were left intact, so a plain `dvc repro` would redo nothing)
and checks that the recomputation writes the uninterrupted run's bytes; distill resumes from
the checkpoint its killed run left, and that checkpoint is gone once the rerun ends. A plain
`dvc repro` afterwards then finds everything up to date.
"""

from __future__ import annotations

import json

import yaml
from chain_runner import dvc_ok, run_dvc, scratch_clone, small_params, tree_hash

KILL_POINTS = {
    "assignments": (1, 2),
    "teacher_features": (1, 2),
    "distill": (1, 2),
    "point_features": (1, 2),
    "label": (2,),
}


def outputs(folder) -> dict[str, list[str]]:
    """Each stage's DVC outs, from dvc.yaml (foreach stages excluded: they are not heavy)."""
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        found[name] = [o for o in outs if "$" not in o]
    return found


def stray_files(folder, outs: dict[str, list[str]]) -> list[str]:
    """Files inside any DVC out whose name marks them as a temporary or an old copy."""
    return sorted(str(p.relative_to(folder)) for paths in outs.values() for out in paths
                  for p in (folder / out).rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def test_killed_heavy_stages_rerun_to_the_same_bytes(tmp_path):
    params = small_params()
    params["distill"].update(epochs=2, checkpoint_every_epochs=1)
    folder = scratch_clone(tmp_path / "project", params)
    dvc_ok(folder, "repro")
    outs = outputs(folder)
    reference = {name: [tree_hash(folder / o) if (folder / o).is_dir() else (folder / o).read_bytes()
                        for o in outs[name]] for name in KILL_POINTS}
    for stage, points in KILL_POINTS.items():
        for k in points:
            where = f"{stage}:{k}"
            killed = run_dvc(folder, "repro", "--force", "--single-item", stage,
                             env_extra={"IGLOSS_KILL_AT": where})
            assert killed.returncode != 0, f"{where}: the stage was not killed:\n{killed.stdout}"
            assert stray_files(folder, outs) == [], f"{where}: a temporary was left inside a DVC out"
            # Recompute the killed stage (its outs are intact, so only --force reruns it); not from
            # the run cache, which would restore the uninterrupted run's bytes without computing them.
            dvc_ok(folder, "repro", "--force", "--single-item", "--no-run-cache", stage)
            again = [tree_hash(folder / o) if (folder / o).is_dir() else (folder / o).read_bytes()
                     for o in outs[stage]]
            assert again == reference[stage], f"{where}: the rerun wrote other bytes than an uninterrupted run"
            assert stray_files(folder, outs) == [], f"{where}: a temporary was left inside a DVC out"
            assert not (folder / "cache/distill_checkpoint").exists() or not any(
                (folder / "cache/distill_checkpoint").iterdir()), f"{where}: a finished distill left its checkpoint"
            dvc_ok(folder, "repro")
            status = json.loads(dvc_ok(folder, "status", "dvc.yaml", "--json") or "{}")
            assert status == {}, f"{where}: dvc status is not clean after the rerun: {status}"
