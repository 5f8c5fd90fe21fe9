"""Discriminability (Bridgeford et al., 2021): how much more alike two scans of the same
subject are than scans of different subjects, with its permutation p-value.

For every scan i and every other scan i' of the same subject, the fraction of the other
subjects' scans j with d(i, j) > d(i, i') (ties count half); discriminability is the mean
of these fractions over all (i, i'): 1 when every subject's scans are closer to each
other than to anyone else's, about 0.5 when subjects cannot be told apart. The p-value is
(1 + the number of label shuffles reaching it) / (1 + shuffles). Distances are Euclidean
between the scans' adjacency matrices. A subject with a single scan takes no part.

This is the statistic and test of ``hyppo.discrim.DiscrimOneSample`` (the reference
implementation; ``tests/test_group.py`` checks them against it on fixed data), written
here because hyppo refuses groups of 10 scans or fewer and pulls numba into the
orchestrator's image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERMUTATIONS = 1000
DISTANCE = "Euclidean distance between adjacency matrices (streamline counts)"


@dataclass(frozen=True)
class Discriminability:
    value: float | None
    p_value: float | None
    permutations: int = 0
    subjects: int = 0  # subjects with two scans or more: the ones that take part
    scans: int = 0
    why_not: str | None = None
    distance: str = DISTANCE
    null: list[float] = field(default_factory=list, repr=False)  # for the figure

    def to_dict(self) -> dict[str, Any]:
        null = np.asarray(self.null)
        return {
            "value": self.value,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "subjects": self.subjects,
            "scans": self.scans,
            "distance": self.distance,
            "why_not": self.why_not,
            "null_mean": round(float(null.mean()), 4) if null.size else None,
            "null_95th_percentile": round(float(np.quantile(null, 0.95)), 4) if null.size else None,
        }


def why_not(subjects: list[str]) -> str | None:
    """Why discriminability cannot be computed for scans of these subjects, or None."""
    repeated = [s for s, n in Counter(subjects).items() if n >= 2]
    if len(repeated) < 2:
        return (
            f"needs at least 2 subjects with 2 or more scans each; this group has {len(repeated)} "
            f"({len(set(subjects))} subjects, {len(subjects)} scans)"
        )
    return None


def discriminability(vectors: np.ndarray, subjects: list[str], permutations: int = PERMUTATIONS, seed: int = 0) -> Discriminability:
    """``vectors``: one row per scan; ``subjects``: each row's subject."""
    reason = why_not(subjects)
    if reason:
        return Discriminability(None, None, why_not=reason)
    counts = Counter(subjects)
    keep = np.array([counts[s] >= 2 for s in subjects])
    labels = np.asarray(subjects)[keep]
    x = np.asarray(vectors, float)[keep]
    distances = euclidean_distances(x)
    observed = statistic(distances, labels)
    rng = np.random.default_rng(seed)
    null = np.array([statistic(distances, rng.permutation(labels)) for _ in range(permutations)])
    return Discriminability(
        value=round(observed, 4),
        p_value=float((1 + (null >= observed).sum()) / (1 + permutations)) if permutations else None,
        permutations=permutations,
        subjects=len(set(labels)),
        scans=len(labels),
        null=[round(float(v), 4) for v in null],
    )


def euclidean_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances between the rows of ``x`` (n x n, without the n x n x d
    temporary: 300 scans of a 116-region atlas would need gigabytes)."""
    x = x.astype(np.float64)
    squares = (x * x).sum(axis=1)
    d2 = squares[:, None] + squares[None, :] - 2 * (x @ x.T)
    np.fill_diagonal(d2, 0)
    distances: np.ndarray = np.sqrt(np.maximum(d2, 0))
    return distances


def statistic(distances: np.ndarray, labels: np.ndarray) -> float:
    """Discriminability of a distance matrix under these labels (every label has 2+ scans)."""
    fractions = []
    for i in range(len(labels)):
        same = labels == labels[i]
        others = np.sort(distances[i, ~same])
        same[i] = False
        within = distances[i, same]
        closer = np.searchsorted(others, within, side="left")  # other subjects' scans strictly closer
        ties = np.searchsorted(others, within, side="right") - closer
        fractions.append(1 - (closer + 0.5 * ties) / len(others))
    return float(np.mean(np.concatenate(fractions)))
