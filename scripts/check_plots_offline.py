"""Check that the `dvc plots show` page draws every vega chart with no network at all.

    .venv/bin/python scripts/check_plots_offline.py [--install-chromium] [--out DIR]

It builds a scratch DVC project (git init, dvc init) that carries this repository's
`.dvc/config` and `.dvc/plots_page/` (the page template and the vega scripts that
`scripts/install.sh` puts in its vendor/ folder), declares plots as our dvc.yaml does (a linear
loss curve, `bar_horizontal` per-class IoU bars, a `confusion` matrix, and a PNG) over small
made-up CSVs, and runs `dvc plots show`. Then headless Chromium, with every host name
unresolvable and every connection sent to a closed port (so a CDN cannot be reached), opens
dvc_plots/index.html:

1. on a copy of the page with a probe script appended, it reads where each vega chart sits,
   whether vega-embed drew a canvas or svg in it, and which scripts the page loaded;
2. on the page itself it takes a screenshot (`screenshot.png` in the output folder), and counts
   the non-white pixels inside each chart's box.

It passes when every declared vega chart was drawn, each chart's box in the screenshot holds
enough ink, and no script came from the network. `--dvc-page` runs the same check on DVC's own page
(no plots.html_template), which must fail offline. Exit status 0 pass, 1 fail, 3 when no
Chromium is found (`--install-chromium` installs Debian's `chromium` with apt-get first).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE_DIR = REPO / ".dvc" / "plots_page"
VENDOR = PAGE_DIR / "vendor"
VEGA_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
NO_CHROMIUM = 3

# The vega charts of the scratch project: (file, its dvc.yaml plot entry). Mirrors dvc.yaml.
CHARTS = {
    "plots/distill/train_loss.csv": {"x": "step", "y": "loss", "title": "distillation loss per step"},
    "metrics/per_class_iou.csv": {"template": "bar_horizontal", "x": "3d", "y": "class",
                                  "title": "per-class IoU of the 3D labels"},
    "metrics/confusion_3d.csv": {"template": "confusion", "x": "prediction", "y": "truth",
                                 "title": "confusion of the 3D labels"},
}
CLASSES = ("car", "pedestrian", "road", "sidewalk", "vegetation", "building")
MIN_INK_PIXELS = 400      # non-white pixels a chart's box must hold in the screenshot
MIN_INK_SHARE = 0.004     # and as a share of the box
MIN_BOX = 100             # a drawn chart is at least this wide and high (CSS px)
WIDTH, HEIGHT = 1200, 900 # the window (CSS px); the screenshot grows to the page's height

PROBE = """
<pre id="offline-probe"></pre>
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var charts = [];
    CHART_IDS.forEach(function (id) {
      var div = document.getElementById(id);
      if (!div) {
        charts.push({id: id, x: 0, y: 0, w: 0, h: 0, canvas: false, svg: false, canvas_ink: 0});
        return;
      }
      var r = div.getBoundingClientRect();
      var canvas = div.querySelector("canvas"), svg = div.querySelector("svg.marks");
      var ink = 0;
      if (canvas && canvas.width && canvas.height) {
        var d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        for (var i = 0; i < d.length; i += 4)
          if (d[i + 3] > 0 && (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240)) ink++;
      }
      charts.push({id: div.id, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height,
                   canvas: !!canvas, svg: !!svg, canvas_ink: ink});
    });
    var scripts = Array.prototype.map.call(document.scripts, function (s) { return s.src; })
      .filter(function (src) { return src; });
    document.getElementById("offline-probe").textContent = JSON.stringify({
      charts: charts, scripts: scripts,
      vega: typeof vega === "undefined" ? null : vega.version,
      vega_lite: typeof vegaLite === "undefined" ? null : vegaLite.version,
      vega_embed: typeof vegaEmbed === "undefined" ? null : vegaEmbed.version,
      width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight});
  }, 2000);
});
</script>
"""


def find_chromium() -> str | None:
    """The Chromium to use: $CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def install_chromium() -> None:
    print("[check] installing Debian's chromium (apt-get)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def dvc_command() -> list[str]:
    beside = Path(sys.executable).parent / "dvc"
    return [str(beside)] if beside.exists() else ["dvc"]


def make_project(folder: Path, dvc_page: bool = False) -> Path:
    """A scratch DVC project with this repository's plots config and page, and plot data;
    `dvc_page`: without our config, so that `dvc plots show` writes DVC's own (CDN) page."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run([*dvc_command(), "init", "-q"], cwd=folder, check=True, env=env)
    if not dvc_page:
        shutil.copy(REPO / ".dvc" / "config", folder / ".dvc" / "config")
    shutil.copytree(PAGE_DIR, folder / ".dvc" / "plots_page")

    loss = folder / "plots" / "distill" / "train_loss.csv"
    loss.parent.mkdir(parents=True)
    loss.write_text("step,loss\n" + "".join(f"{s},{2.0 * 0.97 ** s + 0.05 * (s % 3):.4f}\n"
                                            for s in range(60)))
    (folder / "metrics").mkdir()
    (folder / "metrics" / "per_class_iou.csv").write_text(
        "class,3d,3d_visible,2d_baseline\n"
        + "".join(f"{c},{0.95 - 0.07 * i:.3f},{0.96 - 0.06 * i:.3f},{0.9 - 0.08 * i:.3f}\n"
                  for i, c in enumerate(CLASSES)))
    rows = []
    for t, truth in enumerate(CLASSES):
        for p, prediction in enumerate(CLASSES):
            points = 900 if t == p else (40 if abs(t - p) == 1 else 0)
            if points:
                rows.append(f"{truth},{prediction},{points}\n")
    (folder / "metrics" / "confusion_3d.csv").write_text("truth,prediction,points\n" + "".join(rows))

    picture = folder / "plots" / "distill" / "train_loss.png"
    from PIL import Image, ImageDraw  # the project's dependencies bring Pillow

    image = Image.new("RGB", (240, 120), "white")
    ImageDraw.Draw(image).line([(10, 20), (80, 80), (230, 100)], fill="navy", width=3)
    image.save(picture)

    lines = ["plots:"]
    for name, props in CHARTS.items():
        lines.append(f"  - {name}:")
        lines += [f"      {key}: {value}" for key, value in props.items()]
    lines.append("  - plots/distill/train_loss.png")
    (folder / "dvc.yaml").write_text("\n".join(lines) + "\n")
    return folder


def chromium_run(chromium: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium with no way out: host names do not resolve, connections go to a
    closed local port."""
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--mute-audio",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--force-device-scale-factor=1",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=15000", *extra, url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def ink_in_box(screenshot: Path, box: dict) -> tuple[int, int]:
    """Non-white pixels (any channel below 240) in `box` of the screenshot, and the box's area."""
    import numpy as np
    from PIL import Image

    with Image.open(screenshot) as image:
        rgb = image.convert("RGB")
        left, top = max(0, int(box["x"])), max(0, int(box["y"]))
        right = min(rgb.width, int(box["x"] + box["w"]))
        bottom = min(rgb.height, int(box["y"] + box["h"]))
        if right <= left or bottom <= top:
            return 0, 0
        pixels = np.asarray(rgb.crop((left, top, right, bottom)))
        return int((pixels < 240).any(axis=2).sum()), pixels.shape[0] * pixels.shape[1]


def check(out: Path, chromium: str, dvc_page: bool = False) -> list[str]:
    """Builds, renders and inspects the page; returns the failures (empty: pass)."""
    missing = [name for name in VEGA_FILES if not (VENDOR / name).is_file()]
    if missing:
        return [f"{VENDOR.relative_to(REPO)} lacks {', '.join(missing)}: run `bash scripts/install.sh`"]

    project = make_project(out / "project", dvc_page)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    shown = subprocess.run([*dvc_command(), "plots", "show"], cwd=project, env=env,
                           capture_output=True, text=True)
    page = project / "dvc_plots" / "index.html"
    if shown.returncode != 0 or not page.is_file():
        return [f"`dvc plots show` failed ({shown.returncode}):\n{shown.stdout}{shown.stderr}"]
    print(f"[check] dvc plots show wrote {page}", flush=True)
    text = page.read_text(encoding="utf8")
    failures = []
    if "cdn.jsdelivr.net/npm/vega@5.20.2" in text:
        failures.append("the page carries DVC's own CDN scripts: is .dvc/config's "
                        "plots.html_template set to plots_page/page.html?")

    probe_page = page.with_name("offline_probe.html")
    chart_ids = re.findall(r"vegaEmbed\('#([^']+)'", text)
    probe = PROBE.replace("CHART_IDS", json.dumps(chart_ids))
    probe_page.write_text(text.replace("</body>", probe + "</body>"), encoding="utf8")
    dumped = chromium_run(chromium, probe_page.as_uri(), out / "profile", "--dump-dom",
                          f"--window-size={WIDTH},{HEIGHT}")
    probe_page.unlink()
    found = re.search(r'<pre id="offline-probe">(.*?)</pre>', dumped.stdout, flags=re.S)
    if dumped.returncode != 0 or not found or not found.group(1).strip():
        return failures + [f"the probe page gave no result (chromium exit {dumped.returncode}):\n"
                           f"{dumped.stderr[-2000:]}"]
    probe = json.loads(html.unescape(found.group(1)))
    (out / "probe.json").write_text(json.dumps(probe, indent=1))
    print(f"[check] vega {probe['vega']}, vega-lite {probe['vega_lite']}, "
          f"vega-embed {probe['vega_embed']}; scripts loaded: "
          + ", ".join(Path(s).name for s in probe["scripts"]), flush=True)

    remote = [s for s in probe["scripts"] if not s.startswith("file:")]
    if remote:
        failures.append(f"scripts from the network: {remote}")
    if not (probe["vega"] and probe["vega_lite"] and probe["vega_embed"]):
        failures.append("vega, vega-lite or vega-embed did not load")
    if len(probe["charts"]) != len(CHARTS):
        failures.append(f"{len(probe['charts'])} vega charts on the page, expected {len(CHARTS)}")
    if not probe["scripts"]:
        failures.append("the page names no scripts")

    screenshot = out / "screenshot.png"
    # The same width as the probe's window, so the charts sit where the probe saw them.
    width, height = WIDTH, max(HEIGHT, int(probe["height"]))
    shot = chromium_run(chromium, page.as_uri(), out / "profile", f"--screenshot={screenshot}",
                        f"--window-size={width},{height}")
    if shot.returncode != 0 or not screenshot.is_file():
        return failures + [f"no screenshot (chromium exit {shot.returncode}):\n{shot.stderr[-2000:]}"]
    print(f"[check] screenshot {screenshot} ({width}x{height})", flush=True)

    for chart in probe["charts"]:
        ink, area = ink_in_box(screenshot, chart)
        share = ink / area if area else 0.0
        drawn = chart["canvas"] or chart["svg"]
        ok = (drawn and chart["w"] >= MIN_BOX and chart["h"] >= MIN_BOX
              and ink >= MIN_INK_PIXELS and share >= MIN_INK_SHARE)
        kind = "canvas" if chart["canvas"] else "svg" if chart["svg"] else "nothing"
        print(f"[check] chart #{chart['id']}: {chart['w']:.0f}x{chart['h']:.0f} px at "
              f"({chart['x']:.0f},{chart['y']:.0f}), {kind} drawn, {ink} non-white pixels "
              f"({share:.1%}) in the screenshot: {'ok' if ok else 'BLANK'}",
              flush=True)
        if not ok:
            failures.append(f"chart #{chart['id']} is blank in the screenshot "
                            f"({ink} non-white pixels, {share:.2%} of {area} px)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install-chromium", action="store_true",
                        help="install Debian's chromium with apt-get when none is found")
    parser.add_argument("--out", type=Path, help="keep the project, screenshot.png and probe.json here "
                                                 "(default: a temporary folder, removed)")
    parser.add_argument("--dvc-page", action="store_true",
                        help="control run: check DVC's own page (vega from a CDN) instead of ours; "
                             "offline it must FAIL, which shows the check can see blank charts")
    args = parser.parse_args()

    chromium = find_chromium()
    if chromium is None and args.install_chromium:
        install_chromium()
        chromium = find_chromium()
    if chromium is None:
        print("[check] no Chromium found (chromium, chromium-browser, google-chrome or $CHROMIUM); "
              "rerun with --install-chromium, or `apt-get install chromium`", file=sys.stderr)
        return NO_CHROMIUM

    with tempfile.TemporaryDirectory(prefix="plots-offline-") as scratch:
        out = args.out.resolve() if args.out else Path(scratch)
        if args.out:  # only what the check itself writes there is replaced
            out.mkdir(parents=True, exist_ok=True)
            for made in ("project", "profile"):
                shutil.rmtree(out / made, ignore_errors=True)
        failures = check(out, chromium, args.dvc_page)
    if failures:
        print("[check] FAIL\n" + "\n".join(f"  - {f}" for f in failures), file=sys.stderr)
        return 1
    print(f"[check] PASS: all {len(CHARTS)} vega charts drawn offline", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
