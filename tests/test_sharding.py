"""Sharded stages: the world from the environment, shards, and W = 2 against W = 1 (gloo, CPU).

The multi-process tests start `torch.distributed.run` (torchrun) with two CPU processes;
the synthetic ones run this very file as the worker (`python tests/test_sharding.py ...`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chain_runner import REPO, tree_hash

from pipeline.distributed import ShardedOutput, World, launched, shard, world_from_env
from pipeline.store.ragged import RaggedReader, RaggedWriter, scans_per_block

COLUMNS = {"value": ("int32", ()), "feature": ("float16", (3,))}


def synthetic_scans(count: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Scans whose arrays depend on their index only (so any process can make any of them)."""
    scans = []
    for i in range(count):
        rng = np.random.default_rng(i)
        rows = (7 * i) % 13  # some empty
        scans.append((f"scan-{i:03d}", {"value": rng.integers(-1000, 1000, rows),
                                        "feature": rng.standard_normal((rows, 3))}))
    return scans


def write_synthetic(out: Path, count: int, world: World, fail_at: int | None = None) -> None:
    """A two-store artifact over `count` scans; raises (or dies) at scan index `fail_at`."""
    scans = dict(synthetic_scans(count))
    ids = list(scans)
    with ShardedOutput(out, ids, world) as output, \
         output.ragged("a", COLUMNS, attributes={"name": "a"}) as a, \
         output.ragged("b", {"value": ("int32", ())}) as b:
        for scan_id in output.scan_ids:
            if fail_at is not None and ids.index(scan_id) == fail_at:
                if os.environ.get("IGLOSS_TEST_HARD_CRASH"):
                    os._exit(3)  # no cleanup at all, as a killed process
                raise RuntimeError(f"synthetic failure at {scan_id}")
            a.append(scan_id, **scans[scan_id])
            b.append(scan_id, value=scans[scan_id]["value"][::-1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                 "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"):
        if name not in extra:
            env.pop(name, None)
    return env


def torchrun(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 <args>` (a free port of its own)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=300)


def srun_like(args: list[str], cwd: Path, **env: str) -> list[subprocess.CompletedProcess]:
    """Two processes started as srun starts them (SLURM_* and MASTER_* set, no agent), which
    is cheaper than torchrun and leaves a dead rank to the survivors alone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, __file__, *args]
    processes = [subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=clean_env(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2",
                                                SLURM_LOCALID=str(rank), MASTER_ADDR="127.0.0.1",
                                                MASTER_PORT=str(port), **env))
                 for rank in range(2)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- the world


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
    ({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}, (5, 8, 1)),
    # torchrun started by srun: torchrun's global ranks win
    ({"RANK": "2", "WORLD_SIZE": "16", "LOCAL_RANK": "2", "SLURM_PROCID": "0",
      "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0"}, (2, 16, 2)),
    # a batch script: SLURM_NTASKS and SLURM_PROCID but no srun step, so one process
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}, (0, 1, 0)),
])
def test_world_from_env(env, expected):
    world = world_from_env(env)
    assert (world.rank, world.size, world.local_rank) == expected
    assert world.is_main == (expected[0] == 0)


def test_world_from_env_rejects_bad_values():
    with pytest.raises(ValueError, match="RANK='x'"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="bad world"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_single_process_never_touches_torch_distributed(monkeypatch, tmp_path):
    import torch.distributed as dist

    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dist, "init_process_group", None)  # any call would fail
    monkeypatch.setattr(dist, "all_reduce", None)
    monkeypatch.setattr(dist, "broadcast", None)
    with launched("cpu") as world:
        assert world == World() and world.sum([2, 3]) == [2, 3] and world.failed_ranks(True) == []
        write_synthetic(tmp_path / "out", 5, world)
    assert RaggedReader(tmp_path / "out" / "a").scan_ids == tuple(f"scan-{i:03d}" for i in range(5))


@pytest.mark.parametrize("count", [0, 1, 5, 12, 130])
@pytest.mark.parametrize("block", [1, 3, 64])
def test_shards_partition_whole_blocks_in_order(count, block):
    items = list(range(count))
    for size in (1, 2, 3, 5):
        shares = [shard(items, block, rank, size) for rank in range(size)]
        assert sorted(sum(shares, [])) == items  # every item once
        for share in shares:
            assert share == sorted(share)
        owner = {item: rank for rank, share in enumerate(shares) for item in share}
        for first in range(0, count, block):  # a block belongs to one rank, dealt in turn
            assert {owner[i] for i in items[first:first + block]} == {(first // block) % size}
    with pytest.raises(ValueError, match="bad shard"):
        shard(items, block, 2, 2)


def test_block_size_depends_on_scan_count_only():
    assert [scans_per_block(n) for n in (0, 1, 64, 65, 28130, 6019)] == [1, 1, 1, 2, 440, 95]


@pytest.mark.parametrize("count", [0, 40])
def test_single_process_output_is_the_plain_writer(tmp_path, count):
    scans = synthetic_scans(count)
    write_synthetic(tmp_path / "sharded", count, World())
    with RaggedWriter(tmp_path / "plain", COLUMNS, attributes={"name": "a"},
                      scans_per_block=scans_per_block(count)) as writer:
        for scan_id, arrays in scans:
            writer.append(scan_id, **arrays)
    assert tree_hash(tmp_path / "sharded" / "a") == tree_hash(tmp_path / "plain")


def test_single_process_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="synthetic failure"):
        write_synthetic(tmp_path / "out", 10, World(), fail_at=4)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- two processes


def test_two_processes_write_the_bytes_of_one(tmp_path):
    write_synthetic(tmp_path / "one", 70, World())  # 70 scans: blocks of 2, dealt to 2 ranks
    for result in srun_like(["write", str(tmp_path / "two"), "70"], cwd=tmp_path):
        assert result.returncode == 0, result.stderr[-3000:]
    assert tree_hash(tmp_path / "two") == tree_hash(tmp_path / "one")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("hard", [False, True], ids=["raises", "dies"])
def test_a_failing_rank_leaves_no_artifact(tmp_path, hard):
    # 20 scans: blocks of one scan, dealt in turn, so scan 3 is rank 1's.
    env = {"IGLOSS_TEST_HARD_CRASH": "1"} if hard else {}
    main, failing = srun_like(["write", str(tmp_path / "out"), "20", "3"], cwd=tmp_path, **env)
    assert failing.returncode == (3 if hard else 1)
    assert main.returncode == 1  # rank 0 learnt of it, without any launcher's help ...
    if hard:
        assert "Connection closed by peer" in main.stderr
    else:
        assert "synthetic failure at scan-003" in failing.stderr
        assert "rank 1 of 2 failed" in main.stderr
    assert not (tmp_path / "out").exists()  # ... and cleaned up
    assert leftovers(tmp_path) == []


def test_heavy_stages_on_two_processes_are_byte_identical(chain, tmp_path):
    """Each heavy stage under torchrun (2 processes) writes the bytes one process writes. The one
    process runs with the same thread count (1): a CPU matmul's rounding depends on it."""
    folder = tmp_path / "chain"
    shutil.copytree(chain, folder, symlinks=True)
    for stage, artifact in (("assignments", "cache/assignments"), ("teacher_features", "cache/teacher_features"),
                            ("point_features", "cache/point_features")):
        one = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=folder, env=clean_env(PYTHONPATH=str(REPO)),
                             capture_output=True, text=True, timeout=300)
        assert one.returncode == 0, one.stderr[-3000:]
        single = tree_hash(folder / artifact)
        shutil.rmtree(folder / artifact)
        result = torchrun(["-m", f"stages.{stage}"], cwd=folder, PYTHONPATH=str(REPO))
        assert result.returncode == 0, result.stderr[-3000:]
        assert tree_hash(folder / artifact) == single, stage
        assert result.stderr.count("2 processes (gloo)") == 1  # rank 0 speaks ...
        assert result.stderr.count("done in") == 1  # ... for both
    # No temporary left anywhere: the stages' scratch folder (cache/.tmp) holds no file, and no
    # hidden file or folder sits beside the artifacts.
    assert [p for p in (folder / "cache/.tmp").rglob("*") if not p.is_dir()] == []
    assert [p for p in (folder / "cache").rglob(".*") if not p.is_relative_to(folder / "cache/.tmp")] == []


if __name__ == "__main__":  # the worker of the synthetic two-process tests
    _, command, out, count, *fail = sys.argv
    assert command == "write"
    with launched("cpu", timeout_s=60) as world:
        write_synthetic(Path(out), int(count), world, int(fail[0]) if fail else None)
