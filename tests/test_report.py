"""Reports: Markdown + self-contained HTML, rendered in headless Chromium, showing the real numbers."""

import json
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


def _batch_records():
    """Batch results as `certify batch` writes them: two chunks of one robustness run per model and ε,
    a global unit, a timed-out unit and a failed unit."""
    from nncertify.certify.records import ModelRef
    recs = []
    for model in ("net_a", "net_b"):
        ref = ModelRef(name=model, path=model, format="zoo", sha256="0" * 64)
        for eps in (0.01, 0.02):
            for start in (0, 5):
                nv = 4 if eps == 0.01 else 2
                samples = [SampleVerdict(index=i, label=1, status="verified" if i < nv else "falsified",
                                         margin_lower=0.1, certified_radius=(0.01 if model == "net_a" else 0.03) * (i + 1))
                           for i in range(5)]
                c = make_certificate(status="certified", method="robustness/crown", model=ref,
                                     result=RobustnessResult(norm="inf", eps=eps, samples=samples, verified=nv,
                                                             falsified=5 - nv, unknown=0, verified_accuracy=nv / 5))
                unit = {"task": "robustness", "model": model, "params": {"eps": eps}, "data": "zoo:digits",
                        "start": start, "stop": start + 5, "timeout": 60}
                recs.append({"id": f"{model}{eps}{start}", "unit": unit, "status": "certified", "elapsed_s": 1.0,
                             "certificate": json.loads(c.to_json())})
    g = make_certificate(status="certified", method="global/lifted", result=LipschitzResult(
        scope="global", norm="2", upper=46.881, lower=38.4,
        by_method={"product of norms": 53.34, "LipSDP (lifted, certified)": 46.881,
                   "LipSDP (lifted): solver value, unverified": 46.1}))
    recs.append({"id": "g", "unit": {"task": "global", "model": "net_a", "params": {}, "start": 0, "stop": 10},
                 "status": "certified", "elapsed_s": 3.0, "certificate": json.loads(g.to_json())})
    recs.append({"id": "t", "unit": {"task": "global", "model": "net_b", "params": {"solver": "SCS"}, "start": 0,
                                     "stop": 10}, "status": "timeout", "elapsed_s": 300.0, "attempts": 2,
                 "error": "timed out: exceeded the unit timeout of 300 s"})
    recs.append({"id": "e", "unit": {"task": "steps", "model": "broken.pt", "params": {}, "start": 0, "stop": 10},
                 "status": "error", "elapsed_s": 0.5, "error": "broken.pt: not a readable PyTorch file"})
    return recs


def test_report_of_batch_results_shows_every_unit(tmp_path):
    from nncertify.certify.report import from_batch_records
    certs, failures = from_batch_records(_batch_records())
    rob = [c for c in certs if c.result.kind == "robustness"]
    assert len(rob) == 4  # one row per model and ε: the chunks are merged
    for c in rob:
        assert len(c.result.samples) == 10 and [s.index for s in c.result.samples] == list(range(10))
        assert c.result.verified == (8 if c.result.eps == 0.01 else 4)
        assert c.result.verified + c.result.falsified + c.result.unknown == 10
    assert {f["status"] for f in failures} == {"timeout", "error"}
    paths = write_report(certs, tmp_path, failures=failures)
    html, md = paths["html"].read_text(), paths["markdown"].read_text()
    for text in ("timed out", "exceeded the unit timeout of 300 s", "after 2 attempts", "broken.pt: not a readable",
                 "verified 8/10", "verified 4/10"):
        assert text in html and text in md, text
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert summary.count("| robustness ℓ") == 4 and summary.count("| timed out |") == 1 and summary.count("| error |") == 1
    # raw solver values are labelled, never called certified
    assert "solver value, unverified" in html
    lip = md.split("## Lipschitz bounds by method")[1].split("\n## ")[0]
    row = next(l for l in lip.splitlines() if "unverified" in l and "46.1" in l)
    assert "| certified |" not in row
    # radius histograms: one per model and ε (chunks merged), each listed with its counts
    assert "one histogram per model, method and ε" in html
    radii = md.split("## Certified radius distribution")[1].split("\n## ")[0]
    for model in ("net_a", "net_b"):
        for eps in ("0.01", "0.02"):
            assert f"| {model} | robustness/crown | {eps} | 10 | 10 |" in radii, (model, eps)


def test_figures_keep_their_labels_inside(tmp_path):
    """Long tick labels (Lipschitz bars) must not be cut off: every figure's drawn content reaches
    neither the left nor the right edge of the PNG (a tight bounding box with padding)."""
    import numpy as np
    from PIL import Image
    from nncertify.certify.report import from_batch_records
    certs, failures = from_batch_records(_batch_records())
    write_report(certs + certificates(), tmp_path, failures=failures)
    figs = sorted(tmp_path.glob("fig_*.png"))
    assert len(figs) >= 5
    for f in figs:
        a = np.asarray(Image.open(f).convert("L"))
        for edge in (a[:, :3], a[:, -3:], a[:3, :], a[-3:, :]):
            assert edge.min() > 200, f"{f.name}: content touches the edge of the image"


def _flags(chrome, tmp_path):
    return [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--force-device-scale-factor=1", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]


def test_radius_histograms_of_a_real_batch_in_the_browser(tmp_path):
    """A real batch (two zoo models, two ε, CROWN robustness with certified radii, two chunks each) ->
    `certify report`: every model x ε histogram is there with the counts of the records, and in
    headless Chromium the radius figure is shown whole, its labels inside the picture."""
    import numpy as np
    from PIL import Image
    from nncertify.certify.batch import expand_plan, read_done, run_batch
    from nncertify.certify.report import load_inputs
    chrome = _chromium()
    plan = {"models": ["digits_relu_mlp", "digits_maxmin_mlp"], "samples": 8, "chunk": 4, "timeout": 120,
            "tasks": [{"task": "robustness", "eps": [0.01, 0.03], "method": "crown", "radius": True,
                       "radius_iters": 6}]}
    out = tmp_path / "b.jsonl"
    counts = run_batch(expand_plan(plan), out, progress=False)
    assert counts.get("certified") == 8, counts
    # what the records hold, per (model, ε): samples and radii
    truth: dict = {}
    for rec in read_done(out).values():
        key = (rec["unit"]["model"], rec["unit"]["params"]["eps"])
        t = truth.setdefault(key, {"samples": 0, "radii": []})
        smp = rec["certificate"]["result"]["samples"]
        t["samples"] += len(smp)
        t["radii"] += [x["certified_radius"] for x in smp if x["certified_radius"] is not None]
    assert len(truth) == 4 and all(t["samples"] == 8 and t["radii"] for t in truth.values())
    certs, failures = load_inputs([out])
    paths = write_report(certs, tmp_path / "rep", failures=failures)
    md = paths["markdown"].read_text()
    radii = md.split("## Certified radius distribution")[1].split("\n## ")[0]
    rows = [r for r in radii.splitlines() if r.startswith("| digits_")]
    assert len(rows) == 4
    from nncertify.certify.verdict import fmt
    for (model, eps), t in truth.items():
        rs = sorted(t["radii"])
        row = f"| {model} | robustness/crown | {fmt(eps)} | 8 | {len(rs)} | {fmt(rs[len(rs) // 2])} | {fmt(rs[-1])} |"
        assert row in rows, (row, rows)
    assert f"{sum(len(t['radii']) for t in truth.values())} sample radii" in md
    # the figure: nothing touches its edges (labels inside the PNG)
    a = np.asarray(Image.open(tmp_path / "rep" / "fig_radii.png").convert("L"))
    for edge in (a[:, :3], a[:, -3:], a[:3, :], a[-3:, :]):
        assert edge.min() > 200
    # in the browser: where the radius figure is drawn, then a screenshot of the same page
    html = paths["html"].read_text()
    probe = ("<script>window.addEventListener('load', () => { const i = document.querySelector("
             "'img[alt=\"Certified radius distribution\"]'); const r = i.getBoundingClientRect(); "
             "document.body.setAttribute('data-rect', [r.left, r.top, r.width, r.height, i.naturalWidth, "
             "i.naturalHeight, window.innerWidth].join(',')); });</script></body>")
    page = tmp_path / "rep" / "probe.html"
    page.write_text(html.replace("</body>", probe))
    size = "--window-size=1100,3000"
    dom = subprocess.run(_flags(chrome, tmp_path) + [size, "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-rect="([^"]+)"', dom)
    assert m, dom[:500]
    left, top, width, height, nat_w, nat_h, inner = (float(v) for v in m.group(1).split(","))
    assert nat_w > 0 and width > 0 and height > 0  # the image decoded and is shown
    assert left >= 0 and left + width <= inner  # the whole figure is inside the page, nothing cut off
    assert abs(height / width - nat_h / nat_w) < 0.02  # shown undistorted
    shot = tmp_path / "shot.png"
    subprocess.run(_flags(chrome, tmp_path) + [size, f"--screenshot={shot}", paths["html"].resolve().as_uri()],
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"))
    box = img[int(top) + 2:int(top + height) - 2, int(left) + 2:int(left + width) - 2]
    assert box.shape[0] > 100 and box.shape[1] > 100
    for edge in (box[:, :2], box[:, -2:], box[:2, :], box[-2:, :]):
        assert edge.min() > 180, "the radius figure's labels reach its border in the browser"
    assert (box < 100).sum() > 2000  # drawn: bars, axes, tick labels and titles
