"""The `dvc plots show` page draws its vega charts with no network (lab compute nodes are often
offline): .dvc/config points DVC at .dvc/plots_page/page.html, which loads vega, vega-lite and
vega-embed from .dvc/plots_page/vendor/ (put there by scripts/install.sh) instead of a CDN.

The page's wiring is checked everywhere; the drawing itself by scripts/check_plots_offline.py
in headless Chromium (skipped, saying so, where no Chromium is installed).
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_plots_offline.py"


def _load_check():
    spec = importlib.util.spec_from_file_location("check_plots_offline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = _load_check()
CHROMIUM = CHECK.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on this machine: the offline drawing check needs a headless browser "
           "(`apt-get install chromium`, or `python scripts/check_plots_offline.py --install-chromium`)")


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_dvc_config_names_the_offline_page():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    template = REPO / ".dvc" / config["plots"]["html_template"]
    assert template == CHECK.PAGE_DIR / "page.html" and template.is_file()
    text = template.read_text()
    assert "{plot_divs}" in text
    assert "{scripts}" not in text, "DVC would fill {scripts} with its CDN script tags"


def test_install_put_the_vega_scripts_in_place():
    for name in CHECK.VEGA_FILES:
        path = CHECK.VENDOR / name
        assert path.is_file() and path.stat().st_size > 50_000, f"{path}: run `bash scripts/install.sh`"


def test_page_loads_vega_from_the_project(tmp_path):
    """`dvc plots show` writes a page whose scripts resolve to the vendored files, none from DVC's CDN."""
    project = CHECK.make_project(tmp_path / "project")
    shown = subprocess.run([*CHECK.dvc_command(), "plots", "show"], cwd=project, capture_output=True,
                           text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    page = project / "dvc_plots" / "index.html"
    text = page.read_text()
    sources = re.findall(r'^\s*<script src="([^"]+)"></script>', text, flags=re.M)  # not the fallback's
    assert [Path(s).name for s in sources] == list(CHECK.VEGA_FILES)
    for source in sources:
        assert (page.parent / source).resolve() == (project / ".dvc/plots_page/vendor" / Path(source).name)
        assert (page.parent / source).is_file()
    assert "cdn.jsdelivr.net/npm/vega@5.20.2" not in text  # DVC's own script tags
    assert len(re.findall(r"vegaEmbed\('#", text)) == len(CHECK.CHARTS)


@needs_chromium
def test_every_chart_is_drawn_offline_in_chromium(tmp_path):
    result = run_check("--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS: all {len(CHECK.CHARTS)} vega charts drawn offline" in result.stdout
    assert (tmp_path / "screenshot.png").is_file()


@needs_chromium
def test_the_check_sees_the_blank_charts_of_dvcs_own_page(tmp_path):
    """The control: DVC's default page (vega from a CDN) must fail the same check offline."""
    result = run_check("--dvc-page", "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("is blank in the screenshot") == len(CHECK.CHARTS)
