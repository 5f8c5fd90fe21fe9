"""group.html: one self-contained page (no external resources, opens offline) per
parcellation: the mean adjacency heatmap (inline PNG), the degree distribution of each
subject and discriminability against its permutation null distribution (inline SVG)."""

from __future__ import annotations

from html import escape

import numpy as np

from ndmg_cloud.group.result import GroupResult
from ndmg_cloud.report.figures import Graph, colour_bar, data_uri, heatmap

WIDTH, HEIGHT, PAD = 420, 220, 36
MAX_SUBJECT_LINES = 10  # more lines than this are unreadable: the rest are named as not drawn
SUBJECT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    return counts


def null_figure(null: list[float], observed: float | None) -> str:
    """SVG: a histogram of discriminability under shuffled labels, the observed value as a
    red line."""
    if not null or observed is None:
        return ""
    edges = np.linspace(0, 1, 41)
    counts = _bins(np.asarray(null), edges)
    top = max(int(counts.max()), 1)
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def x(v: float) -> float:
        return PAD + v * plot_w

    bars = [
        f'<rect class="null" x="{x(edges[k]):.1f}" y="{PAD + plot_h * (1 - c / top):.1f}" '
        f'width="{plot_w / 40 - 1:.1f}" height="{plot_h * c / top:.1f}" fill="#9aa7b8"/>'
        for k, c in enumerate(counts)
        if c
    ]
    ticks = "".join(
        f'<text x="{x(t):.1f}" y="{HEIGHT - PAD + 14}" font-size="10" text-anchor="middle">{t:.2g}</text>' for t in (0, 0.25, 0.5, 0.75, 1)
    )
    line = (
        f'<line class="observed" x1="{x(observed):.1f}" x2="{x(observed):.1f}" y1="{PAD - 6}" y2="{HEIGHT - PAD}" '
        f'stroke="#c0392b" stroke-width="2"/><text x="{min(x(observed), WIDTH - PAD - 60):.1f}" y="{PAD - 10}" '
        f'font-size="11" fill="#c0392b">observed {observed:.3f}</text>'
    )
    return (
        f'<svg class="discriminability" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="discriminability {observed:.3f} against {len(null)} shuffles">'
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{HEIGHT - PAD}" y2="{HEIGHT - PAD}" stroke="#444"/>'
        + "".join(bars)
        + ticks
        + line
        + f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">discriminability '
        f"(grey: {len(null)} label shuffles)</text></svg>"
    )


def degree_figure(degrees: dict[str, np.ndarray]) -> str:
    """SVG: for each subject (the first ``MAX_SUBJECT_LINES``), the share of its regions
    (over all its scans) with each degree."""
    if not degrees:
        return ""
    hidden = max(0, len(degrees) - MAX_SUBJECT_LINES)
    degrees = dict(list(degrees.items())[:MAX_SUBJECT_LINES])
    top_degree = max(int(v.max()) if v.size else 0 for v in degrees.values())
    edges = np.arange(top_degree + 2) - 0.5
    shares = {s: _bins(v, edges) / max(len(v), 1) for s, v in degrees.items()}
    top_share = max(float(v.max()) for v in shares.values()) or 1.0
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = plot_w / max(top_degree, 1)
    lines, legend = [], []
    for k, (subject, share) in enumerate(shares.items()):
        colour = SUBJECT_COLOURS[k % len(SUBJECT_COLOURS)]
        points = " ".join(f"{PAD + d * step:.1f},{PAD + plot_h * (1 - s / top_share):.1f}" for d, s in enumerate(share))
        lines.append(
            f'<polyline class="subject" data-subject="{escape(subject)}" points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        legend.append(f'<text x="{WIDTH - PAD + 4}" y="{PAD + 12 * k}" font-size="10" fill="{colour}">sub-{escape(subject)}</text>')
    ticks = "".join(
        f'<text x="{PAD + d * step:.1f}" y="{HEIGHT - PAD + 14}" font-size="10" text-anchor="middle">{d}</text>'
        for d in range(0, top_degree + 1, max(1, top_degree // 8))
    )
    return (
        f'<svg class="degrees" xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 50}" height="{HEIGHT}" role="img" '
        f'aria-label="degree distribution per subject">'
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{HEIGHT - PAD}" y2="{HEIGHT - PAD}" stroke="#444"/>'
        + "".join(lines)
        + "".join(legend)
        + ticks
        + (f'<text x="{WIDTH - PAD + 4}" y="{PAD + 12 * len(legend)}" font-size="10">+{hidden} not drawn</text>' if hidden else "")
        + f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">degree (share of regions, '
        f"all of a subject's scans)</text></svg>"
    )


def mean_heatmap(result: GroupResult) -> tuple[str | None, int]:
    """The mean adjacency as an inline PNG (figures.heatmap: the run report's drawing)."""
    n = len(result.mean)
    if n == 0 or not result.scans:
        return None, 1
    rows, cols = np.nonzero(np.triu(result.mean))
    graph = Graph([(int(i) + 1, int(j) + 1, float(result.mean[i, j])) for i, j in zip(rows, cols, strict=True)], 1, n)
    drawn = heatmap(graph)
    return drawn.data_uri(), drawn.nodes_per_pixel


def group_html(result: GroupResult) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("ndmg_cloud.group", "templates"), autoescape=select_autoescape(["j2"]))
    heat, per_pixel = mean_heatmap(result)
    return env.get_template("group.html.j2").render(
        result=result,
        doc=result.to_dict(),
        heatmap=heat,
        nodes_per_pixel=per_pixel,
        colour_bar=data_uri(colour_bar(), "image/png"),
        null_svg=null_figure(result.discriminability.null, result.discriminability.value),
        degree_svg=degree_figure(result.degrees),
    )
