"""Reports: Markdown + self-contained HTML, rendered in headless Chromium, showing the real numbers."""

import re
import shutil
import subprocess

import pytest

from nncertify.certify.records import (GameResult, LipschitzResult, RobustnessResult, SampleVerdict, StepRadiusResult,
                             make_certificate, model_ref)
from nncertify.certify.report import write_report


def certificates():
    out = []
    for eps, nv in [(0.01, 9), (0.02, 7), (0.04, 3)]:
        samples = [SampleVerdict(index=i, label=i % 10, status="verified" if i < nv else "unknown",
                                 margin_lower=1.0 - i / 10, certified_radius=0.005 * (i + 1)) for i in range(10)]
        out.append(make_certificate(status="certified", method="robustness/crown",
                                    result=RobustnessResult(norm="inf", eps=eps, samples=samples, verified=nv,
                                                            falsified=0, unknown=10 - nv, verified_accuracy=nv / 10)))
    out.append(make_certificate(status="certified", method="local/crown+bab", result=LipschitzResult(
        scope="local", norm="inf", upper=12.345, lower=9.876, eps=0.02,
        by_method={"bound propagation": 12.345, "product of norms": 1615.7},
        history=[[0.0, 20.0, 9.0], [1.0, 14.0, 9.5], [2.0, 12.345, 9.876]])))
    out.append(make_certificate(status="certified", method="global/lifted", result=LipschitzResult(
        scope="global", norm="2", upper=46.881, lower=38.4, by_method={"product of norms": 53.34, "LipSDP": 46.881})))
    out.append(make_certificate(status="certified", method="controller", result=StepRadiusResult(
        direction="update", radius=0.5, trajectory=[{"rho": 0.5 + 0.01 * i, "step_norm": 0.4} for i in range(20)])))
    out.append(make_certificate(status="certified", method="SGN", result=GameResult(
        players=2, weights=[1.0, 200.0], margin=0.2929, rate=0.29, euler_step=0.2010, band=[34.31, 1165.69])))
    return out


def test_report_files_and_content(tmp_path):
    paths = write_report(certificates(), tmp_path, title="Test report")
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()
    for text in ("12.35", "9.876", "46.88", "1165.69", "34.31", "Verified accuracy vs ε", "Branch-and-bound convergence",
                 "SDP vs naive product bounds", "Step radius during training", "SGN timescale band",
                 "Certified radius distribution"):
        assert text in html and text in md, text
    assert "90.0%" in html and "30.0%" in html
    # self-contained: no external resources, figures embedded
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert html.count("data:image/png;base64,") >= 5
    for fig in re.findall(r"\((fig_[a-z-]+\.png)\)", md):
        assert (tmp_path / fig).stat().st_size > 1000


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("no Chromium on this machine (`make test` installs it where apt-get is available)")


def test_html_renders_in_headless_chromium(tmp_path):
    chrome = _chromium()
    paths = write_report(certificates(), tmp_path / "r", title="Rendered report")
    flags = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = paths["html"].resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    # what a reader sees: the title, the summary table and the numbers
    assert "Rendered report" in dom and "12.35" in dom and "46.88" in dom and "certified" in dom
    assert dom.count("<img") >= 5
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1100,2400", url], capture_output=True,
                   timeout=120)
    from PIL import Image
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100  # not a blank page
    # the page has dark text pixels and light background: a real rendering
    hist = img.histogram()
    assert sum(hist[:100]) > 1000 and sum(hist[200:]) > 100000
