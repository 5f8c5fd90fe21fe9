"""Graph statistics of one connectome, computed with networkx on its weighted adjacency.

The node set is the parcellation's regions, nodes 1..n (m2g's numbering: node 0 is the
atlas background and is left out), so a region no streamline reached still counts: it
lowers the density and the mean degree, as it should. Weights are streamline counts.

- ``degree``: edges per node; ``strength``: summed edge weight per node;
- ``density``: edges / (n (n - 1) / 2); self-loops (legacy ndmg's diagonal) count nowhere;
- ``clustering``: networkx ``average_clustering`` (unweighted, nodes of degree < 2 count 0);
- ``global_efficiency``: networkx ``global_efficiency`` (unweighted shortest paths), left
  out (None) above ``MAX_EFFICIENCY_NODES`` nodes, where it would take minutes per scan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ndmg_cloud.report.figures import Graph

MAX_EFFICIENCY_NODES = 500  # networkx's all-pairs BFS in Python: seconds per scan at 500


@dataclass(frozen=True)
class Distribution:
    """A per-node quantity summarised: mean and five quantiles (min, 25 %, median, 75 %, max)."""

    mean: float
    min: float
    q25: float
    median: float
    q75: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Distribution:
        if not len(values):
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        return cls(*(round(float(v), 4) for v in (np.mean(values), *q)))


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    edges: int
    density: float
    total_weight: float
    degree: Distribution
    strength: Distribution
    clustering: float
    global_efficiency: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self) -> dict[str, float | int | None]:
        """The flat columns of group.csv."""
        return {
            "nodes": self.nodes,
            "edges": self.edges,
            "density": self.density,
            "total_weight": self.total_weight,
            "mean_degree": self.degree.mean,
            "max_degree": self.degree.max,
            "mean_strength": self.strength.mean,
            "max_strength": self.strength.max,
            "clustering": self.clustering,
            "global_efficiency": self.global_efficiency,
        }


def adjacency(graph: Graph, nodes: int) -> np.ndarray:
    """The symmetric weighted adjacency of nodes 1..``nodes`` (row/column k-1 is node k);
    edges to node 0 (background) or beyond ``nodes`` are not part of the parcellation."""
    matrix = np.zeros((nodes, nodes))
    for i, j, w in graph.edges:
        if 1 <= i <= nodes and 1 <= j <= nodes:
            matrix[i - 1, j - 1] = matrix[j - 1, i - 1] = w
    return matrix


def graph_stats(matrix: np.ndarray) -> GraphStats:
    import networkx as nx

    n = len(matrix)
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    g = nx.from_numpy_array(off_diagonal)
    degree = np.array([d for _, d in g.degree()], float)
    strength = np.array([s for _, s in g.degree(weight="weight")], float)
    edges = g.number_of_edges()
    return GraphStats(
        nodes=n,
        edges=edges,
        density=round(edges / (n * (n - 1) / 2), 4) if n > 1 else 0.0,
        total_weight=round(float(np.triu(matrix, k=1).sum()), 4),
        degree=Distribution.of(degree),
        strength=Distribution.of(strength),
        clustering=round(nx.average_clustering(g), 4) if n else 0.0,
        global_efficiency=round(nx.global_efficiency(g), 4) if 0 < n <= MAX_EFFICIENCY_NODES else None,
    )
