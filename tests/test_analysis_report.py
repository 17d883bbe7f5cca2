"""report.html is self-contained and every image loads in headless Chromium (Debian's `chromium`)."""

import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from analysis.cli import main
from analysis_fixtures import intro_points, write_store

CHROMIUM = shutil.which("chromium")
PROBE = ('<script>window.addEventListener("load",function(){var im=Array.from(document.images);'
         'var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;'
         'var p=document.createElement("p");p.id="imgcheck";p.textContent="IMAGES-LOADED "+ok+" OF "+im.length;'
         'document.body.appendChild(p);});</script>')


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sweep = write_store(str(root), "intro", intro_points(), ["data.density"], steps=2000, per_trial=3)
    assert main([sweep, "--formats", "png", "--max-timelines", "2", "--quiet"]) == 0
    out = os.path.join(sweep, "analysis")
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        page = f.read()
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return page, summary


def test_report_is_self_contained(report):
    page, summary = report
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(summary["figures"])
    for f in summary["figures"]:
        assert f["title"] in page or f["title"].replace("&", "&amp;") in page
    assert "Energy levels" in page and "Timelines" in page and "pentagon" in page


def _loaded(html: str, tmp: str) -> tuple[int, int]:
    path = os.path.join(tmp, "page.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(html.replace("</body>", PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={os.path.join(tmp, 'profile')}", "--virtual-time-budget=10000",
           "--dump-dom", "file://" + path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r"IMAGES-LOADED (\d+) OF (\d+)", proc.stdout)
    assert found, f"chromium printed no probe result (rc {proc.returncode}): {proc.stderr[-500:]}"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's `chromium` is not installed (make browser)")
def test_every_image_loads_in_headless_chromium(report):
    page, summary = report
    with tempfile.TemporaryDirectory() as tmp:
        ok, total = _loaded(page, tmp)
        assert total == len(summary["figures"]) and total >= 6
        assert ok == total
        # the probe notices a broken image
        broken = page.replace("</body>", '<img src="data:image/png;base64,AAAA"></body>')
        ok, total = _loaded(broken, tmp)
        assert total == len(summary["figures"]) + 1 and ok == total - 1
