"""InferenceWaffleIron: the folded, channels-last inference path computes WaffleIron's function."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_WAFFLEIRON as TINY
from conftest import NUSCENES_INTENSITY, random_points

from pipeline.students.waffleiron.folded import (
    InferenceOptions,
    InferenceWaffleIron,
    bf16_supported,
)
from pipeline.students.waffleiron.inputs import collate, prepare_scan
from pipeline.students.waffleiron.model import WaffleIron, WaffleIronConfig

def trained_looking(config: WaffleIronConfig = TINY, seed: int = 0) -> WaffleIron:
    """Random weights with norms that are not identities, so every fold is exercised."""
    torch.manual_seed(seed)
    model = WaffleIron(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    """Two scans of different sizes: the smaller one is padded."""
    scans = [prepare_scan(random_points(n, seed), TINY, NUSCENES_INTENSITY) for n, seed in ((300, 1), (180, 2))]
    return collate(scans)


def outputs(model, batch) -> list[torch.Tensor]:
    with torch.inference_mode():
        return batch.unpad(model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_fp32_matches_the_module(batch, head):
    config = WaffleIronConfig(**{**TINY.to_dict(), "head": head})
    model = trained_looking(config)
    folded = InferenceWaffleIron.from_model(model, InferenceOptions(precision="fp32", chunk_points=64))
    for expected, got in zip(outputs(model, batch), outputs(folded, batch)):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bf16_agrees_to_cosine(batch):
    model = trained_looking()
    folded = InferenceWaffleIron.from_model(model, InferenceOptions(precision="bf16"))
    assert folded.dtype == torch.bfloat16
    for expected, got in zip(outputs(model, batch), outputs(folded, batch)):
        assert got.dtype == torch.float32
        assert cosine(got, expected).min() > 0.999


def test_folding_detects_a_different_model(batch):
    """The comparison above can fail: other weights give other features."""
    expected = outputs(trained_looking(seed=0), batch)
    other = InferenceWaffleIron.from_model(trained_looking(seed=1), InferenceOptions(precision="fp32"))
    assert cosine(outputs(other, batch)[0], expected[0]).min() < 0.99


def test_source_model_is_left_unchanged():
    model = trained_looking()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    InferenceWaffleIron.from_model(model, InferenceOptions(precision="bf16"))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not model.training


def test_padding_does_not_change_real_points(batch):
    folded = InferenceWaffleIron.from_model(trained_looking(), InferenceOptions(precision="fp32"))
    single = collate([prepare_scan(random_points(180, 2), TINY, NUSCENES_INTENSITY)])
    torch.testing.assert_close(outputs(folded, batch)[1], outputs(folded, single)[0], rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_the_result(batch):
    model = trained_looking()
    small = InferenceWaffleIron.from_model(model, InferenceOptions(precision="fp32", chunk_points=7))
    large = InferenceWaffleIron.from_model(model, InferenceOptions(precision="fp32", chunk_points=4096))
    torch.testing.assert_close(outputs(small, batch)[0], outputs(large, batch)[0], rtol=1e-5, atol=1e-6)


def test_inference_only_and_options_validated():
    folded = InferenceWaffleIron.from_model(trained_looking(), InferenceOptions(precision="fp32"))
    with pytest.raises(RuntimeError, match="inference-only"):
        folded.train()
    with pytest.raises(ValueError, match="precision"):
        InferenceOptions(precision="fp16")
    with pytest.raises(ValueError, match="chunk_points"):
        InferenceOptions(chunk_points=0)
    assert isinstance(bf16_supported("cpu"), bool)
    expected = torch.bfloat16 if bf16_supported("cpu") else torch.float32
    assert InferenceOptions(precision="auto").compute_dtype("cpu") == expected


def test_for_inference_folds_and_runs_prepared_scans_as_the_module():
    """`WaffleIron.for_inference` is the folded build the point_features stage runs, and it takes
    the module's prepared scans (`run_batch`)."""
    model = trained_looking()
    folded = model.for_inference("fp32")
    assert isinstance(folded, InferenceWaffleIron) and folded.dtype == torch.float32 and folded.config == TINY
    scans = [prepare_scan(random_points(n, seed), TINY, NUSCENES_INTENSITY) for n, seed in ((300, 1), (180, 2))]
    cpu = torch.device("cpu")
    with torch.inference_mode():
        for expected, got in zip(model.run_batch(scans, cpu), folded.run_batch(scans, cpu)):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
