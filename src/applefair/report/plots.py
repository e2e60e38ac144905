"""The report's plots, drawn with matplotlib's object API (no pyplot global state).

Charts are SVG with text drawn as paths, embedded as data URIs in <img> tags: crisp,
self-contained, and a group name can never become markup in the page.
"""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure as MplFigure

from applefair.report.document import Figure
from applefair.report.rundata import Evaluation
from applefair.report.tables import ci_interval

_TRUTH = ListedColormap(["#EE7733"])
_PRED = ListedColormap(["#0077BB"])
_COLORS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")
_RC = {"svg.hashsalt": "applefair", "svg.fonttype": "path", "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False}


def _render(fig: MplFigure, name: str, caption: str, alt: str, fmt: str = "svg") -> Figure:
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=110,
                    metadata={"Date": None} if fmt == "svg" else None)
    return Figure(name=name, data=buf.getvalue(), mime="image/svg+xml" if fmt == "svg" else "image/png",
                  caption=caption, alt=alt)


def _new(w: float, h: float, **kw) -> tuple[MplFigure, object]:
    with matplotlib.rc_context(_RC):
        fig = MplFigure(figsize=(w, h), layout="constrained")
        axes = fig.subplots(**kw)
    return fig, axes


def _short(s: str, n: int = 24) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def group_dice_plot(evaluations: list[Evaluation]) -> Figure:
    """Mean Dice per group (and overall) per evaluation, with CI bars where metrics.json has them."""
    groups: list[str] = []
    for e in evaluations:
        groups += [g for g in e.metrics["groups"] if g not in groups]
    cats = ["overall", *groups]
    fig, ax = _new(max(4.0, 1.1 * len(cats) + 2), 2.8)
    width = 0.8 / max(1, len(evaluations))
    any_ci = False
    for j, e in enumerate(evaluations):
        xs, ys, lo, hi = [], [], [], []
        for i, c in enumerate(cats):
            node = e.metrics["overall"] if c == "overall" else e.metrics["groups"].get(c)
            if not node or "dice" not in node:
                continue
            ci = ci_interval(e.metrics, "overall", "dice") if c == "overall" else \
                ci_interval(e.metrics, "groups", "dice", c)
            y = float(node["dice"])
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(y)
            lo.append(y - ci[0] if ci else 0.0)
            hi.append(ci[1] - y if ci else 0.0)
            any_ci = any_ci or ci is not None
        ax.errorbar(xs, ys, yerr=[lo, hi] if any(lo) or any(hi) else None, fmt="o", capsize=3,
                    color=_COLORS[j % len(_COLORS)], label=_short(e.label))
    ax.set_xticks(range(len(cats)), [_short(c, 14) for c in cats])
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    attr = evaluations[0].metrics.get("attribute", "group")
    cap = f"Mean Dice per {attr} group on the test split" + \
        (" with 95% confidence intervals." if any_ci else " (no confidence intervals in metrics.json).")
    return _render(fig, "group_dice", cap, "Mean Dice per group")


def distribution_plot(evaluations: list[Evaluation]) -> Figure | None:
    """Per-sample Dice per group as box plots, evaluations side by side."""
    evs = [e for e in evaluations if e.per_sample is not None and len(e.per_sample)]
    if not evs:
        return None
    groups: list[str] = []
    for e in evs:
        groups += [g for g in e.per_sample["group"].astype(str).unique() if g not in groups]
    groups = sorted(groups, key=lambda g: (g == "unknown", g))
    fig, ax = _new(max(4.0, 1.2 * len(groups) * max(1, len(evs)) / 1.5 + 2), 3.2)
    width = 0.8 / len(evs)
    for j, e in enumerate(evs):
        data = [e.per_sample.loc[e.per_sample["group"].astype(str) == g, "dice"].dropna().to_numpy()
                for g in groups]
        pos = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
        keep = [k for k, d in enumerate(data) if len(d)]
        bp = ax.boxplot([data[k] for k in keep], positions=[pos[k] for k in keep], widths=width * 0.85,
                        patch_artist=True, showfliers=True, flierprops={"markersize": 2})
        for box in bp["boxes"]:
            box.set_facecolor(_COLORS[j % len(_COLORS)])
            box.set_alpha(0.6)
        ax.plot([], [], "s", color=_COLORS[j % len(_COLORS)], alpha=0.6, label=_short(e.label))
    ax.set_xticks(range(len(groups)), [_short(g, 14) for g in groups])
    ax.set_ylabel("Dice per image")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _render(fig, "dice_distribution", "Distribution of per-image Dice per group (box: quartiles, "
                   "whiskers: 1.5 IQR, dots: outliers).", "Dice distribution per group")


def tradeoff_plot(agg: pd.DataFrame, keys: list[str], max_panels: int = 6) -> Figure | None:
    """Overall Dice against the Dice gap per method, Pareto front joined, one panel per cell."""
    if "dice_delta" not in agg.columns or agg["dice_delta"].isna().all():
        return None
    cells = list(agg.groupby(keys, sort=False, dropna=False)) if keys else [("all", agg)]
    cells = cells[:max_panels]
    cols = min(3, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = _new(3.6 * cols, 3.2 * rows, nrows=rows, ncols=cols, squeeze=False)
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    for ax, (cell, sub) in zip(axes.flat, cells, strict=False):
        sub = sub.dropna(subset=["dice", "dice_delta"])
        for i, (_, r) in enumerate(sub.iterrows()):
            ax.scatter(r["dice_delta"], r["dice"], s=36 if r["pareto"] else 20,
                       color=_COLORS[i % len(_COLORS)], edgecolor="black" if r["pareto"] else "none", zorder=3)
            ax.annotate(_short(r["method"], 16), (r["dice_delta"], r["dice"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front = sub[sub["pareto"]].sort_values("dice_delta")
        if len(front) > 1:
            ax.plot(front["dice_delta"], front["dice"], "--", color="black", lw=1, zorder=2, label="Pareto front")
            ax.legend(frameon=False, fontsize=7, loc="lower right")
        ax.set_xlabel("Dice gap (lower is fairer)")
        ax.set_ylabel("overall Dice")
        if keys:
            ax.set_title(_short(" / ".join(map(str, cell if isinstance(cell, tuple) else (cell,))), 40), fontsize=8)
        ax.grid(alpha=0.3)
    return _render(fig, "tradeoff", "Utility-fairness trade-off: each point is a method (mean over runs); "
                   "outlined points form the Pareto front (no method is both more accurate and fairer).",
                   "Utility-fairness trade-off")


def history_plot(history: pd.DataFrame) -> Figure | None:
    """Training curves: segmentation loss, discriminator loss and accuracy, validation scores."""
    panels = [(("l_seg",), "L_seg (perturber)"), (("l_d",), "L_D (discriminator)"),
              (("d_acc",), "discriminator accuracy"), (("val_es_dice", "val_dice"), "validation")]
    panels = [(cols, t) for cols, t in panels if any(c in history.columns and history[c].notna().any() for c in cols)]
    if not panels or "epoch" not in history.columns:
        return None
    fig, axes = _new(3.0 * len(panels), 2.6, ncols=len(panels), squeeze=False)
    for ax, (cols, title) in zip(axes.flat, panels, strict=False):
        for k, c in enumerate(cols):
            if c in history.columns and history[c].notna().any():
                sub = history[["epoch", c]].dropna()
                ax.plot(sub["epoch"], sub[c], marker="o", ms=3, color=_COLORS[k], label=c)
        if title == "discriminator accuracy":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(cols) > 1:
            ax.legend(frameon=False, fontsize=7)
    return _render(fig, "training_curves", "APPLE training: L_seg, discriminator loss and accuracy "
                   "(chance level dotted for two balanced groups), validation ES-Dice and Dice per epoch "
                   "(epoch 0 is the unchanged model).", "Training curves")


def overlay_grid(cases: list[dict]) -> Figure:
    """Rows of (image, truth, before, after) for the chosen cases (PNG: these are images)."""
    cols = 4
    fig, axes = _new(2.0 * cols, 2.0 * len(cases) + 0.2, nrows=len(cases), ncols=cols, squeeze=False)
    titles = ("image", "ground truth", "before", "after")
    for r, case in enumerate(cases):
        img = np.asarray(case["image"])
        for c, key in enumerate(("image", "mask", "before", "after")):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if key != "image":
                m = np.ma.masked_where(np.asarray(case[key]) < 0.5, np.asarray(case[key]))
                ax.imshow(m, cmap=_TRUTH if key == "mask" else _PRED, alpha=0.55, vmin=0, vmax=1,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = titles[c] if r == 0 or key in ("before", "after") else ""
            if key in ("before", "after") and case.get(f"dice_{key}") is not None:
                label += f" (Dice {case[f'dice_{key}']:.2f})"
            ax.set_title(label, fontsize=7)
        where = f"\nslice {case['slice']} of {case['depth']}" if "slice" in case else ""
        axes[r][0].set_ylabel(_short(f"{case['group']} {case['which']}\n{case['id']}", 30) + where, fontsize=7)
    volumes = any("slice" in case for case in cases)
    return _render(fig, "overlays", "Best and worst test cases of each group (by Dice after mitigation): "
                   "image, ground truth (orange), prediction before and after (blue)."
                   + (" Volumes: the slice through the middle of the lesion; Dice is the whole volume's."
                      if volumes else ""), "Example overlays", fmt="png")
