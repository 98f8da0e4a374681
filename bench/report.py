"""The bench report: `report.json` (every run of every figure) and `report.md` (the tables).

Reading it: each row is one case. `baseline` and `ours` give the median seconds per run with
(min - max) over the runs and the median CPU seconds; `ratio` is baseline median / ours median
(> 1: ours is faster); `target` says what the row must reach and `met` whether it does; a row
whose agreement check failed never counts as met. Facts and notes below each table say what
was measured and how.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import Curve, Row, Section, Timing, format_seconds


@dataclass
class Report:
    command: str
    started: str
    environment: dict[str, str]
    settings: dict[str, str]
    sections: list[Section] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def rows(self) -> list[Row]:
        return [row for section in self.sections for row in section.rows]

    @property
    def failed_checks(self) -> list[str]:
        return [f"{row.case}: {check.name}: {check.detail}" for row in self.rows for check in row.checks
                if check.kind == "agreement" and not check.passed]

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "report.json", out / "report.md"
        json_path.write_text(json.dumps(report_json(self), indent=2, allow_nan=False) + "\n")
        md_path.write_text(markdown(self))
        return json_path, md_path


# --------------------------------------------------------------------------- json


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else value


def timing_json(timing: Timing | None) -> dict | None:
    if timing is None:
        return None
    return {**asdict(timing), "median": timing.median, "min": timing.min, "max": timing.max,
            "cpu_median": timing.cpu_median, "per_unit": timing.median / timing.work}


def row_json(row: Row) -> dict:
    return {
        "case": row.case, "ours_name": row.ours_name, "ours": timing_json(row.ours),
        "baseline_name": row.baseline_name, "baseline": timing_json(row.baseline),
        "ratio": _finite(row.ratio), "cpu_ratio": _finite(row.cpu_ratio), "target": asdict(row.target) if row.target else None,
        "target_met": row.target_met, "agrees": row.agrees, "checks": [asdict(c) for c in row.checks],
        "facts": [{**asdict(f), "value": _finite(f.value)} for f in row.facts], "skipped": row.skipped,
    }


def curve_json(curve: Curve) -> dict:
    return {"name": curve.name, "sizes": list(curve.sizes), "timings": [timing_json(t) for t in curve.timings],
            "peak_mib": list(curve.peak_mib),
            "time_fit": {k: _finite(v) for k, v in asdict(curve.time_fit).items()},
            "memory_fit": {k: _finite(v) for k, v in asdict(curve.memory_fit).items()}}


def report_json(report: Report) -> dict:
    return {
        "command": report.command, "started": report.started, "wall_seconds": report.wall_seconds,
        "environment": report.environment, "settings": report.settings, "errors": report.errors,
        "sections": [{"title": s.title, "seconds": s.seconds, "rows": [row_json(r) for r in s.rows],
                      "curves": [curve_json(c) for c in s.curves], "notes": s.notes} for s in report.sections],
    }


# --------------------------------------------------------------------------- markdown


def _met(row: Row) -> str:
    met = row.target_met
    return "-" if met is None else ("**yes**" if met else "**NO**")


def _timing(timing: Timing | None) -> str:
    if timing is None:
        return "-"
    return (f"{format_seconds(timing.median)} ({format_seconds(timing.min)} - {format_seconds(timing.max)}), "
            f"cpu {format_seconds(timing.cpu_median)}")


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    return f"{row.ratio:.2f}x (cpu {row.cpu_ratio:.2f}x)" if row.cpu_ratio is not None else f"{row.ratio:.2f}x"


def _fact_value(value: float, unit: str) -> str:
    if unit == "s":
        return format_seconds(value)
    return f"{value:.4g} {unit}"


def markdown(report: Report) -> str:
    lines = ["# IGLOSS benchmark report", "", f"`{report.command}`, started {report.started}, "
             f"took {format_seconds(report.wall_seconds)}.", ""]
    lines += [f"- {key}: {value}" for key, value in {**report.environment, **report.settings}.items()]
    lines += ["- time by benchmark (set-up and checks included): "
              + ", ".join(f"{s.title.split(':')[0]} {format_seconds(s.seconds)}" for s in report.sections)]
    lines += ["", "Times are per run: median (min - max) over the runs, and the median CPU seconds "
              "(process and children). Ratio = baseline median / ours median.", ""]
    if report.errors:
        lines += ["## Errors", ""] + [f"- {error}" for error in report.errors] + [""]
    lines += ["## Targets", "", "| benchmark | case | target | ratio | ours (median) | agreement | met |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for section in report.sections:
        for row in section.rows:
            if row.target is None:
                continue
            ours = row.skipped or (format_seconds(row.ours.median) if row.ours else "-")
            lines.append(f"| {section.title} | {row.case} | {row.target.text} | {_ratio(row)} | {ours} | "
                         f"{'ok' if row.agrees else 'FAILED'} | {_met(row)} |")
    for section in report.sections:
        lines += ["", f"## {section.title}", "", "| case | baseline | ours | ratio | target | met |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in section.rows:
            baseline = f"{row.baseline_name}: {_timing(row.baseline)}" if row.baseline else "-"
            ours = f"{row.ours_name}: {row.skipped or _timing(row.ours)}"
            target = row.target.text if row.target else "-"
            lines.append(f"| {row.case} | {baseline} | {ours} | {_ratio(row)} | {target} | {_met(row)} |")
        for row in section.rows:
            details = [f"  - {c.kind} {'PASSED' if c.passed else 'FAILED'}: {c.name}: {c.detail}" for c in row.checks]
            details += [f"  - {f.name}: {_fact_value(f.value, f.unit)}" for f in row.facts]
            if details:
                lines += ["", f"- {row.case}, {row.ours_name}:"] + details
        for curve in section.curves:
            lines += ["", f"Scaling of {curve.name}:", "",
                      "| points | time (median, min - max) | time per point (fastest run) | peak memory |",
                      "| --- | --- | --- | --- |"]
            for size, timing, peak in zip(curve.sizes, curve.timings, curve.peak_mib):
                lines.append(f"| {size} | {_timing(timing)} | {format_seconds(timing.min / size)} | {peak:.1f} MiB |")
            lines.append("")
            lines.append(f"Fit on the fastest runs: time = {format_seconds(curve.time_fit.intercept)} + {curve.time_fit.slope:.3g} s x N "
                         f"(r2 {curve.time_fit.r2:.4f}, exponent at the top {curve.time_fit.upper_exponent:.2f}); "
                         f"memory = {curve.memory_fit.intercept:.1f} MiB + {curve.memory_fit.slope * 2**20:.1f} B x N "
                         f"(r2 {curve.memory_fit.r2:.4f}, exponent at the top {curve.memory_fit.upper_exponent:.2f}).")
        if section.notes:
            lines += [""] + [f"Note: {note}" for note in section.notes]
    return "\n".join(lines) + "\n"
