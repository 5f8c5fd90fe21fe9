"""Figures for the run report, drawn without plotting libraries (the report runs on the
Airflow worker, which needs none): a connectome's graph figures and adjacency heatmap
from its edge list, as a small palette PNG, and the ticks of a time axis.

Edge lists are m2g's (networkx ``write_weighted_edgelist``: ``i j weight`` per line, space
separated, no header, non-zero edges only; node 0 is m2g's background and has no edges)
and ``lite``'s (written the same way, node 0 the background too). A square matrix of numbers (legacy ndmg's
``_adj.ssv``) is read as a dense adjacency matrix.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_HEATMAP_PIXELS = 128  # per side; larger graphs are binned (sums of node blocks)
NO_EDGE = (255, 255, 255)
# matplotlib's viridis at 0, 1/4, 1/2, 3/4, 1 (palette entries 1..255 interpolate them)
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


class GraphError(ValueError):
    """A connectome file that is not an edge list or an adjacency matrix; says why."""


@dataclass(frozen=True)
class Graph:
    """An undirected weighted graph read from one connectome file. An edge list does not
    name nodes without edges: ``first`` is the pipeline's first node index when known
    (1 for m2g and lite, whose node 0 is the background), ``size`` the node count when the
    file says it (a dense matrix)."""

    edges: list[tuple[int, int, float]]  # i <= j, weight != 0
    first: int | None = None
    size: int | None = None

    @property
    def first_node(self) -> int:
        lowest = min((i for i, _, _ in self.edges), default=0)
        return lowest if self.first is None else min(self.first, lowest)

    @property
    def last_node(self) -> int:
        if self.size is not None:
            return self.first_node + self.size - 1
        return max((j for _, j, _ in self.edges), default=self.first_node - 1)

    def stats(self) -> dict[str, int | float | None]:
        """``nodes``: the node indices from the first to the last with an edge (or the
        matrix's size): the heatmap's side; ``connected_nodes``: nodes with at least one
        edge; ``density``: edges between distinct nodes over the pairs of ``nodes``;
        weights are streamline counts in m2g and lite (a streamline counts for every pair
        of regions it passes through)."""
        first, last = self.first_node, self.last_node
        nodes = last - first + 1 if self.edges or self.size else 0
        connected = {i for i, _, _ in self.edges} | {j for _, j, _ in self.edges}
        between = sum(1 for i, j, _ in self.edges if i != j)
        pairs = nodes * (nodes - 1) // 2
        weights = [w for _, _, w in self.edges]
        return {
            "nodes": nodes,
            "first_node": first if nodes else None,
            "connected_nodes": len(connected),
            "edges": len(self.edges),
            "self_loops": len(self.edges) - between,
            "density": round(between / pairs, 4) if pairs else 0.0,
            "total_weight": _plain(sum(weights)),
            "max_weight": _plain(max(weights, key=abs, default=0)),
        }


def parse_connectome(data: bytes, first_node: int | None = None) -> Graph:
    """An edge list (``i j weight``, or ``i j`` for weight 1) or a square matrix;
    ``first_node``: the pipeline's first node index, when known (see ``Graph``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GraphError("not text (binary content)") from None
    fast = _plain_edge_list(text)
    if fast is not None:
        return Graph(fast, first_node)
    rows = [line.replace(",", " ").split() for line in text.splitlines()]
    rows = [r for r in rows if r and not r[0].startswith("#")]
    if not rows:
        return Graph([], first_node)
    try:
        numbers = [[float(v) for v in r] for r in rows]
    except ValueError as err:
        raise GraphError(f"not numbers: {err}") from None
    widths = {len(r) for r in numbers}
    if widths <= {2, 3} and all(r[0].is_integer() and r[1].is_integer() and r[0] >= 0 and r[1] >= 0 for r in numbers):
        merged: dict[tuple[int, int], float] = {}
        for r in numbers:  # a pair listed both ways (a symmetric listing) is one edge
            i, j = sorted((int(r[0]), int(r[1])))
            merged[i, j] = max(merged.get((i, j), 0.0), r[2] if len(r) == 3 else 1.0, key=abs)
        return Graph(sorted((i, j, w) for (i, j), w in merged.items() if w), first_node)
    if widths == {len(numbers)}:
        n = len(numbers)
        return Graph([(i, j, numbers[i][j]) for i in range(n) for j in range(i, n) if numbers[i][j]], 0, n)
    raise GraphError(f"neither an 'i j weight' edge list nor a square matrix (rows of {sorted(widths)} values)")


def _plain_edge_list(text: str) -> list[tuple[int, int, float]] | None:
    """The common case fast (10,000 scans are read for one report): every line
    ``i j weight`` with integer nodes, each pair once; None when the file is anything else."""
    if "#" in text or "," in text:
        return None
    lines = [line.split() for line in text.splitlines()]
    if not lines or any(len(line) != 3 for line in lines if line):
        return None
    tokens = text.split()
    try:
        firsts, seconds = list(map(int, tokens[0::3])), list(map(int, tokens[1::3]))
        weights = list(map(float, tokens[2::3]))
    except ValueError:
        return None
    if min(firsts) < 0 or min(seconds) < 0:
        return None
    edges = [(i, j, w) if i <= j else (j, i, w) for i, j, w in zip(firsts, seconds, weights, strict=True) if w]
    if len({(i, j) for i, j, _ in edges}) != len(edges):
        return None  # a pair listed twice: merged by the general reader
    edges.sort()
    return edges


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 6)


# ----------------------------------------------------------------------------- heatmap
def palette() -> list[tuple[int, int, int]]:
    """256 colours: 0 = no edge (white), 1..255 = viridis from the weakest to the strongest."""
    colours = [NO_EDGE]
    for k in range(255):
        x = k / 254 * (len(VIRIDIS) - 1)
        lo = min(int(x), len(VIRIDIS) - 2)
        f = x - lo
        (r0, g0, b0), (r1, g1, b1) = VIRIDIS[lo], VIRIDIS[lo + 1]
        colours.append((round(r0 + (r1 - r0) * f), round(g0 + (g1 - g0) * f), round(b0 + (b1 - b0) * f)))
    return colours


PALETTE = palette()


def colour_index(weight: float, strongest: float) -> int:
    """Palette index of a weight on a log scale (log(1 + |w|) / log(1 + |max|)); 0 = none."""
    if not weight or not strongest:
        return 0
    scaled = math.log1p(abs(weight)) / math.log1p(abs(strongest))
    return max(1, min(255, 1 + round(254 * scaled)))


@dataclass(frozen=True)
class Heatmap:
    png: bytes
    side: int  # pixels per side
    nodes_per_pixel: int  # 1, or the block size when the graph was binned
    first_node: int
    last_node: int

    def data_uri(self) -> str:
        return data_uri(self.png, "image/png")


def heatmap(graph: Graph, max_pixels: int = MAX_HEATMAP_PIXELS) -> Heatmap:
    """The adjacency matrix of nodes first..last, symmetric, one pixel per node (or per
    block of nodes, summed, when there are more than ``max_pixels``)."""
    first, last = graph.first_node, max(graph.last_node, graph.first_node)
    nodes = last - first + 1
    block = max(1, math.ceil(nodes / max_pixels))
    side = math.ceil(nodes / block)
    cells: dict[tuple[int, int], float] = {}
    for i, j, w in graph.edges:
        a, b = (i - first) // block, (j - first) // block
        cells[a, b] = cells.get((a, b), 0.0) + w
        if a != b:
            cells[b, a] = cells.get((b, a), 0.0) + w
    strongest = max(cells.values(), key=abs, default=0.0)
    pixels = [bytearray(side) for _ in range(side)]
    for (a, b), w in cells.items():
        pixels[a][b] = colour_index(w, strongest)
    return Heatmap(palette_png(pixels, PALETTE), side, block, first, last)


def colour_bar(width: int = 255) -> bytes:
    """The palette's ramp, one pixel high (the report stretches it)."""
    return palette_png([bytearray(1 + k * 254 // max(width - 1, 1) for k in range(width))], PALETTE)


def palette_png(rows: list[bytearray], colours: list[tuple[int, int, int]]) -> bytes:
    """An 8-bit indexed PNG: one palette index per pixel, rows top to bottom."""
    height, width = len(rows), len(rows[0]) if rows else 0
    raw = b"".join(b"\x00" + bytes(row) for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", b"".join(bytes(c) for c in colours))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def data_uri(body: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(body).decode('ascii')}"


# ----------------------------------------------------------------------------- time axis
# tick steps in seconds: 1 s .. 30 s, 1 min .. 30 min, 1 h .. 12 h, then days
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


def time_ticks(start: float, end: float, max_ticks: int = 8) -> list[tuple[float, str, str]]:
    """Ticks of an axis from ``start`` to ``end`` (epoch seconds): (offset in seconds,
    clock time in UTC, time elapsed since ``start``), at round elapsed steps from 0."""
    span = max(end - start, 1.0)
    step = next((s for s in TICK_STEPS if span / s <= max_ticks), None)
    if step is None:
        step = 86400 * math.ceil(span / 86400 / max_ticks)
    clock = "%H:%M:%S" if span < 86400 else "%m-%d %H:%M"
    ticks = []
    for k in range(int(span // step) + 1):
        offset = k * step
        moment = datetime.fromtimestamp(start + offset, tz=UTC)
        ticks.append((float(offset), moment.strftime(clock), elapsed(offset)))
    return ticks


def elapsed(seconds: float) -> str:
    """``0``, ``+45 s``, ``+5 min``, ``+1 min 30 s``, ``+2 h``, ``+1 h 30 min``, ``+2 d 6 h``."""
    seconds = int(round(seconds))
    if seconds == 0:
        return "0"
    if seconds < 60:
        return f"+{seconds} s"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"+{m} min" + (f" {s} s" if s else "")
    if seconds < 86400:
        h, m = divmod(seconds // 60, 60)
        return f"+{h} h" + (f" {m} min" if m else "")
    d, h = divmod(seconds // 3600, 24)
    return f"+{d} d" + (f" {h} h" if h else "")
