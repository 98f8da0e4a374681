"""Bad input files and write faults: each stops with one line naming the file and the problem.

One test per fault (issue 13, items 1 (convert_checkpoint), 4, 5 and 11): a camera image whose
size is not its calibration's, a truncated camera image, SemanticKITTI `.label` files with
trailing bytes or missing from a labelled sequence, a scan whose points are all NaN, a garbage
or empty checkpoint, a full disk while an artifact is written, and an existing folder given to
`convert_checkpoint`. The command-line checks run the command in a subprocess and read the last
lines of stderr and the exit status.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from chain_runner import REPO, inside, run_stage, small_params, write_params
from conftest import randomise_batchnorms, save_scalr_layout
from PIL import Image

from pipeline.datasets import open_reader
from pipeline.datasets.base import DatasetError
from pipeline.datasets.semantic_kitti import SemanticKittiReader
from pipeline.students.waffleiron import WaffleIron, WaffleIronConfig

# A small WaffleIron whose output width is the small chain's teacher width (params validation).
SMALL_WAFFLEIRON = WaffleIronConfig(width=16, depth=2, grids=((32, 32), (32, 4), (32, 4)),
                                    fov=((-48.0, -48.0, -4.0), (48.0, 48.0, 4.0)), head_hidden=32,
                                    out_channels=192, drop_path=0.0)


def run_command_line(*args: str) -> subprocess.CompletedProcess:
    """`python -m <args>` from the repository root, as a user runs it (no --verbose)."""
    env = {key: value for key, value in os.environ.items() if key != "IGLOSS_VERBOSE"}
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The `error: ...` line a failed command ends with (then the --verbose hint)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[-1] == "(run with --verbose for the traceback)", result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-2]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(a ScaLR-layout ckpt_last.pth of SMALL_WAFFLEIRON, a params file whose student is it)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    save_scalr_layout(folder / "ckpt_last.pth", randomise_batchnorms(WaffleIron(SMALL_WAFFLEIRON)).state_dict())
    params = small_params()
    params["student"]["waffleiron"] = json.loads(json.dumps(SMALL_WAFFLEIRON.to_dict()))
    return folder / "ckpt_last.pth", write_params(folder, params)


def copy_world(small_world: Path, folder: Path) -> Path:
    """A writable copy of the small demo world at `folder`/data/demo (where params.yaml points)."""
    target = folder / "data" / "demo"
    shutil.copytree(small_world, target)
    return target


# ------------------------------------------------------------------- item 1: convert_checkpoint


def test_convert_checkpoint_refuses_a_non_empty_out_folder_without_overwrite(small_checkpoint, tmp_path):
    """Fault: `convert_checkpoint ckpt.pth OUT` deleted an existing non-empty OUT/."""
    checkpoint, params = small_checkpoint
    out = tmp_path / "my_results"
    out.mkdir()
    (out / "notes.txt").write_text("precious")

    result = run_command_line("stages.convert_checkpoint", str(checkpoint), str(out), "--params", str(params))

    assert error_line(result) == (f"error: {out}: the folder exists and is not empty; "
                                  "pass --overwrite to replace everything in it")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_results"]  # no temporary left beside it

    again = run_command_line("stages.convert_checkpoint", str(checkpoint), str(out), "--params", str(params),
                             "--overwrite")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------- item 4: image size


@pytest.fixture(scope="module")
def assigned(small_world, tmp_path_factory) -> Path:
    """A project folder with the small world and its assignments, ready for teacher_features
    (read-only: copy it before changing files)."""
    folder = tmp_path_factory.mktemp("assigned")
    copy_world(small_world, folder)
    write_params(folder, small_params(teacher={**small_params()["teacher"], "input_size": [112, 196]}))
    with inside(folder):
        run_stage("assignments")
    return folder


def first_scan_images(folder: Path) -> list[Path]:
    """The camera images of the first scan teacher_features reads (the distill split's first)."""
    from stages.common import load_project_params

    with inside(folder):
        params = load_project_params(Path("params.yaml"))
        reader = open_reader(params.dataset, params.dataset.distill_split)
        return [folder / camera.image_path for camera in reader.read(reader.scan_ids[0]).cameras]


def test_camera_image_of_another_size_than_its_calibration_stops_naming_both_sizes(assigned, tmp_path):
    """Fault: a camera image whose size differs from its calibration was stretched silently."""
    folder = tmp_path / "project"
    shutil.copytree(assigned, folder, symlinks=True)
    images = first_scan_images(folder)
    with Image.open(images[0]) as image:
        width, height = image.size
    for path in images:  # every camera of the scan, so the one the teacher reads first is among them
        with Image.open(path) as image:
            image.resize((width * 2, height)).save(path, quality=95)

    with inside(folder), pytest.raises(ValueError) as caught:
        run_stage("teacher_features")

    message = str(caught.value)
    named = [p for p in images if str(p.relative_to(folder)) in message]
    assert named, message
    assert (f"{named[0].relative_to(folder)}: the image is {2 * width}x{height} pixels but its calibration "
            f"is for {width}x{height} (width x height)") in message
    assert not list((folder / "cache").glob("teacher_features/*"))  # no artifact, not even a half one


def test_camera_picture_of_another_size_than_its_calibration_is_refused(tmp_path):
    """Fault: the pictures (scan previews, query matches) drew an image of another size than its
    calibration with the points on the wrong pixels."""
    from pipeline.datasets.base import CameraView
    from pipeline.viz import camera_picture

    path = tmp_path / "cam.jpg"
    Image.new("RGB", (64, 32)).save(path)
    camera = CameraView(name="CAM", image_path=path, lidar_to_camera=np.eye(4), intrinsics=np.eye(3),
                        width=64, height=32)
    assert camera_picture(camera).shape == (32, 64, 3)
    Image.new("RGB", (128, 32)).save(path)
    with pytest.raises(ValueError, match=rf"^{path}: the image is 128x32 pixels but its calibration is for 64x32"):
        camera_picture(camera)


# ------------------------------------------------------------------- item 5: SemanticKITTI labels


def test_kitti_label_file_with_trailing_bytes_is_refused(small_world, tmp_path):
    """Fault: a `.label` whose size is not a multiple of 4 bytes was read, the tail ignored."""
    root = copy_world(small_world, tmp_path) / "semantic_kitti"
    label = sorted((root / "sequences" / "01" / "labels").glob("*.label"))[0]
    with label.open("ab") as handle:
        handle.write(b"\x07\x00")
    reader = SemanticKittiReader(root, "val")
    with pytest.raises(DatasetError, match=rf"^{label}: size \d+ bytes is not a multiple of 4 \(uint32 labels\)"):
        reader.read(f"01/{label.stem}")


def test_kitti_label_file_missing_in_a_labelled_sequence_is_an_error(small_world, tmp_path):
    """Fault: a `.label` missing beside labelled scans was read as "unlabelled" with no message."""
    root = copy_world(small_world, tmp_path) / "semantic_kitti"
    labels = sorted((root / "sequences" / "01" / "labels").glob("*.label"))
    labels[-1].unlink()
    with pytest.raises(DatasetError, match=rf"^{labels[-1]}: label file is missing, but {len(labels) - 1} other "
                                           r"scans? of sequence 01 ha(s|ve) labels \(1 of"):
        SemanticKittiReader(root, "val")


def test_kitti_sequence_without_any_label_still_reads_as_unlabelled(small_world, tmp_path):
    """Not a fault: a split without labels (like the official test split) stays legal."""
    root = copy_world(small_world, tmp_path) / "semantic_kitti"
    shutil.rmtree(root / "sequences" / "01" / "labels")
    reader = SemanticKittiReader(root, "val")
    assert all(record.labels is None for record in reader)


# ------------------------------------------------------------------- item 11: no file named


def test_truncated_camera_image_names_the_file(assigned, tmp_path):
    """Fault: a truncated JPEG stopped teacher_features with `OSError: image file is truncated`."""
    folder = tmp_path / "project"
    shutil.copytree(assigned, folder, symlinks=True)
    images = first_scan_images(folder)
    for path in images:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    with inside(folder), pytest.raises(ValueError) as caught:
        run_stage("teacher_features")

    message = str(caught.value)
    named = [p for p in images if message.startswith(f"{p.relative_to(folder)}: cannot read the image")]
    assert named, message
    assert "truncated" in message
    assert not list((folder / "cache").glob("teacher_features/*"))  # no artifact, not even a half one


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 20, bytes(range(256)) * 8],
                         ids=["empty", "text", "binary"])
def test_garbage_or_empty_checkpoint_is_named_as_not_a_pytorch_checkpoint(tmp_path, content):
    """Fault: convert_checkpoint ended in a bare `EOFError` / `UnicodeDecodeError` / unpickling advice."""
    checkpoint = tmp_path / "ckpt_last.pth"
    checkpoint.write_bytes(content)

    result = run_command_line("stages.convert_checkpoint", str(checkpoint), str(tmp_path / "student"))

    assert error_line(result).startswith(f"error: {checkpoint}: not a PyTorch checkpoint (")
    assert not (tmp_path / "student").exists()


def test_scan_whose_points_are_all_nan_names_the_file(small_world, tmp_path):
    """Fault: a scan of only NaN points ended in `none of the 0 points lies in the field of view`."""
    root = copy_world(small_world, tmp_path) / "semantic_kitti"
    scan = sorted((root / "sequences" / "00" / "velodyne").glob("*.bin"))[0]
    count = scan.stat().st_size // 16
    np.full((count, 4), np.nan, dtype=np.float32).tofile(scan)
    reader = SemanticKittiReader(root, "train")
    with pytest.raises(DatasetError, match=rf"^{scan}: all {count} points have NaN or infinite values "
                                           rf"\(scan 00/{scan.stem}\)"):
        reader.read(f"00/{scan.stem}")


def test_scan_file_without_any_point_names_the_file(small_world, tmp_path):
    """Fault: an empty scan file ended far downstream in a message that named no file."""
    root = copy_world(small_world, tmp_path) / "semantic_kitti"
    scan = sorted((root / "sequences" / "00" / "velodyne").glob("*.bin"))[0]
    scan.write_bytes(b"")
    (root / "sequences" / "00" / "labels" / f"{scan.stem}.label").write_bytes(b"")
    reader = SemanticKittiReader(root, "train")
    with pytest.raises(DatasetError, match=rf"^{scan}: the point file holds no point \(scan 00/{scan.stem}\)"):
        reader.read(f"00/{scan.stem}")


def test_full_disk_while_writing_names_the_artifact_and_leaves_nothing(small_checkpoint, tmp_path, monkeypatch,
                                                                       capsys):
    """Fault: a full disk (ENOSPC) ended in `[Errno 28] No space left on device` naming no artifact."""
    import pipeline.students.io as student_io
    from stages import convert_checkpoint
    from stages.common import run_command

    checkpoint, params = small_checkpoint

    def disk_fills_up(path, tensors, metadata=None, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(student_io, "save_safetensors", disk_fills_up)
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint"])
    monkeypatch.delenv("IGLOSS_VERBOSE", raising=False)
    out = tmp_path / "student"
    with pytest.raises(SystemExit) as caught:
        run_command(lambda: convert_checkpoint.main([str(checkpoint), str(out), "--params", str(params)]))

    assert caught.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == (f"error: {out}: no space left on device while writing it; "
                         "nothing of it was kept (free some space and rerun)")
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor a temporary


def test_full_disk_while_writing_a_ragged_store_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    """Fault: the same, for the per-scan stores the heavy stages write (RaggedWriter)."""
    from pipeline.store import ragged

    def disk_fills_up(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ragged._BlockWriter, "append", disk_fills_up)
    out = tmp_path / "cache" / "assignments" / "train"
    with pytest.raises(OSError, match=rf"^{out}: no space left on device while writing it") as caught:
        with ragged.RaggedWriter(out, {"point_index": ("int32", ())}) as writer:
            writer.append("scan-0", point_index=np.arange(10, dtype=np.int32))
    assert caught.value.errno == errno.ENOSPC
    assert list((tmp_path / "cache" / "assignments").iterdir()) == []
