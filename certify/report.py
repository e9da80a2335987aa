"""Robustness reports: Markdown and a self-contained HTML page built from certificates.

``write_report(certificates, out_dir)`` writes ``report.md`` (with PNG figures beside it) and
``report.html`` (figures embedded as base64, no external resources).  Sections appear only when
the certificates hold the data for them:

* certified-radius distribution and verified accuracy vs eps (robustness records),
* bounds by method against the lower bound, and branch-and-bound convergence (Lipschitz records),
* SDP vs naive product (global Lipschitz records),
* the step-radius trajectory of a training run (step-radius records with a trajectory),
* the SGN timescale band (game records).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from pathlib import Path
from typing import Iterable


from . import __version__
from .params import make_folder
from .records import Certificate
from .verdict import describe as _headline
from .verdict import fmt as _fmt

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _figure(rows: int = 1, height: float = 3.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(rows, 1, figsize=(7.2, height * rows), dpi=100, layout="constrained", squeeze=False)
    return plt, fig, (ax[0, 0] if rows == 1 else list(ax[:, 0]))


def _png(plt, fig) -> bytes:
    """PNG of ``fig`` with every label inside the image (tight bounding box around all artists)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return buf.getvalue()


UNVERIFIED = "solver value, unverified"


def _unverified(method_name: str) -> bool:
    """A by_method entry that is a raw solver value (never a certificate)."""
    return "unverified" in method_name or "raw solver value" in method_name


def _radius_section(rob: list[Certificate]) -> dict | None:
    """Certified radii: one histogram panel per (model, method, norm) and run ε, with the run's ε marked,
    and a table of what each panel holds (samples, radii, median, largest)."""
    panels: dict[tuple, dict] = {}
    for c in rob:
        key = (_model_name(c), c.method, c.result.norm, c.result.eps)
        p = panels.setdefault(key, {"samples": 0, "radii": []})
        p["samples"] += len(c.result.samples)
        p["radii"] += [x.certified_radius for x in c.result.samples if x.certified_radius is not None]
    panels = {k: v for k, v in panels.items() if v["radii"]}
    if not panels:
        return None
    import math
    n = len(panels)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, cols, figsize=(7.2, 2.5 * rows), dpi=100, layout="constrained", squeeze=False)
    hi_of = {}  # one x range per model and method: its panels compare at a glance
    for (model, method, norm, _), p in panels.items():
        hi_of[(model, method, norm)] = max(hi_of.get((model, method, norm), 0.0), max(p["radii"]))
    table = [["model", "method", "ε of the run", "samples", "with a certified radius", "median radius",
              "largest radius"]]
    total = 0
    from matplotlib.ticker import MaxNLocator
    for ax, ((model, method, norm, eps), p) in zip(axes.flat, panels.items()):
        rs = sorted(p["radii"])
        hi = hi_of[(model, method, norm)] or 1.0
        ax.hist(rs, bins=20, range=(0, hi), color="#4a7ab5", alpha=0.85)
        ax.axvline(eps, color="k", ls="--", lw=1.2)
        ax.set_title(f"{model} ({method.split('/')[-1]}, ℓ{norm})\nε = {_fmt(eps)}: {len(rs)} radii", fontsize=8)
        ax.set_xlabel("certified radius", fontsize=8)
        ax.set_ylabel("samples", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        total += len(rs)
        table.append([model, method, _fmt(eps), p["samples"], len(rs), _fmt(rs[len(rs) // 2]), _fmt(rs[-1])])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return dict(id="radii", title="Certified radius distribution", image=_png(plt, fig), table=table,
                caption=f"{total} sample radii, one histogram per model, method and ε of the run (dashed: that ε); "
                        f"certified radius = the largest ε at which the method verifies the sample (found by "
                        f"bisection; every reported radius is itself verified).")


def _sections(certs: list[Certificate]) -> list[dict]:
    out = []
    rob = [c for c in certs if c.result.kind == "robustness"]
    if rob:
        section = _radius_section(rob)
        if section is not None:
            out.append(section)
        by_model: dict[str, list] = {}
        for c in rob:
            by_model.setdefault(f"{_model_name(c)} ({c.method}, ℓ{c.result.norm})", []).append(c)
        plt, fig, ax = _figure()
        table = [["model / method", "ε", "verified", "falsified", "unknown", "verified accuracy"]]
        for label, cs in by_model.items():
            cs = sorted(cs, key=lambda c: c.result.eps)
            ax.plot([c.result.eps for c in cs], [100 * c.result.verified_accuracy for c in cs], "o-", label=label)
            for c in cs:
                r = c.result
                table.append([label, _fmt(r.eps), r.verified, r.falsified, r.unknown,
                              f"{100 * r.verified_accuracy:.1f}%"])
        ax.set_xlabel("ε")
        ax.set_ylabel("verified accuracy (%)")
        ax.legend(fontsize=8)
        out.append(dict(id="verified-accuracy", title="Verified accuracy vs ε", image=_png(plt, fig), table=table,
                        caption="Fraction of samples whose every margin has a positive certified lower bound."))
        bab = [c for c in rob if any(s.decided_by for s in c.result.samples)]
        if bab:
            table = [["model / method", "ε", "verified: crown", "alpha-crown", "branch-and-bound", "falsified: attack",
                      "falsified: during BaB", "unknown", "median BaB time (s)", "domains"]]
            for c in bab:
                r, by = c.result, {}
                for smp in r.samples:
                    key = (smp.status, smp.decided_by or "")
                    by[key] = by.get(key, 0) + 1
                times = sorted(smp.time_s for smp in r.samples if smp.time_s is not None)
                table.append([f"{c.model.name if c.model else '?'} ({c.method})", _fmt(r.eps),
                              by.get(("verified", "crown"), 0), by.get(("verified", "alpha-crown"), 0),
                              by.get(("verified", "bab"), 0),
                              sum(v for (st, m), v in by.items() if st == "falsified" and m != "bab-attack"),
                              by.get(("falsified", "bab-attack"), 0), r.unknown,
                              _fmt(times[len(times) // 2]) if times else "–",
                              sum(smp.domains or 0 for smp in r.samples)])
            out.append(dict(id="complete-verification", title="Complete verification (branch-and-bound)", table=table,
                            text="How each sample was decided: verified by CROWN, by alpha-CROWN, or by "
                                 "β-CROWN branch-and-bound (a proof over every domain of a complete split); "
                                 "falsified by the attack before or during the search (each counterexample "
                                 "re-checked in float64); unknown when the per-sample budget ran out."))
    lips = [c for c in certs if c.result.kind == "lipschitz" and c.result.by_method]
    if lips:
        plt, fig, ax = _figure()
        table = [["model", "scope", "norm", "method", "bound", "status"]]
        labels, vals, lows = [], [], []
        for c in lips:
            for m, v in c.result.by_method.items():
                raw = _unverified(m)
                table.append([_model_name(c), c.result.scope, c.result.norm, m, _fmt(v),
                              UNVERIFIED if raw else c.status])
                if v is not None and v > 0 and not raw and c.status == "certified":
                    labels.append(f"{_model_name(c)} {c.result.scope} ℓ{c.result.norm}: {m}")
                    vals.append(v)
                    lows.append(c.result.lower)
            if c.result.lower is not None:
                table.append([_model_name(c), c.result.scope, c.result.norm,
                              "lower bound (estimate: attack/sampling)", _fmt(c.result.lower), "estimate"])
        if vals:
            ax.barh(range(len(vals)), vals, color="#47a")
            ax.set_yticks(range(len(vals)), labels, fontsize=8)
            ax.set_xscale("log")
            for i, lo in enumerate(lows):
                if lo is not None and lo > 0:
                    ax.plot([lo, lo], [i - 0.4, i + 0.4], color="#c33", lw=2)
            ax.set_xlabel("certified Lipschitz upper bound (log scale)")
        out.append(dict(id="lipschitz", title="Lipschitz bounds by method", image=_png(plt, fig) if vals else None,
                        table=table, caption="Each bar is a certified upper bound (raw solver values are not drawn; the table labels "
                                "them 'solver value, unverified'); red ticks: a lower estimate of the same constant (same "
                                "norm and region), which no bar may fall below."))
    bab = [c for c in certs if c.result.kind == "lipschitz" and c.result.history]
    if bab:
        plt, fig, ax = _figure()
        for c in bab:
            h = c.result.history
            ax.plot([r[0] for r in h], [r[1] for r in h], label=f"{_model_name(c)} upper (certified)")
            ax.plot([r[0] for r in h], [r[2] for r in h], "--", label="lower (attack)")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("Lipschitz bound")
        ax.legend(fontsize=8)
        out.append(dict(id="bab", title="Branch-and-bound convergence", image=_png(plt, fig),
                        caption="Anytime upper bound and attack lower bound during branch-and-bound."))
    glob = [c for c in certs if c.result.kind == "lipschitz" and c.result.scope == "global"]
    if glob:
        table = [["model", "norm", *sorted({m.replace("raw solver value", UNVERIFIED) for c in glob
                                            for m in c.result.by_method})]]
        for c in glob:
            table.append([_model_name(c), c.result.norm,
                          *[_fmt(c.result.by_method.get(m, c.result.by_method.get(m.replace(UNVERIFIED, "raw solver value"))))
                            for m in table[0][2:]]])
        out.append(dict(id="sdp-vs-naive", title="SDP vs naive product bounds", table=table,
                        text="Global Lipschitz upper bounds: LipSDP (verified after multiplier repair) against the "
                             "product of layer norms. Columns marked 'solver value, unverified' are the SDP solver's "
                             "raw optimum: no certificate, shown for comparison only."))
    steps = [c for c in certs if c.result.kind == "step_radius" and c.result.trajectory]
    if steps:
        plt, fig, ax = _figure()
        for c in steps:
            tr = c.result.trajectory
            x = list(range(len(tr)))
            ax.plot(x, [t.get("rho") for t in tr], label="ρ_a")
            if any("step_norm" in t for t in tr):
                ax.plot(x, [t.get("step_norm") for t in tr], label="‖p‖ (applied)")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
        out.append(dict(id="steps", title="Step radius during training", image=_png(plt, fig),
                        caption="The controller keeps the applied step inside the Taylor radius ρ_a = π/Δ_a."))
    games = [c for c in certs if c.result.kind == "game" and c.result.band]
    if games:
        plt, fig, ax = _figure()
        for i, c in enumerate(games):
            lo, hi = c.result.band
            ax.plot([lo, hi], [i, i], lw=8, color="#7a4")
            if c.result.weights and len(c.result.weights) == 2:
                ax.plot([c.result.weights[1] / c.result.weights[0]], [i], "k|", ms=20)
        ax.set_xscale("log")
        ax.set_yticks(range(len(games)), [c.model.name if c.model else c.method for c in games])
        ax.set_xlabel("weight ratio w2/w1 (certified band; tick: chosen weights)")
        table = [["game", "weights", "margin α", "rate", "β", "Euler h ≤", "RK4 h ≤", "band (w2/w1)"]]
        for c in games:
            r = c.result
            table.append([c.model.name if c.model else c.method, ", ".join(_fmt(w) for w in r.weights or []),
                          _fmt(r.margin), _fmt(r.rate), _fmt(r.beta), _fmt(r.euler_step), _fmt(r.rk4_step),
                          f"({_fmt(r.band[0], 6)}, {_fmt(r.band[1], 6)})"])
        out.append(dict(id="sgn", title="SGN timescale band", image=_png(plt, fig), table=table,
                        caption="Every weight ratio inside the band gives a contracting metric."))
    return out


def _model_name(c: Certificate) -> str:
    return c.model.name if c.model and c.model.name else "(unnamed model)"


# ------------------------------------------------------------------------------------------ inputs
def merge_chunks(certs: list[Certificate]) -> Certificate:
    """One robustness certificate from the chunks of one batch run (same model, method, norm, ε).

    ``certs`` must be disjoint sample chunks whose sample indices are already global.  Counts add up,
    accuracies are sample-weighted, the status is ``failed`` if any chunk failed, times add up."""
    first = certs[0]
    samples = sorted((s for c in certs for s in c.result.samples), key=lambda s: s.index)
    n = len(samples)
    v = sum(c.result.verified for c in certs)
    clean = [(c.result.clean_accuracy, len(c.result.samples)) for c in certs]
    res = first.result.model_copy(update=dict(
        samples=samples, verified=v, falsified=sum(c.result.falsified for c in certs),
        unknown=sum(c.result.unknown for c in certs), verified_accuracy=v / n if n else 0.0,
        clean_accuracy=(sum(a * k for a, k in clean) / n) if n and all(a is not None for a, _ in clean) else None))
    status = "failed" if any(c.status == "failed" for c in certs) else first.status
    timing = first.timing.model_copy(update=dict(total_s=sum(c.timing.total_s for c in certs)))
    params = {**first.parameters, "samples": n, "chunks": len(certs)}
    return first.model_copy(update=dict(result=res, status=status, timing=timing, parameters=params))


def _unit_label(unit: dict) -> tuple[str, str]:
    params = ", ".join(f"{k}={v}" for k, v in sorted((unit.get("params") or {}).items()))
    where = f"samples {unit.get('start')}–{unit.get('stop')}" if "start" in unit else ""
    return str(unit.get("model", "?")), f"{unit.get('task', '?')} ({params}{'; ' if params and where else ''}{where})"


def from_batch_records(records: Iterable[dict], source: str = "batch") -> tuple[list[Certificate], list[dict]]:
    """Certificates and failures of batch results: the chunks of one (model, task, parameters) run are
    merged into one robustness certificate; errors and timeouts become failure rows with their reason."""
    from ..models.errors import InvalidArgumentError
    groups: dict[str, list[Certificate]] = {}
    order: list[str] = []
    failures = []
    for rec in records:
        unit = rec.get("unit") or {}
        if "certificate" in rec:
            try:
                c = Certificate.model_validate(rec["certificate"])
            except Exception as exc:
                raise InvalidArgumentError(f"{source}: unit {rec.get('id')}: not a valid certificate "
                                           f"({' '.join(str(exc).split())[:160]})") from None
            if c.result.kind == "robustness" and "start" in unit:
                off = int(unit["start"])
                c = c.model_copy(update=dict(result=c.result.model_copy(update=dict(samples=[
                    s.model_copy(update=dict(index=s.index + off)) for s in c.result.samples]))))
                key = json.dumps([unit.get("model"), unit.get("task"), unit.get("params"), unit.get("data")],
                                 sort_keys=True, default=str)
            else:
                key = f"unit:{rec.get('id')}:{len(order)}"
            if key not in groups:
                order.append(key)
            groups.setdefault(key, []).append(c)
        else:
            model, what = _unit_label(unit)
            failures.append(dict(model=model, what=what, status=rec.get("status", "error"),
                                 reason=rec.get("error") or "no result recorded",
                                 attempts=rec.get("attempts", 1), time=f"{float(rec.get('elapsed_s') or 0):.2f}"))
    certs = [merge_chunks(groups[k]) if len(groups[k]) > 1 else groups[k][0] for k in order]
    return certs, failures


def load_inputs(paths: Iterable[str | Path]) -> tuple[list[Certificate], list[dict]]:
    """Certificate files (``.json``) and batch results (``.jsonl``) -> ``(certificates, failures)``."""
    from ..models.errors import InvalidArgumentError
    from .records import load_certificate
    certs, failures = [], []
    for p in map(Path, paths):
        if p.suffix == ".jsonl":
            from .batch import read_done
            if not p.is_file():
                raise InvalidArgumentError(f"{p}: no such file")
            c, f = from_batch_records(read_done(p).values(), str(p))
            certs += c
            failures += f
        else:
            certs.append(load_certificate(p))
    if not certs and not failures:
        raise InvalidArgumentError("nothing to report: the inputs hold no certificate and no batch record")
    return certs, failures


# ------------------------------------------------------------------------------------------ output
def write_report(certificates: Iterable[Certificate], out_dir: str | Path, title: str = "nncertify report",
                 failures: Iterable[dict] = ()) -> dict:
    """Write ``report.md`` (+ figures) and a self-contained ``report.html``; returns their paths.

    ``failures``: batch units that produced no certificate (``{model, what, status, reason, attempts,
    time}``, see :func:`from_batch_records`); each gets a summary row with its reason."""
    certs = list(certificates)
    failures = list(failures)
    out_dir = make_folder(out_dir, "--out")
    rows = []
    for c in certs:
        what, res = _headline(c)
        rows.append(dict(what=what, model=_model_name(c) if c.model else "–", method=c.method, status=c.status,
                         result=res, time=f"{c.timing.total_s:.2f}"))
    for f in failures:
        status = "timed out" if f["status"] == "timeout" else "error"
        tries = f" (after {f['attempts']} attempts)" if f.get("attempts", 1) > 1 else ""
        rows.append(dict(what=f["what"], model=f["model"], method="–", status=status,
                         result=f"no result: {f['reason']}{tries}", time=f["time"]))
    sections = _sections(certs)
    md_sections = []
    for s in sections:
        s2 = dict(s)
        if s.get("image"):
            fname = f"fig_{s['id']}.png"
            (out_dir / fname).write_bytes(s["image"])
            s2["image_file"] = fname
        md_sections.append(s2)
        s["image"] = base64.b64encode(s["image"]).decode() if s.get("image") else None
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]))
    ctx = dict(title=title, created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               version=__version__, rows=rows, n_failed=len(failures))
    html = env.get_template("report.html.j2").render(sections=sections, **ctx)
    md = env.get_template("report.md.j2").render(sections=md_sections, **ctx)
    (out_dir / "report.html").write_text(html)
    (out_dir / "report.md").write_text(md)
    return {"html": out_dir / "report.html", "markdown": out_dir / "report.md"}
