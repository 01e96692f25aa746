"""report.html and its PNG figures (matplotlib): cost-accuracy curves, layer profile, calibration.

Pure: figures and pages come back as bytes and text for the stage to write."""

from __future__ import annotations

import html
import io

import numpy as np

from .metrics import pareto_front
from .routers import ordered
from .routing import batch_promise, rows_phrase

HIGHLIGHT = {"prefill_trunk": "tab:red", "prefill_trunk_distilled": "tab:pink", "prefill_logreg": "tab:orange",
             "semantic_mlp": "tab:blue", "semantic_knn": "tab:cyan", "task_prior": "tab:green", "random": "tab:gray"}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


BASELINES = ("task_prior", "semantic_mlp", "semantic_knn", "random")
NOT_ROUTERS = ("best_single", "cheapest", "most_expensive", "oracle")  # drawn as points, not curves


def curve_panels(report: dict, curves: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """The routers of the cost-accuracy figure's two panels: the served router and the four
    baselines, then every other candidate (the served router again, as the reference)."""
    served = report.get("serving")
    first = [n for n in dict.fromkeys((served, *BASELINES)) if n in curves]
    rest = [n for n in curves if n not in first and n not in NOT_ROUTERS]
    return first, ([served] if served in curves else []) + rest


def _singles_and_oracle(ax, report: dict, annotate: bool) -> None:
    singles = np.array([[v["mean_cost"], v["accuracy"]] for v in report["singles"].values()])
    ax.scatter(singles[:, 0], singles[:, 1], color="black", s=18, zorder=5, label="single models")
    if annotate:
        for (c, a), t in zip(singles, report["singles"]):
            ax.annotate(t[:22], (c, a), fontsize=6, xytext=(3, -8), textcoords="offset points")
    front = pareto_front(singles)
    ax.plot(front[:, 0], front[:, 1], "k--", lw=0.8, label=f"singles' Pareto front ({report['pareto_auccc']:.3f})")
    o = report["oracle"]
    ax.scatter([o["mean_cost"]], [o["accuracy"]], marker="*", s=90, color="gold", edgecolor="k", zorder=6,
               label="oracle")


def plot_curves(report: dict, curves: dict[str, np.ndarray]) -> bytes:
    """Two panels on the same axes: the served router in bold against the baselines, the singles'
    front and the oracle; then the other candidates. Legends sit below the axes, off the points."""
    plt = _plt()
    first, rest = curve_panels(report, curves)
    served = report.get("serving")
    fig, axes = plt.subplots(1, 2 if len(rest) > 1 else 1, figsize=(14, 6.5) if len(rest) > 1 else (8, 6.5),
                             sharey=True, squeeze=False)
    titles = ["served router and baselines", "the other candidates"]
    for ax, names, title in zip(axes[0], (first, rest), titles):
        for name in names:
            pts, bold = curves[name], name == served
            label = f"{name} (P-AUCCC {report['routers'][name]['p_auccc']:.3f})" + (", served" if bold else "")
            color = HIGHLIGHT.get(name, "tab:purple" if bold else None)
            ax.plot(pts[:, 0], pts[:, 1], drawstyle="steps-post", lw=2.6 if bold else 1.1, zorder=4 if bold else 3,
                    color=color, alpha=0.45 if bold and ax is not axes[0][0] else 1.0, label=label)
        _singles_and_oracle(ax, report, annotate=title == titles[0])
        ax.set(xscale="log", xlabel="mean cost per query ($, log)", title=title)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(f"Cost-accuracy on {report['n_test']} test queries (threshold policy, tau swept)")
    return _png(fig)


def plot_calibration(report: dict) -> bytes:
    plt = _plt()
    cal = report["calibration"]
    fig, axes = plt.subplots(1, max(len(cal), 1), figsize=(4.5 * max(len(cal), 1), 4), squeeze=False)
    for ax, (name, c) in zip(axes[0], cal.items()):
        for key, label, style in (("reliability_before", f"T = 1 (ECE {c['ece_before']:.3f})", "o--"),
                                  ("reliability", f"T = {c['temperature']:.2f} (ECE {c['ece_after']:.3f})", "o-")):
            pts = np.array([(p, y) for p, y, _ in c[key]])
            ax.plot(pts[:, 0], pts[:, 1], style, label=label)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="predicted P(correct)", ylabel="observed accuracy", title=name, xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8)
    return _png(fig)


def plot_profile(profile: list[dict]) -> bytes:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for pooling in sorted({r["pooling"] for r in profile}):
        rows = sorted((r for r in profile if r["pooling"] == pooling), key=lambda r: r["layer"])
        layers = [r["layer"] for r in rows]
        a1.plot(layers, [r["fisher_mean"] for r in rows], marker="o", label=pooling)
        a2.plot(layers, [r["d_eff"] for r in rows], marker="o", label=f"{pooling} (standardised)")
        a2.plot(layers, [r["d_eff_raw"] for r in rows], linestyle="--", label=f"{pooling} (raw)")
    a1.set(xlabel="layer (hidden_states index)", ylabel="Fisher J, mean over targets", title="Separability")
    a2.set(xlabel="layer (hidden_states index)", ylabel="participation ratio", title="Effective dimensionality",
           yscale="log")
    a1.legend()
    a2.legend(fontsize=7)
    return _png(fig)



def _serving_html(report: dict, cell) -> str:
    """What route serves by default, at which operating point, and how sure the comparison is."""
    parts = []
    op = report.get("operating_point")
    if op:
        parts.append(f"<h2>What route serves by default</h2><p><b>{html.escape(op['router'])}</b> at threshold tau "
                     f"{op['tau']:.4f} (chosen by train on held-out rows): test accuracy {op['accuracy']:.4f} at "
                     f"${op['mean_cost']:.6g} per query, <b>{op['saving_pct']:.1f}% cheaper</b> than always calling "
                     f"{html.escape(op['reference'])} ({op['reference_accuracy']:.4f} at "
                     f"${op['reference_mean_cost']:.6g}).</p>")
        promise = batch_promise(op.get("chosen") or {}, report["n_test"])
        if promise:
            lo, hi = promise["interval_points"]
            on = rows_phrase(promise["rows"])
            parts.append(f"<p>train promised {promise['accuracy_change_points']:+.2f} points against it, 95% interval "
                         f"{lo:+.2f} to {hi:+.2f} for {report['n_test']} queries (from {on} held-out rows); measured "
                         f"here: {op['accuracy_change_points']:+.2f}.</p>")
    boot = report.get("bootstrap")
    if boot:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{cell(v['p_auccc_diff'])}</td><td>{_ci(v['p_auccc_ci'])}</td>"
            f"<td>{cell(v['mean_auc_diff'])}</td><td>{_ci(v['mean_auc_ci'])}</td></tr>" for k, v in boot["vs"].items())
        parts.append(f"<h2>How sure: paired bootstrap</h2><p>{html.escape(boot['router'])} minus each router, on the "
                     f"same test queries resampled {boot['n_boot']} times (seed {boot['seed']}); "
                     f"{100 * boot['level']:.0f}% percentile intervals.</p><table><tr><th>vs</th><th>d P-AUCCC</th>"
                     f"<th>interval</th><th>d mean AUC</th><th>interval</th></tr>{rows}</table>")
    return "\n".join(parts)


def _ci(v) -> str:
    return "n/a" if not v else f"[{v[0]:+.4f}, {v[1]:+.4f}]"


def report_files(report: dict, curves: dict[str, np.ndarray], profile: list[dict] | None) -> dict[str, bytes | str]:
    """report.html and the figures it shows, by file name."""
    files: dict[str, bytes | str] = {"curves.png": plot_curves(report, curves)}
    figures = [("Cost-accuracy curves", "curves.png")]
    if report["calibration"]:
        files["calibration.png"] = plot_calibration(report)
        figures.append(("Calibration (pooled over targets, test split)", "calibration.png"))
    if profile:
        files["layer_profile.png"] = plot_profile(profile)
        figures.append(("Layer profile (training split)", "layer_profile.png"))
    cols = ["accuracy", "mean_cost", "gap_closed_pct", "p_auccc", "cost_reduction_pct", "mean_auc", "ece", "aiq"]
    if any("apgr" in v for v in report["routers"].values()):
        cols += ["apgr", "cpt50_pct"]

    def cell(v):
        return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    rows = "\n".join(
        "<tr><td>" + html.escape(n) + "</td>" + "".join(f"<td>{cell(report['routers'][n].get(c))}</td>" for c in cols)
        + "</tr>" for n in ordered(report["routers"]))
    singles = "\n".join(f"<tr><td>{html.escape(t)}</td><td>{v['accuracy']:.4f}</td><td>{v['mean_cost']:.6g}</td></tr>"
                        for t, v in report["singles"].items())
    b, o, c = report["best_single"], report["oracle"], report["counts"]
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Router evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Router evaluation</h1>
<p>Dataset <code>{html.escape(report['dataset'])}</code>, model <code>{html.escape(report['model'])}</code>.
{c['evaluated']} of {c['test']} test queries (measured on every target and with features); costs:
{html.escape(report['cost_source'])}.</p>
<p>Best single model <b>{html.escape(b['model'])}</b>: accuracy {b['accuracy']:.4f} at ${b['mean_cost']:.6g} per query.
Oracle: {o['accuracy']:.4f} at ${o['mean_cost']:.6g}. Pareto-AUCCC of the single models: {report['pareto_auccc']:.4f}.</p>
<h2>Routers</h2><p>Accuracy and cost at tau = 0; curve metrics over every tau.</p>
<table><tr><th>router</th>{''.join(f'<th>{html.escape(x)}</th>' for x in cols)}</tr>
{rows}</table>
{_serving_html(report, cell)}
{''.join(f'<h2>{html.escape(t)}</h2><img src="{f}" style="max-width:100%">' for t, f in figures)}
<h2>Single models</h2><table><tr><th>model</th><th>accuracy</th><th>mean cost $</th></tr>{singles}</table>
{_lengths_html(report.get("output_lengths"))}
</body></html>"""
    files["report.html"] = doc
    return files


def _lengths_html(lengths: dict | None) -> str:
    """The output-length model on the test calls, and the served routes' estimated cost against observed."""
    if not lengths:
        return ""
    head = f"<h2>Output lengths</h2><p>Estimate: {html.escape(lengths['model'])}.</p>"
    if not lengths["per_target"]:
        return head + "<p>No test call has a known or derivable output length.</p>"
    rows = "\n".join(f"<tr><td>{html.escape(t)}</td><td>{v['calls']}</td><td>{v['male_model']:.3f}</td>"
                     f"<td>{v['male_median']:.3f}</td><td>{v['mean_observed']:.1f}</td><td>{v['mean_expected']:.1f}</td></tr>"
                     for t, v in lengths["per_target"].items())
    out = head + ("<table><tr><th>target</th><th>calls</th><th>abs. log error</th><th>median's</th>"
                  f"<th>mean tokens</th><th>expected</th></tr>{rows}</table>")
    if "served_routes" in lengths:
        r = lengths["served_routes"]
        out += (f"<p>The served routes at tau {r['tau']:.4f}, decided on estimated costs as route decides them: "
                f"{r['estimated_saving_pct']:.1f}% cheaper than always the reference on estimated costs, "
                f"{r['observed_saving_pct']:.1f}% on observed costs.</p>")
    return out
