"""WaffleIron student: checkpoint compatibility, padding invariance, gradients, tiny training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_WAFFLEIRON as TINY
from conftest import NUSCENES_INTENSITY, random_points, save_scalr_layout

from pipeline.students.waffleiron.checkpoint import (
    CheckpointError,
    load_scalr_checkpoint,
    strip_module_prefix,
)
from pipeline.students.waffleiron.inputs import collate, prepare_scan
from pipeline.students.waffleiron.model import (
    WaffleIron,
    WaffleIronConfig,
    gather_from_grid,
    scatter_mean,
)


def tiny_model(seed: int = 0, config: WaffleIronConfig = TINY) -> WaffleIron:
    torch.manual_seed(seed)
    model = WaffleIron(config)
    # Non-trivial BatchNorm statistics, so eval mode is not an identity normalisation.
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def reference_shapes(
    width: int = 768, depth: int = 48, input_channels: int = 5, hidden: int = 2048, out: int = 1024
) -> dict[str, tuple[int, ...]]:
    """The state_dict of the released ScaLR+ model, written out from REFERENCE.md."""
    c, cin = width, input_channels

    def batchnorm(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}.weight": (n,),
            f"{prefix}.bias": (n,),
            f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,),
            f"{prefix}.num_batches_tracked": (),
        }

    shapes = {
        **batchnorm("embed.norm", cin),
        "embed.conv1.weight": (c, cin, 1),
        "embed.conv1.bias": (c,),
        **batchnorm("embed.conv2.0", cin),
        "embed.conv2.1.weight": (c, cin, 1, 1),
        **batchnorm("embed.conv2.2", c),
        "embed.conv2.4.weight": (c, c, 1, 1),
        "embed.final.weight": (c, 2 * c, 1),
        "embed.final.bias": (c,),
        "classif.0.weight": (hidden, c, 1),
        "classif.0.bias": (hidden,),
        "classif.2.weight": (out, hidden, 1),
        "classif.2.bias": (out,),
    }
    for i in range(depth):
        cm, sm = f"waffleiron.channel_mix.{i}", f"waffleiron.spatial_mix.{i}"
        shapes.update(
            {
                f"{cm}.norm.weight": (c,),
                f"{cm}.norm.bias": (c,),
                f"{cm}.mlp.0.weight": (c, c, 1),
                f"{cm}.mlp.0.bias": (c,),
                f"{cm}.mlp.2.weight": (c, c, 1),
                f"{cm}.mlp.2.bias": (c,),
                f"{cm}.scale.weight": (c, 1, 1),
                f"{sm}.norm.weight": (c,),
                f"{sm}.norm.bias": (c,),
                f"{sm}.ffn.0.weight": (c, 1, 3, 3),
                f"{sm}.ffn.0.bias": (c,),
                f"{sm}.ffn.2.weight": (c, 1, 3, 3),
                f"{sm}.ffn.2.bias": (c,),
                f"{sm}.scale.weight": (c, 1, 1),
            }
        )
    return shapes


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# --------------------------------------------------------------------------- architecture


def test_full_size_state_dict_matches_the_released_checkpoint() -> None:
    with torch.device("meta"):
        model = WaffleIron(WaffleIronConfig())
    assert shapes_of(model) == reference_shapes()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(63.1e6, rel=0.01)


def test_linear_head_is_a_single_conv() -> None:
    config = WaffleIronConfig(width=32, depth=2, head="linear", out_channels=16)
    with torch.device("meta"):
        model = WaffleIron(config)
    shapes = shapes_of(model)
    assert shapes["classif.weight"] == (16, 32, 1) and shapes["classif.bias"] == (16,)
    assert not any(key.startswith("classif.0") for key in shapes)


def test_blocks_cycle_through_the_grids() -> None:
    model = WaffleIron(WaffleIronConfig(width=8, depth=5, head_hidden=8, out_channels=4))
    grids = [block.grid for block in model.waffleiron.spatial_mix]
    assert grids == [(256, 256), (256, 32), (256, 32), (256, 256), (256, 32)]


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    config = WaffleIronConfig.from_dict(json.loads(json.dumps(TINY.to_dict())))
    assert config == TINY
    with pytest.raises(ValueError, match="head"):
        WaffleIronConfig(head="transformer")
    with pytest.raises(ValueError, match="projection_axes"):
        WaffleIronConfig(projection_axes=(2, 1))
    with pytest.raises(ValueError, match="unknown"):
        WaffleIronConfig.from_dict({"widht": 3})


# --------------------------------------------------------------------------- checkpoints


def test_strip_module_prefix() -> None:
    tensor = torch.zeros(1)
    assert strip_module_prefix({"module.a.b": tensor, "c": tensor}) == {"a.b": tensor, "c": tensor}


def test_scalr_checkpoint_round_trip(tmp_path) -> None:
    source = tiny_model(seed=1)
    path = tmp_path / "ckpt_last.pth"
    save_scalr_layout(path, source.state_dict())

    target = tiny_model(seed=2)
    epoch = load_scalr_checkpoint(path, target)

    assert epoch == 65
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_mismatched_checkpoint_lists_keys_and_path(tmp_path) -> None:
    state = tiny_model().state_dict()
    state.pop("waffleiron.channel_mix.2.scale.weight")
    state["waffleiron.final_norm.weight"] = torch.ones(16)
    path = tmp_path / "ckpt_last.pth"
    save_scalr_layout(path, state)

    with pytest.raises(CheckpointError) as error:
        load_scalr_checkpoint(path, tiny_model())
    message = str(error.value)
    assert str(path) in message
    assert "missing keys (1): waffleiron.channel_mix.2.scale.weight" in message
    assert "unexpected keys (1): waffleiron.final_norm.weight" in message


def test_checkpoint_of_another_width_reports_shapes(tmp_path) -> None:
    other = WaffleIronConfig(**{**TINY.to_dict(), "width": 24})
    path = tmp_path / "ckpt_last.pth"
    save_scalr_layout(path, WaffleIron(other).state_dict())
    with pytest.raises(CheckpointError, match=r"embed\.conv1\.weight: file \(24, 5, 1\) vs model \(16, 5, 1\)"):
        load_scalr_checkpoint(path, tiny_model())


class Opaque:
    """An arbitrary class: torch.load(weights_only=True) must refuse to rebuild it."""


def test_full_unpickling_needs_explicit_opt_in(tmp_path) -> None:
    path = tmp_path / "ckpt_last.pth"
    save_scalr_layout(path, tiny_model(seed=3).state_dict(), scheduler=Opaque())

    with pytest.raises(CheckpointError, match="allow_unsafe_pickle=True"):
        load_scalr_checkpoint(path, tiny_model())
    assert load_scalr_checkpoint(path, tiny_model(), allow_unsafe_pickle=True) == 65


def test_file_without_model_point_is_refused(tmp_path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="model_point"):
        load_scalr_checkpoint(path, tiny_model())


# --------------------------------------------------------------------------- forward


def test_scatter_mean_matches_a_naive_loop() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(2, 3, 7)
    cells = torch.tensor([[0, 2, 2, 5, 0, 2, 1], [4, 4, 4, 0, 3, 3, 0]])
    occupancy = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)

    plane = scatter_mean(tokens, cells, occupancy, num_cells=6)

    expected = torch.zeros(2, 3, 6)
    for b in range(2):
        for cell in range(6):
            members = [n for n in range(7) if cells[b, n] == cell and occupancy[b, n] > 0]
            if members:
                expected[b, :, cell] = tokens[b][:, members].mean(dim=1)
    torch.testing.assert_close(plane, expected)
    # Reading back gives each real point its cell's mean.
    torch.testing.assert_close(gather_from_grid(plane, cells)[0, :, 1], expected[0, :, 2])


def test_padding_does_not_change_outputs() -> None:
    model = tiny_model().eval()
    scans = [prepare_scan(random_points(n, seed), TINY, NUSCENES_INTENSITY) for seed, n in ((0, 300), (1, 180))]
    assert scans[0].num_points != scans[1].num_points

    with torch.no_grad():
        batch = collate(scans)
        together = batch.unpad(model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy))
        for scan, output in zip(scans, together):
            alone = collate([scan])
            expected = model(alone.features, alone.neighbors, alone.cell_indices, alone.occupancy)
            torch.testing.assert_close(output, alone.unpad(expected)[0], rtol=1e-5, atol=1e-5)
            # Extra padding beyond the largest scan does not matter either.
            padded = collate([scan], num_points=scan.num_points + 37)
            more = model(padded.features, padded.neighbors, list(padded.cell_indices.unbind(1)), padded.occupancy)
            torch.testing.assert_close(padded.unpad(more)[0], alone.unpad(expected)[0], rtol=1e-5, atol=1e-5)


def test_forward_follows_the_input_device() -> None:
    # The meta device has no data: any tensor created on a fixed device would fail here.
    model = WaffleIron(TINY).to("meta").eval()
    features = torch.empty(2, 5, 50, device="meta")
    neighbors = torch.zeros(2, 50, 5, dtype=torch.long, device="meta")
    cells = torch.zeros(2, 3, 50, dtype=torch.long, device="meta")
    output = model(features, neighbors, cells)
    assert output.device.type == "meta" and output.shape == (2, 8, 50)


def test_bad_input_shapes_are_named() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="cell_indices"):
        model(torch.zeros(1, 5, 20), torch.zeros(1, 20, 5, dtype=torch.long), torch.zeros(1, 2, 20, dtype=torch.long))


def test_gradients_reach_every_parameter() -> None:
    model = tiny_model().train()
    batch = collate([prepare_scan(random_points(n, n), TINY, NUSCENES_INTENSITY) for n in (250, 200)])
    output = model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy)
    output.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    batch = collate([prepare_scan(random_points(200, 5), TINY, NUSCENES_INTENSITY)])
    gradients = []
    for checkpointing in (False, True):
        config = WaffleIronConfig(**{**TINY.to_dict(), "checkpointing": checkpointing})
        model = tiny_model(seed=4, config=config).train()
        output = model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy)
        output.square().mean().backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, msg=name)


def test_drop_path_is_identity_in_eval_and_random_in_training() -> None:
    config = WaffleIronConfig(**{**TINY.to_dict(), "drop_path": 0.5})
    model = tiny_model(config=config)
    batch = collate([prepare_scan(random_points(150, s), TINY, NUSCENES_INTENSITY) for s in (7, 8)])
    inputs = (batch.features, batch.neighbors, batch.cell_indices, batch.occupancy)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), model(*inputs))
        model.train()
        torch.manual_seed(0)
        first = model(*inputs)
        torch.manual_seed(1)
        second = model(*inputs)
    assert not torch.allclose(first, second)


def test_two_optimisation_steps_reduce_a_cosine_loss() -> None:
    model = tiny_model(seed=5).train()
    scan = prepare_scan(random_points(400, 9), TINY, NUSCENES_INTENSITY)
    batch = collate([scan])
    generator = torch.Generator().manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(scan.num_points, TINY.out_channels, generator=generator), dim=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.03)

    def loss() -> torch.Tensor:
        output = batch.unpad(model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy))[0]
        return (1 - torch.nn.functional.cosine_similarity(output, target, dim=1)).mean()

    losses = []
    for _ in range(2):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
        losses.append(value.item())
    with torch.no_grad():
        losses.append(loss().item())
    assert losses[2] < losses[1] < losses[0]
