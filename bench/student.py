"""Benchmark 2: the WaffleIron forward over one scan, plain and with inference optimisations.

Variants, all computing the same function from the same weights:

* `eager`: the straightforward eager build of REFERENCE.md (`bench/eager_waffleiron.py`),
  under `torch.no_grad`: the baseline.
* `module`: the pipeline's `WaffleIron` under `torch.inference_mode`, as `point_features` runs it.
* `folded-fp32` / `folded-bf16`: `pipeline.students.waffleiron.folded.InferenceWaffleIron`: BatchNorms,
  LayerScales and LayerNorm affines folded, channels-last (N, C) tokens and NHWC planes, the
  embedding's first layer applied per point and chunked, and GEMMs in bf16 for the bf16 one
  (only where `bf16_supported`).

Each variant runs in a fresh process (`python -m bench.student --case ...`), so its peak memory
is its own: the resident-set high-water mark over the timed forwards, above the memory held
before them (model weights and inputs), or the CUDA allocator's peak. Weights are random but
realistic: LayerNorm affines drawn around (1, 0) and BatchNorm statistics set, as training
would, by one train-mode pass over a calibration subset of the scan.

Full width (768) and the release grids, but a reduced number of identical blocks: the forward
at depth 48 on two CPU cores takes minutes per variant. The blocks cycle over the three grids,
so a depth that is a multiple of 3 holds every kind of block equally often; the backbone's time
is measured on its own (forward hooks), and the full-depth time is extrapolated as
`T48 = T - B + B * 48 / depth` per run (T: measured forward, B: its backbone part). The
report shows the arithmetic; `--full-depth` also runs one real depth-48 forward to validate it.
"""

from __future__ import annotations

import argparse
import enum
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    Fact,
    Row,
    Section,
    Target,
    Timing,
    cosine_check,
    format_seconds,
    peak_rss_above_start,
    run_isolated,
)
from bench.eager_waffleiron import EagerWaffleIron
from pipeline.datasets import DATASET_FORMATS
from pipeline.students.waffleiron import (
    InferenceOptions,
    InferenceWaffleIron,
    PointBatch,
    WaffleIron,
    WaffleIronConfig,
    bf16_supported,
    collate,
    prepare_scan,
)

RELEASE_DEPTH = 48
MIN_COSINE = 0.999


class Variant(enum.Enum):
    EAGER = "eager"
    MODULE = "module"
    FOLDED_FP32 = "folded-fp32"
    FOLDED_BF16 = "folded-bf16"


DESCRIPTIONS = {
    Variant.EAGER: "straightforward eager build (no_grad)",
    Variant.MODULE: "pipeline WaffleIron (inference_mode)",
    Variant.FOLDED_FP32: "InferenceWaffleIron fp32 (folded, channels-last)",
    Variant.FOLDED_BF16: "InferenceWaffleIron bf16 (folded, channels-last)",
}


@dataclass(frozen=True)
class StudentCase:
    """One variant on one scan, run in its own process. JSON-able (`run_isolated`).

    points_file: .npy float32 (M, >=4) raw points; num_points: subsample them to this many
    first (None: all); voxel_size: of the pre-processing (0.1 m as the release; tiny to keep
    nearly every point for the scaling curve).
    """

    variant: str
    points_file: str
    width: int = 768
    depth: int = 3
    head_hidden: int = 2048
    out_channels: int = 1024
    num_points: int | None = None
    voxel_size: float = 0.1
    runs: int = 5
    device: str = "cpu"
    seed: int = 0
    output_file: str | None = None
    calibration_points: int = 2000

    def config(self) -> WaffleIronConfig:
        return WaffleIronConfig(width=self.width, depth=self.depth, head_hidden=self.head_hidden,
                                out_channels=self.out_channels, voxel_size=self.voxel_size, drop_path=0.0)


@dataclass(frozen=True)
class CaseResult:
    """Per-run seconds of the whole forward and of its backbone part, and the peak memory."""

    variant: str
    num_points: int
    depth: int
    wall: tuple[float, ...]
    cpu: tuple[float, ...]
    backbone_wall: tuple[float, ...]
    backbone_cpu: tuple[float, ...]
    peak_mib: float
    peak_method: str
    weights_mib: float

    @classmethod
    def from_json(cls, data: dict) -> CaseResult:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def timing(self, unit: str = "scan") -> Timing:
        return Timing(self.wall, self.cpu, 1.0, unit)

    def extrapolated(self, depth: int = RELEASE_DEPTH) -> Timing:
        """Per run: T - B + B * depth / measured depth (see the module docstring)."""
        factor = depth / self.depth
        wall = tuple(t - b + b * factor for t, b in zip(self.wall, self.backbone_wall))
        cpu = tuple(t - b + b * factor for t, b in zip(self.cpu, self.backbone_cpu))
        return Timing(wall, cpu, 1.0, "scan")


# --------------------------------------------------------------------------- the child process


def load_points(case: StudentCase) -> np.ndarray:
    points = np.load(case.points_file, allow_pickle=False)
    if case.num_points is not None and case.num_points < len(points):
        rng = np.random.default_rng(case.seed)
        points = points[np.sort(rng.choice(len(points), case.num_points, replace=False))]
    return points


def benchmark_model(config: WaffleIronConfig, calibration: PointBatch, seed: int) -> WaffleIron:
    """A WaffleIron with deterministic random weights whose norms are not identities.

    LayerNorm affines are drawn around (1, 0); BatchNorm statistics are set from one
    train-mode pass of the embedding over `calibration` (momentum 1: the batch statistics).
    """
    torch.manual_seed(seed)
    model = WaffleIron(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in batchnorms:
            bn.momentum = 1.0
        model.embed.train()(calibration.features, calibration.neighbors)
        for bn in batchnorms:
            bn.momentum = 0.1
    return model.eval()


def build_variant(variant: Variant, model: WaffleIron, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(network, its backbone module) for a variant, on `device`."""
    if variant is Variant.EAGER:
        eager = EagerWaffleIron(model.config)
        eager.load_state_dict(model.state_dict(), strict=True)  # the same weights, or an error
        eager = eager.eval().to(device)
        return eager, eager.waffleiron
    if variant is Variant.MODULE:
        model = model.to(device)
        return model, model.waffleiron
    precision = "fp32" if variant is Variant.FOLDED_FP32 else "bf16"
    folded = InferenceWaffleIron.from_model(model, InferenceOptions(precision=precision), device)
    return folded, folded.backbone


class PartTimer:
    """Wall and CPU seconds spent in one module per forward, through forward hooks."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0
        self._start = (0.0, 0.0)
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _before(self, *_) -> None:
        self._sync()
        self._start = (time.perf_counter(), time.process_time())

    def _after(self, *_) -> None:
        self._sync()
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]

    def take(self) -> tuple[float, float]:
        out = (self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return out


def run_case(case: StudentCase) -> CaseResult:
    """Prepare the scan, build the variant, warm up, time `runs` forwards, measure peak memory."""
    device = torch.device(case.device)
    variant = Variant(case.variant)
    config = case.config()
    points = load_points(case)
    batch = collate([prepare_scan(points, config, DATASET_FORMATS["nuscenes"].intensity)]).to(device)
    small = np.random.default_rng(case.seed + 1).choice(len(points), min(case.calibration_points, len(points)),
                                                        replace=False)
    calibration = collate([prepare_scan(points[np.sort(small)], config, DATASET_FORMATS["nuscenes"].intensity)])
    model = benchmark_model(config, calibration, case.seed)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    network, backbone = build_variant(variant, model, device)
    context = torch.no_grad if variant is Variant.EAGER else torch.inference_mode
    calibration = calibration.to(device)

    def forward(inputs: PointBatch) -> torch.Tensor:
        with context():
            return network(inputs.features, inputs.neighbors, inputs.cell_indices, inputs.occupancy)

    forward(calibration)  # warm-up: kernel selection and lazy initialisation, on few points
    timer = PartTimer(backbone, device)
    timer.take()
    walls, cpus, backbone_walls, backbone_cpus = [], [], [], []
    output = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    with peak_rss_above_start() as peak:
        for _ in range(case.runs):
            output = None  # free the previous output before the next forward
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            output = forward(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            part_wall, part_cpu = timer.take()
            backbone_walls.append(part_wall)
            backbone_cpus.append(part_cpu)
    if device.type == "cuda":
        peak_mib, method = (torch.cuda.max_memory_allocated(device) - start_bytes) / 2**20, "CUDA allocator peak"
    else:
        peak_mib, method = peak.peak_mib, peak.method
    if case.output_file:
        np.save(case.output_file, batch.unpad(output)[0].float().cpu().numpy(), allow_pickle=False)
    return CaseResult(case.variant, batch.num_points[0], case.depth, tuple(walls), tuple(cpus),
                      tuple(backbone_walls), tuple(backbone_cpus), peak_mib, method, weights_mib)


def run(case: StudentCase, isolate: bool) -> CaseResult:
    """`run_case` in a fresh process (honest peak memory) or in this one (quick smoke runs)."""
    if isolate:
        return CaseResult.from_json(run_isolated("bench.student", case))
    return run_case(case)


# --------------------------------------------------------------------------- agreement


# --------------------------------------------------------------------------- the benchmark


def variants_for(device: torch.device) -> list[Variant]:
    variants = [Variant.EAGER, Variant.MODULE, Variant.FOLDED_FP32]
    if bf16_supported(device):
        variants.append(Variant.FOLDED_BF16)
    return variants


def default_variant(device: torch.device) -> Variant:
    """The variant `InferenceOptions(precision="auto")` picks: the one the target applies to."""
    return Variant.FOLDED_BF16 if bf16_supported(device) else Variant.FOLDED_FP32


def run_benchmark(points_file: Path, scratch: Path, device: torch.device, runs: int, depth: int,
                  isolate: bool, full_depth: bool, width: int = 768, head_hidden: int = 2048,
                  out_channels: int = 1024) -> tuple[Section, dict[Variant, CaseResult]]:
    """The section, and each variant's measurement (the vocabulary benchmark extrapolates from them)."""
    section = Section("2. Student forward: WaffleIron over one scan")
    if depth % 3:
        raise ValueError(f"--student-depth must be a multiple of 3 (one block per grid), got {depth}")
    base = StudentCase(variant=Variant.EAGER.value, points_file=str(points_file), width=width, depth=depth,
                       head_hidden=head_hidden, out_channels=out_channels, runs=runs, device=device.type)
    results: dict[Variant, CaseResult] = {}
    outputs: dict[Variant, np.ndarray] = {}
    for variant in variants_for(device):
        output_file = scratch / f"student-{variant.value}.npy"
        results[variant] = run(replace(base, variant=variant.value, output_file=str(output_file)), isolate)
        outputs[variant] = np.load(output_file, allow_pickle=False)
    eager = results[Variant.EAGER]
    num_points = eager.num_points
    for variant, result in results.items():
        if variant is Variant.EAGER:
            continue
        full = result.extrapolated()
        row = Row(
            case=f"{num_points} points (one demo scan after 0.1 m voxels), width {width}, depth {RELEASE_DEPTH} "
                 f"extrapolated from {depth}",
            ours_name=DESCRIPTIONS[variant],
            ours=full,
            baseline_name=DESCRIPTIONS[Variant.EAGER],
            baseline=eager.extrapolated(),
            target=Target(">= 1.3x over the eager build, cosine >= 0.999", min_ratio=1.3)
            if variant is default_variant(device) else None,
            checks=[cosine_check("features agree with the eager build", outputs[variant], outputs[Variant.EAGER],
                                 MIN_COSINE)],
            facts=student_facts(result) + [Fact("eager build, peak memory above weights and inputs",
                                                eager.peak_mib, "MiB")],
        )
        section.rows.append(row)
    section.notes.append(extrapolation_note(results))
    section.notes.append(
        f"Peak memory: {eager.peak_method} in a fresh process per variant{'' if isolate else ' (NOT isolated: quick run)'}"
        f", over the timed forwards, above the memory held before them; the weights themselves "
        f"({eager.weights_mib:.0f} MiB fp32 at depth {depth}, x{RELEASE_DEPTH // depth} at depth {RELEASE_DEPTH}) "
        "are not included. Peak memory does not grow with depth (blocks run one after the other)."
    )
    if full_depth:
        section.rows.extend(full_depth_rows(base, scratch, device, isolate, results))
    return section, results


def student_facts(result: CaseResult) -> list[Fact]:
    full = result.extrapolated()
    backbone = float(np.median(result.backbone_wall))
    return [
        Fact(f"measured forward at depth {result.depth} (median)", result.timing().median, "s"),
        Fact("one block (median backbone time / depth)", backbone / result.depth, "s"),
        Fact(f"points per second at depth {RELEASE_DEPTH}", result.num_points / full.median, "point/s"),
        Fact("peak memory above weights and inputs", result.peak_mib, "MiB"),
    ]


def extrapolation_note(results: dict[Variant, CaseResult]) -> str:
    parts = []
    for variant, result in results.items():
        t, b = result.timing().median, float(np.median(result.backbone_wall))
        factor = RELEASE_DEPTH / result.depth
        parts.append(f"{variant.value}: {format_seconds(t)} - {format_seconds(b)} + {format_seconds(b)} x {factor:g} "
                     f"= {format_seconds(t - b + b * factor)}")
    return ("Depth-48 time per run = T - B + B x 48 / depth, with T the measured forward and B its backbone "
            "part (medians shown): " + "; ".join(parts) + ".")


def full_depth_rows(base: StudentCase, scratch: Path, device: torch.device, isolate: bool,
                    measured: dict[Variant, CaseResult]) -> list[Row]:
    """One real depth-48 forward of the eager build and of the default variant, against the extrapolation."""
    rows = []
    for variant in (Variant.EAGER, default_variant(device)):
        result = run(replace(base, variant=variant.value, depth=RELEASE_DEPTH, runs=1), isolate)
        predicted = measured[variant].extrapolated().median
        rows.append(Row(
            case=f"validation: one real depth-{RELEASE_DEPTH} forward, {result.num_points} points",
            ours_name=DESCRIPTIONS[variant],
            ours=result.timing(),
            facts=[Fact("extrapolated from the reduced depth", predicted, "s"),
                   Fact("measured / extrapolated", result.timing().median / predicted, "x"),
                   Fact("peak memory above weights and inputs", result.peak_mib, "MiB")],
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one student benchmark case (used by bench in a fresh process).")
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    case = StudentCase(**json.loads(args.case.read_text()))
    args.result.write_text(json.dumps(asdict(run_case(case))))


if __name__ == "__main__":
    main()
