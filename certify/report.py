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
from pathlib import Path
from typing import Iterable

import jinja2

from . import __version__
from .records import Certificate

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _headline(c: Certificate) -> tuple[str, str]:
    r = c.result
    if r.kind == "lipschitz":
        what = f"{r.scope} Lipschitz (ℓ{r.norm} input)"
        res = f"L ≤ {_fmt(r.upper)}" if r.upper is not None else "no bound"
        if r.lower is not None:
            res += f"; L ≥ {_fmt(r.lower)} (estimate)"
        return what, res
    if r.kind == "robustness":
        return (f"robustness ℓ{r.norm} ε={_fmt(r.eps)}",
                f"verified {r.verified}/{len(r.samples)} ({100 * r.verified_accuracy:.1f}%), falsified {r.falsified}, "
                f"unknown {r.unknown}")
    if r.kind == "step_radius":
        if r.trajectory:
            rs = [t.get("r_applied") for t in r.trajectory if t.get("r_applied") is not None]
            clipped = sum(1 for t in r.trajectory if (t.get("scale") or 1.0) < 1.0)
            return "controlled training run", (f"{len(r.trajectory)} steps, {clipped} clipped to ρ_a, "
                                               f"max applied r = {_fmt(max(rs) if rs else None)}")
        return "safe step radius", f"ρ_a = {_fmt(r.radius)}; safe SGD lr ≤ {_fmt(r.safe_lr_sgd)}"
    if r.kind == "game":
        return f"SGN game certificate ({r.players} players)", (
            f"margin {_fmt(r.margin)}, rate {_fmt(r.rate)}, Euler h ≤ {_fmt(r.euler_step)}" if r.margin is not None
            else f"refused: {r.reason}")
    return r.kind, ""


def _sections(certs: list[Certificate]) -> list[dict]:
    out = []
    rob = [c for c in certs if c.result.kind == "robustness"]
    if rob:
        radii = [s.certified_radius for c in rob for s in c.result.samples if s.certified_radius is not None]
        if radii:
            plt, fig, ax = _figure()
            ax.hist(radii, bins=30, color="#3a7")
            ax.set_xlabel("certified radius")
            ax.set_ylabel("samples")
            out.append(dict(id="radii", title="Certified radius distribution", image=_png(plt, fig),
                            caption=f"{len(radii)} samples; certified radius = the largest ε at which CROWN verifies the "
                                    f"sample (found by bisection; every reported radius is itself verified).",
                            text=f"median certified radius {_fmt(sorted(radii)[len(radii) // 2])}"))
        by_model: dict[str, list] = {}
        for c in rob:
            by_model.setdefault(f"{c.model.name if c.model else '?'} ({c.method})", []).append(c)
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
                table.append([c.model.name if c.model else "?", c.result.scope, c.result.norm, m, _fmt(v), c.status])
                if v is not None and v > 0:
                    labels.append(f"{c.result.scope} ℓ{c.result.norm}: {m}")
                    vals.append(v)
                    lows.append(c.result.lower)
            if c.result.lower is not None:
                table.append([c.model.name if c.model else "?", c.result.scope, c.result.norm,
                              "lower bound (estimate: attack/sampling)", _fmt(c.result.lower), "estimate"])
        if vals:
            ax.barh(range(len(vals)), vals, color="#47a")
            ax.set_yticks(range(len(vals)), labels, fontsize=8)
            ax.set_xscale("log")
            for i, lo in enumerate(lows):
                if lo is not None and lo > 0:
                    ax.plot([lo, lo], [i - 0.4, i + 0.4], color="#c33", lw=2)
            ax.set_xlabel("Lipschitz bound (log scale); red ticks: lower estimate of the same quantity")
        out.append(dict(id="lipschitz", title="Lipschitz bounds by method", image=_png(plt, fig) if vals else None,
                        table=table, caption="Each bar is a certified upper bound; it must never fall below its red tick (a lower estimate "
                                "of the same constant, same norm and region)."))
    bab = [c for c in certs if c.result.kind == "lipschitz" and c.result.history]
    if bab:
        plt, fig, ax = _figure()
        for c in bab:
            h = c.result.history
            ax.plot([r[0] for r in h], [r[1] for r in h], label=f"{c.model.name if c.model else ''} upper")
            ax.plot([r[0] for r in h], [r[2] for r in h], "--", label="lower (attack)")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("Lipschitz bound")
        ax.legend(fontsize=8)
        out.append(dict(id="bab", title="Branch-and-bound convergence", image=_png(plt, fig),
                        caption="Anytime upper bound and attack lower bound during branch-and-bound."))
    glob = [c for c in certs if c.result.kind == "lipschitz" and c.result.scope == "global"]
    if glob:
        table = [["model", "norm", *sorted({m for c in glob for m in c.result.by_method})]]
        for c in glob:
            table.append([c.model.name if c.model else "?", c.result.norm,
                          *[_fmt(c.result.by_method.get(m)) for m in table[0][2:]]])
        out.append(dict(id="sdp-vs-naive", title="SDP vs naive product bounds", table=table,
                        text="Global Lipschitz upper bounds: LipSDP (verified after multiplier repair) against the "
                             "product of layer norms."))
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


def write_report(certificates: Iterable[Certificate], out_dir: str | Path, title: str = "nncertify report") -> dict:
    """Write ``report.md`` (+ figures) and a self-contained ``report.html``; returns their paths."""
    certs = list(certificates)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in certs:
        what, res = _headline(c)
        rows.append(dict(what=what, model=c.model.name if c.model else "–", method=c.method, status=c.status,
                         result=res, time=f"{c.timing.total_s:.2f}"))
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
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]))
    ctx = dict(title=title, created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               version=__version__, rows=rows)
    html = env.get_template("report.html.j2").render(sections=sections, **ctx)
    md = env.get_template("report.md.j2").render(sections=md_sections, **ctx)
    (out_dir / "report.html").write_text(html)
    (out_dir / "report.md").write_text(md)
    return {"html": out_dir / "report.html", "markdown": out_dir / "report.md"}
