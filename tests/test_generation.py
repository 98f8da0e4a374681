"""Prototype image sources: seeds, the diffusers backend (tiny offline pipeline), blank
images, the authors' folder layout and the per-class manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tiny_diffusers import save_tiny_pipeline

import pipeline  # noqa: F401  (torchvision shim first)
from pipeline.generation import (
    BlankImageError,
    ClassManifest,
    DiffusersConfig,
    DiffusersConfigError,
    DiffusersGenerator,
    ManifestError,
    ManifestImage,
    ModelUnavailableError,
    PrototypeFolderError,
    diffusers_backend,
    generate_class_images,
    image_seed,
    is_blank,
    load_class_images,
    prompt_for,
    prototype_file_name,
    read_manifest,
    save_png,
    scan_class_folders,
    write_manifest,
)
from pipeline.generation.manifest import MANIFEST_NAME

TEMPLATES = ("a photo of a {}", "a {} on a street")


# --------------------------------------------------------------------------- seeds


def test_image_seed_is_stable_and_31_bit():
    # A fixed value: the seed must not change across processes, platforms or versions.
    assert image_seed(0, "car", 0) == image_seed(0, "car", 0, attempt=0) == 1913346970
    seeds = {image_seed(7, name, i, a) for name in ("car", "bus", "ca", "r") for i in range(20) for a in range(3)}
    assert len(seeds) == 4 * 20 * 3
    assert all(0 <= s < 2**31 for s in seeds)
    assert image_seed(1, "car", 0) != image_seed(0, "car", 0)


def test_image_seed_rejects_bad_input():
    with pytest.raises(ValueError):
        image_seed(0, "car", -1)
    with pytest.raises(ValueError):
        image_seed(0, "", 0)
    with pytest.raises(TypeError):
        image_seed(0, "car", 1.0)


def test_prompts_cycle_through_templates():
    templates = ("a photo of a {}", "an empty road", "{} and {}")
    assert [prompt_for("car", templates, i) for i in range(4)] == [
        "a photo of a car",
        "an empty road",
        "car and car",
        "a photo of a car",
    ]
    with pytest.raises(ValueError, match="no prompt templates"):
        prompt_for("car", (), 0)


# --------------------------------------------------------------------------- blank images


def test_is_blank_detects_black_and_flat_images():
    rng = np.random.default_rng(0)
    assert is_blank(Image.new("RGB", (32, 32)))
    assert is_blank(Image.fromarray(rng.integers(0, 3, (16, 16, 3), dtype=np.uint8)))  # near black
    assert is_blank(Image.new("RGB", (32, 32), (120, 200, 30)))  # one flat colour
    assert not is_blank(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)))
    dark = np.zeros((16, 16, 3), np.uint8)
    dark[4:8, 4:8] = 40  # a dark photo with something in it
    assert not is_blank(Image.fromarray(dark))


class FakeGenerator:
    """Flat-noise images; blank for the seeds listed in `blank_seeds`."""

    max_blank_retries = 2

    def __init__(self, blank_seeds=()):
        self.blank_seeds = set(blank_seeds)
        self.calls = []

    def generate(self, prompts, seeds):
        self.calls.append(list(seeds))
        out = []
        for seed in seeds:
            if seed in self.blank_seeds:
                out.append(Image.new("RGB", (8, 8)))
            else:
                out.append(Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)))
        return out


def test_generation_loop_retries_only_blank_images():
    blank = {image_seed(3, "car", 1, 0), image_seed(3, "car", 1, 1)}
    generator = FakeGenerator(blank)
    images = generate_class_images(generator, "car", TEMPLATES, 3, base_seed=3)
    assert [(g.index, g.attempt) for g in images] == [(0, 0), (1, 2), (2, 0)]
    assert images[1].seed == image_seed(3, "car", 1, 2)
    assert images[1].prompt == "a car on a street"
    assert generator.calls == [
        [image_seed(3, "car", i, 0) for i in range(3)],
        [image_seed(3, "car", 1, 1)],
        [image_seed(3, "car", 1, 2)],
    ]


def test_generation_loop_gives_up_with_a_clear_message():
    blank = {image_seed(3, "car", 1, a) for a in range(3)}
    with pytest.raises(BlankImageError) as error:
        generate_class_images(FakeGenerator(blank), "car", TEMPLATES, 2, base_seed=3)
    message = str(error.value)
    assert "'car'" in message and "a car on a street" in message
    assert all(str(s) in message for s in blank)
    assert "max_blank_retries" in message


# --------------------------------------------------------------------------- diffusers backend


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


def tiny_config(model: Path, **overrides) -> DiffusersConfig:
    settings = dict(model=str(model), steps=2, height=32, width=48, device="cpu", dtype="fp16", batch_size=2)
    settings.update(overrides)
    return DiffusersConfig(**settings)


@pytest.fixture(scope="module")
def tiny_generator(tiny_model) -> DiffusersGenerator:
    generator = DiffusersGenerator(tiny_config(tiny_model))
    generator.load()
    return generator


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_tiny_pipeline_makes_deterministic_images_of_the_requested_size(tiny_generator):
    assert tiny_generator.dtype.is_floating_point and str(tiny_generator.dtype) == "torch.float32"  # fp16 -> fp32 on CPU
    prompts = ["a photo of a car"] * 3
    first = tiny_generator.generate(prompts, [11, 12, 11])  # two batches: (11, 12), (11,)
    again = tiny_generator.generate(prompts, [11, 12, 11])
    alone = tiny_generator.generate(prompts[:1], [12])
    assert [im.size for im in first] == [(48, 32)] * 3
    assert all(im.mode == "RGB" for im in first)
    # The same call again gives the same bytes.
    for a, b in zip(first, again):
        np.testing.assert_array_equal(pixels(a), pixels(b))
    # The same seed elsewhere in a batch, or alone: the same image up to float rounding.
    assert np.abs(pixels(first[0]) - pixels(first[2])).max() <= 1
    assert np.abs(pixels(first[1]) - pixels(alone[0])).max() <= 1
    # Another seed: another image.
    assert np.abs(pixels(first[0]) - pixels(first[1])).mean() > 5
    assert not any(is_blank(im) for im in first)


def test_model_default_size_and_explicit_pipeline_class(tiny_model):
    generator = DiffusersGenerator(
        tiny_config(tiny_model, pipeline_class="StableDiffusionPipeline", height=None, width=None, batch_size=1)
    )
    assert generator.generator_id == str(tiny_model)
    (image,) = generator.generate(["a bus"], [5])
    assert image.size == (64, 64)  # unet sample_size 32 x vae scale factor 2
    assert type(generator.load()).__name__ == "StableDiffusionPipeline"


class BlackingPipeline:
    """Wraps the real pipeline like a safety checker: blacks out the images chosen by `black(call)`."""

    def __init__(self, pipe, black):
        self.pipe, self.black, self.calls = pipe, black, 0

    def __call__(self, **kwargs):
        output = self.pipe(**kwargs)
        self.calls += 1
        images = [Image.new("RGB", im.size) if self.black(self.calls, i) else im for i, im in enumerate(output.images)]
        return SimpleNamespace(images=images)


def test_blank_image_is_regenerated_with_the_next_seed(tiny_generator, monkeypatch):
    # First call (all first attempts, one batch of 2): image 1 comes back black.
    fake = BlackingPipeline(tiny_generator.load(), lambda call, i: call == 1 and i == 1)
    monkeypatch.setattr(tiny_generator, "_pipe", fake)
    images = generate_class_images(tiny_generator, "car", TEMPLATES, 2, base_seed=9)
    assert [(g.attempt, g.seed) for g in images] == [
        (0, image_seed(9, "car", 0, 0)),
        (1, image_seed(9, "car", 1, 1)),
    ]
    assert fake.calls == 2 and not any(is_blank(g.image) for g in images)


def test_always_blank_fails_naming_class_prompt_and_seeds(tiny_generator, monkeypatch):
    monkeypatch.setattr(tiny_generator, "_pipe", BlackingPipeline(tiny_generator.load(), lambda call, i: True))
    with pytest.raises(BlankImageError) as error:
        generate_class_images(tiny_generator, "bus", ("a red {}",), 1, base_seed=0, max_blank_retries=1)
    message = str(error.value)
    assert "'bus'" in message and "'a red bus'" in message
    assert f"{image_seed(0, 'bus', 0, 0)}, {image_seed(0, 'bus', 0, 1)}" in message


def test_unreachable_hub_id_fails_fast_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generator = DiffusersGenerator(DiffusersConfig(model="someone/no-such-model-igloss", device="cpu"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        generator.generate(["a car"], [0])
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "someone/no-such-model-igloss" in message
    assert "prototypes.diffusers.model" in message
    assert "huggingface-cli download someone/no-such-model-igloss --local-dir" in message


def test_hub_without_network_falls_back_to_the_cache_then_fails_clearly(monkeypatch):
    def no_network(model_id):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(diffusers_backend, "hub_offline", lambda: False)
    monkeypatch.setattr(diffusers_backend, "probe_hub", no_network)
    with pytest.raises(ModelUnavailableError, match="hub is unreachable.*not in the local hub cache"):
        DiffusersGenerator(DiffusersConfig(model="someone/no-such-model-igloss", device="cpu")).load()


def test_missing_or_invalid_local_folder_fails_clearly(tmp_path):
    missing = tmp_path / "weights" / "sd"
    with pytest.raises(ModelUnavailableError, match="does not exist") as error:
        DiffusersGenerator(DiffusersConfig(model=str(missing), device="cpu")).load()
    assert str(missing) in str(error.value) and "prototypes.diffusers.model" in str(error.value)
    with pytest.raises(ModelUnavailableError, match="no model_index.json"):
        DiffusersGenerator(DiffusersConfig(model=str(tmp_path), device="cpu")).load()


def test_unknown_pipeline_class_fails_clearly(tiny_model):
    with pytest.raises(DiffusersConfigError, match="NoSuchPipeline.*not exported.*StableDiffusion3Pipeline"):
        DiffusersGenerator(tiny_config(tiny_model, pipeline_class="NoSuchPipeline"))
    with pytest.raises(DiffusersConfigError, match="not a diffusers pipeline"):
        DiffusersGenerator(tiny_config(tiny_model, pipeline_class="UNet2DConditionModel"))
    with pytest.raises(DiffusersConfigError, match="not a class name"):
        DiffusersConfig(pipeline_class="stable diffusion")
    with pytest.raises(DiffusersConfigError, match="batch_size"):
        DiffusersConfig(batch_size=0)


def test_generated_class_round_trips_through_the_manifest(tiny_generator, tmp_path):
    images = generate_class_images(tiny_generator, "car", TEMPLATES, 2, base_seed=1)
    entries = []
    for generated in images:
        name = prototype_file_name(generated.index)
        save_png(generated.image, tmp_path / name)
        entries.append(
            ManifestImage.for_image(
                name, generated.image, tiny_generator.generator_id, generated.prompt, generated.seed, generated.attempt
            )
        )
    manifest = ClassManifest("car", "diffusers", tuple(entries))
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert [e.prompt for e in manifest.images] == ["a photo of a car", "a car on a street"]


# --------------------------------------------------------------------------- authors' folder layout


def noise(width, height, mode="RGB", seed=0):
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))


@pytest.fixture()
def authors_root(tmp_path) -> Path:
    root = tmp_path / "prototypes"
    for folder, files in {
        "10_sidewalk": {"00000.png": (128, 96)},
        "0_barrier": {"st3_00000.png": (40, 40), "00001.png": (300, 200), "00000.png": (128, 128)},
        "2_traffic_cone": {"00000.png": (64, 160)},
    }.items():
        (root / folder).mkdir(parents=True)
        for i, (name, size) in enumerate(files.items()):
            noise(*size, mode=("RGB", "RGBA", "L")[i % 3], seed=i).save(root / folder / name)
    (root / "README.txt").write_text("not a class")  # loose files at the root are ignored
    return root


def test_scan_reads_class_folders_in_index_order(authors_root):
    found = scan_class_folders(authors_root)
    assert [(index, name) for index, name, _ in found] == [(0, "barrier"), (2, "traffic_cone"), (10, "sidewalk")]
    assert found[1].folder == authors_root / "2_traffic_cone"


def test_load_class_images_sorted_by_name_as_rgb(authors_root):
    loaded = load_class_images(authors_root, "barrier")
    assert [path.name for path, _ in loaded] == ["00000.png", "00001.png", "st3_00000.png"]
    assert [image.size for _, image in loaded] == [(128, 128), (300, 200), (40, 40)]
    assert all(image.mode == "RGB" for _, image in loaded)


def test_folder_errors_name_the_path(authors_root, tmp_path):
    with pytest.raises(PrototypeFolderError, match="does not exist"):
        scan_class_folders(tmp_path / "nowhere")
    with pytest.raises(PrototypeFolderError, match="class 'car'.*barrier, traffic_cone, sidewalk"):
        load_class_images(authors_root, "car")

    (authors_root / "3_grass").mkdir()
    (authors_root / "3_grass" / "notes.txt").write_text("no images")
    with pytest.raises(PrototypeFolderError, match="3_grass: class folder holds no PNG"):
        load_class_images(authors_root, "grass")

    (authors_root / "2_truck").mkdir()
    with pytest.raises(PrototypeFolderError, match="share index 2"):
        scan_class_folders(authors_root)
    (authors_root / "2_truck").rmdir()

    (authors_root / "10_sidewalk" / "00001.png").write_bytes(b"not a png at all")
    with pytest.raises(PrototypeFolderError, match="00001.png: cannot read the image"):
        load_class_images(authors_root, "sidewalk")

    (authors_root / "extras").mkdir()
    with pytest.raises(PrototypeFolderError, match="extras: a folder in the prototype root"):
        scan_class_folders(authors_root)


# --------------------------------------------------------------------------- manifest


def folder_manifest(folder: Path) -> ClassManifest:
    entries = []
    for i, size in enumerate([(20, 10), (16, 16)]):
        name = prototype_file_name(i)
        image = noise(*size, seed=i)
        save_png(image, folder / name)
        entries.append(ManifestImage.for_image(name, image, f"/data/authors/0_barrier/st3_0000{i}.png"))
    return ClassManifest("barrier", "folder", tuple(entries))


def test_manifest_round_trip_and_byte_stability(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    manifest = folder_manifest(a)
    assert folder_manifest(b) == manifest
    write_manifest(a, manifest)
    write_manifest(b, manifest)
    first = (a / MANIFEST_NAME).read_bytes()
    assert first == (b / MANIFEST_NAME).read_bytes()
    assert (a / "00000.png").read_bytes() == (b / "00000.png").read_bytes()
    write_manifest(a, read_manifest(a))
    assert (a / MANIFEST_NAME).read_bytes() == first
    assert read_manifest(a) == manifest
    text = first.decode()
    assert text.endswith("}\n") and text.index('"class_name"') < text.index('"images"') < text.index('"source"')
    assert json.loads(text)["images"][1] == {
        "attempt": 0,
        "file": "00001.png",
        "generator": "/data/authors/0_barrier/st3_00001.png",
        "height": 16,
        "prompt": None,
        "seed": None,
        "width": 16,
    }


def test_manifest_errors_name_the_file(tmp_path):
    manifest = folder_manifest(tmp_path)
    path = write_manifest(tmp_path, manifest)
    data = json.loads(path.read_text())

    del data["images"][0]["seed"]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"{path}: images\[0\]: missing field\(s\) seed"):
        read_manifest(tmp_path)

    data["images"][0]["seed"] = None
    data["source"] = "diffusers"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="must record its prompt"):
        read_manifest(tmp_path)

    write_manifest(tmp_path, manifest)
    (tmp_path / "00001.png").unlink()
    with pytest.raises(ManifestError, match=rf"{path}: lists 00001.png, which is missing"):
        read_manifest(tmp_path)

    noise(16, 16).save(tmp_path / "00001.png")
    noise(16, 16).save(tmp_path / "00007.png")
    with pytest.raises(ManifestError, match="does not list: 00007.png"):
        read_manifest(tmp_path)
    (tmp_path / "00007.png").unlink()

    noise(17, 16).save(tmp_path / "00001.png")
    with pytest.raises(ManifestError, match="00001.png is 17x16 but the manifest says 16x16"):
        read_manifest(tmp_path)

    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path)
