"""Benchmarks of the IGLOSS pipeline against baselines, run as `python -m bench` (see bench/README.md).

Each benchmark module exposes `run(...) -> Section`; `__main__` runs the selected ones and
`report` writes the markdown and JSON report. `probe_2d_baseline.py` is a separate probe script.
"""
