"""Picks vs ground truth: one-to-one matching, precision / recall / F1, PR curve, AP; pixel metrics.

Conventions (all functions below):

* **Matching** is per micrograph (the ``micrograph`` column) and one-to-one: a pick and a true
  particle can match when their centres are at most ``radius_px`` apart, *inclusive* (a pick
  exactly at the radius matches; a relative tolerance of 1e-9 absorbs round-off). The default
  radius elsewhere in the project is half the particle diameter.
  :func:`match_picks` solves the assignment with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``; pairs beyond the radius cost more than any
  possible set of valid pairs, then are discarded): the result has the *largest possible
  number of matches*, and among those the smallest total distance. Two picks equidistant from
  one particle: exactly one is a TP.
* **Empty cases**: ``precision = tp / (tp + fp)``, **1 when there are no picks** (nothing wrong
  was picked); ``recall = tp / (tp + fn)``, **1 when there is no truth** (nothing was missed);
  ``f1 = 2 P R / (P + R)``, 0 when ``P + R = 0``. So no picks and no truth → P = R = F1 = 1; no
  picks, some truth → P = 1, R = 0, F1 = 0; picks, no truth → P = 0, R = 1, F1 = 0. AP follows
  suit: 1 with neither, 0 with only one of them.
* **Thresholds**: a pick is kept at threshold ``t`` when ``score >= t`` (NaN scores never pass
  a threshold; ``threshold=None`` keeps every pick).
* **Precision–recall curve** (one point per distinct score, descending): the TP count at
  threshold ``t`` is the size of a *maximum* one-to-one matching between the picks with
  ``score >= t`` and the truth, i.e. exactly what :func:`match_picks` /
  :func:`precision_recall_f1` give at that threshold (not the greedy COCO/Topaz count, which
  can be lower). It is computed in one pass: the picks whose set can be matched form a
  transversal matroid, so adding picks in descending score and keeping each one for which an
  augmenting path exists (Kuhn's algorithm) gives the maximum matching of every prefix at once.
  Isolated pick–particle pairs and "stars" (one pick or one particle in a connected group of
  candidate pairs) are settled vectorised; only groups with ≥ 2 picks *and* ≥ 2 particles
  enter the Python augmenting loop.
* **Average precision** as in scikit-learn's ``average_precision_score``:
  ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct scores in descending order, ``R_0 = 0``;
  recall is relative to *all* true particles, so particles no pick reaches cap the curve.

The command line (``python -m cryoparticle.picking.evaluate --help``) reads picks and truth
files in any supported format (RELION coordinate files, ``particles.star`` and coordinate
lists, EMAN BOX, CryoPPP CSV, Topaz, cryoSPARC particle CSV), matches them by micrograph name
and prints/writes the metrics. A micrograph that several files give (a ``predict.py`` folder:
``NAME.star``, ``NAME.box``, ``NAME.csv``, ``particles.star``) is read from one of them, by
:data:`SOURCE_PREFERENCE` (STAR first), and the table says which (``picks_file``).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cryoparticle.errors import exit_on_input_error, file_error, param_error
from cryoparticle.io.checks import require_file
from cryoparticle.io.coords import (
    MICROGRAPH_EXTENSIONS,
    PARTICLE_EXTENSIONS,
    micrograph_key,
    particle_format,
    read_particles,
    validate_particles,
)
from cryoparticle.io.jsonfile import jsonable, write_json

_TOLERANCE = 1e-9
CURVE_COLUMNS: tuple[str, ...] = ("threshold", "tp", "fp", "fn", "precision", "recall", "f1")
"""Columns of :func:`precision_recall_curve`."""
METRIC_COLUMNS: tuple[str, ...] = ("n_picks", "n_truth", "tp", "fp", "fn", "precision",
                                   "recall", "f1", "ap")
"""Per-micrograph columns of :func:`evaluate_micrographs` (after ``micrograph``)."""


# --------------------------------------------------------------------------- helpers


def _check_radius(radius_px: float) -> float:
    try:
        value = float(radius_px)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise param_error("radius_px", radius_px, "must be a non-negative number of pixels")
    return value


def _rates(tp: Any, n_picks: Any, n_truth: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 with the module's conventions for empty denominators."""
    tp, n_picks, n_truth = (np.asarray(v, dtype=np.float64) for v in (tp, n_picks, n_truth))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_picks > 0, tp / n_picks, 1.0)
        recall = np.where(n_truth > 0, tp / n_truth, 1.0)
        total = precision + recall
        f1 = np.where(total > 0, 2 * precision * recall / total, 0.0)
    return precision, recall, f1


def _scores_of(picks: pd.DataFrame, what: str) -> np.ndarray:
    scores = picks["score"].to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        raise param_error("picks.score", f"{int(np.isnan(scores).sum())} NaN",
                          f"{what} needs a score for every pick")
    return scores


def _run_starts(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the first element of each run of equal values (empty-safe)."""
    return np.r_[True, values[1:] != values[:-1]][:len(values)]


class _Problem:
    """Picks and truth prepared for matching: validated tables, micrograph codes, candidate
    pairs within the radius (``edge_pick``, ``edge_truth``, ``edge_distance``) and the
    connected groups of the candidate graph."""

    def __init__(self, picks: pd.DataFrame, truth: pd.DataFrame, radius_px: float,
                 names: Sequence[str] | None = None) -> None:
        self.radius = _check_radius(radius_px)
        self.picks = validate_particles(picks, "picks")
        self.truth = validate_particles(truth, "truth")
        if names is None:
            names = sorted(set(self.picks["micrograph"]) | set(self.truth["micrograph"]))
        self.names = list(dict.fromkeys(str(name) for name in names))
        index = pd.Index(self.names)
        self.pick_code = index.get_indexer(self.picks["micrograph"])
        self.truth_code = index.get_indexer(self.truth["micrograph"])
        self._edges()

    @property
    def n_picks(self) -> int:
        return len(self.picks)

    @property
    def n_truth(self) -> int:
        return len(self.truth)

    def _edges(self) -> None:
        """Candidate pairs (same micrograph, distance ≤ radius) via one KD-tree query.

        Micrographs are laid side by side along x, far enough apart that no pair can cross.
        """
        px, py = self.picks["x"].to_numpy(), self.picks["y"].to_numpy()
        tx, ty = self.truth["x"].to_numpy(), self.truth["y"].to_numpy()
        pin, tin = self.pick_code >= 0, self.truth_code >= 0
        empty = np.zeros(0, dtype=np.int64)
        self.edge_pick, self.edge_truth = empty, empty
        self.edge_distance = np.zeros(0)
        if pin.any() and tin.any():
            xs = np.concatenate([px[pin], tx[tin]])
            step = float(xs.max() - xs.min()) + 4 * (self.radius + 1)
            p_idx, t_idx = np.flatnonzero(pin), np.flatnonzero(tin)
            p_xy = np.column_stack([px[pin] - xs.min() + self.pick_code[pin] * step, py[pin]])
            t_xy = np.column_stack([tx[tin] - xs.min() + self.truth_code[tin] * step, ty[tin]])
            search = self.radius * (1 + 1e-6) + 1e-6
            found = cKDTree(p_xy).sparse_distance_matrix(cKDTree(t_xy), search,
                                                         output_type="ndarray")
            i, j = p_idx[found["i"]], t_idx[found["j"]]
            distance = np.hypot(px[i] - tx[j], py[i] - ty[j])  # exact, from the originals
            ok = ((distance <= self.radius * (1 + _TOLERANCE) + _TOLERANCE)
                  & (self.pick_code[i] == self.truth_code[j]))
            order = np.lexsort((j[ok], i[ok]))
            self.edge_pick = i[ok][order].astype(np.int64)
            self.edge_truth = j[ok][order].astype(np.int64)
            self.edge_distance = distance[ok][order]
        # Connected groups of the bipartite candidate graph (picks 0..P-1, truth P..P+T-1).
        n = self.n_picks + self.n_truth
        graph = sparse.coo_matrix((np.ones(len(self.edge_pick)),
                                   (self.edge_pick, self.n_picks + self.edge_truth)),
                                  shape=(n, n))
        _, self.node_group = connected_components(graph, directed=False)
        self.edge_group = self.node_group[self.edge_pick]
        n_groups = int(self.node_group.max()) + 1 if n else 0
        has_edge_pick = np.zeros(self.n_picks, dtype=bool)
        has_edge_pick[self.edge_pick] = True
        has_edge_truth = np.zeros(self.n_truth, dtype=bool)
        has_edge_truth[self.edge_truth] = True
        self.group_picks = np.bincount(self.node_group[:self.n_picks][has_edge_pick],
                                       minlength=n_groups)
        self.group_truth = np.bincount(self.node_group[self.n_picks:][has_edge_truth],
                                       minlength=n_groups)

    # ------------------------------------------------------------------ Hungarian matching

    def match(self, pick_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Maximum-cardinality, minimum-distance one-to-one matching of the picks in
        ``pick_mask`` (all when None): ``(pairs (K, 2) [pick row, truth row], distances)``."""
        keep = np.ones(len(self.edge_pick), dtype=bool)
        if pick_mask is not None:
            keep = pick_mask[self.edge_pick]
        ep, et, ed = self.edge_pick[keep], self.edge_truth[keep], self.edge_distance[keep]
        if not len(ep):
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
        # Groups of the restricted graph: recompute (removing picks can split groups).
        n = self.n_picks + self.n_truth
        graph = sparse.coo_matrix((np.ones(len(ep)), (ep, self.n_picks + et)), shape=(n, n))
        _, node_group = connected_components(graph, directed=False)
        group = node_group[ep]
        # Distinct picks / truth per group.
        first_pick = np.unique(ep, return_index=True)[1]
        n_p = np.bincount(group[first_pick], minlength=int(node_group.max()) + 1)
        first_truth = np.unique(et, return_index=True)[1]
        n_t = np.bincount(group[first_truth], minlength=int(node_group.max()) + 1)
        star = (n_p[group] == 1) | (n_t[group] == 1)
        # Stars: the shortest candidate pair of the group (ties: lowest pick, then truth row).
        s_order = np.lexsort((et[star], ep[star], ed[star], group[star]))
        s_group = group[star][s_order]
        first = _run_starts(s_group)
        pairs = [np.column_stack([ep[star][s_order][first], et[star][s_order][first]])]
        dists = [ed[star][s_order][first]]
        # General groups: Hungarian on the group's dense distance matrix.
        rest = ~star
        if rest.any():
            r_order = np.argsort(group[rest], kind="stable")
            g, rp, rt, rd = (a[rest][r_order] for a in (group, ep, et, ed))
            bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
            for start, end in itertools.pairwise(bounds):  # conflicting groups only
                gp, gt, gd = rp[start:end], rt[start:end], rd[start:end]
                rows, row_of = np.unique(gp, return_inverse=True)
                cols, col_of = np.unique(gt, return_inverse=True)
                big = (min(len(rows), len(cols)) + 1) * (self.radius + 1) * 2
                cost = np.full((len(rows), len(cols)), big)
                cost[row_of, col_of] = gd
                r, c = linear_sum_assignment(cost)
                valid = cost[r, c] < big
                pairs.append(np.column_stack([rows[r[valid]], cols[c[valid]]]))
                dists.append(cost[r[valid], c[valid]])
        pairs_all = np.concatenate(pairs).astype(np.int64)
        dist_all = np.concatenate(dists)
        order = np.argsort(pairs_all[:, 0], kind="stable")
        return pairs_all[order], dist_all[order]

    # ------------------------------------------------------------------ ranking

    def accepted(self, rank: np.ndarray) -> np.ndarray:
        """Matroid greedy in ``rank`` order (0 = best): ``True`` for the picks that enlarge the
        maximum matching of the picks ranked before them. For every prefix of the ranking the
        number of accepted picks is its maximum matching size."""
        out = np.zeros(self.n_picks, dtype=bool)
        if not len(self.edge_pick):
            return out
        group = self.edge_group
        n_p, n_t = self.group_picks[group], self.group_truth[group]
        # One pick in the group: it is matched. One particle: the best-ranked pick takes it.
        out[self.edge_pick[n_p == 1]] = True
        single = (n_t == 1) & (n_p > 1)
        if single.any():
            sp, sg = self.edge_pick[single], group[single]
            order = np.lexsort((rank[sp], sg))
            first = _run_starts(sg[order])
            out[sp[order][first]] = True
        general = (n_p > 1) & (n_t > 1)
        if general.any():
            self._augment(rank, general, out)
        return out

    def _augment(self, rank: np.ndarray, general: np.ndarray, out: np.ndarray) -> None:
        """Kuhn's augmenting paths over the picks of the general groups, best rank first."""
        ep, et, ed = self.edge_pick[general], self.edge_truth[general], self.edge_distance[general]
        order = np.lexsort((ed, ep))
        ep, et = ep[order], et[order]
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        ends = np.r_[starts[1:], len(ep)]
        adjacency = {int(ep[s]): et[s:e].tolist() for s, e in zip(starts, ends, strict=True)}
        match_truth: dict[int, int] = {}
        match_pick: dict[int, int] = {}
        for pick in sorted(adjacency, key=lambda p: rank[p]):
            parent: dict[int, int] = {}
            queue, head, found = [pick], 0, False
            while head < len(queue) and not found:
                u = queue[head]
                head += 1
                for t in adjacency[u]:
                    if t in parent:
                        continue
                    parent[t] = u
                    if t not in match_truth:
                        while True:  # flip the augmenting path ending at free particle t
                            u = parent[t]
                            previous = match_pick.get(u, -1)
                            match_truth[t], match_pick[u] = u, t
                            if u == pick:
                                break
                            t = previous
                        found = True
                        break
                    queue.append(match_truth[t])
            out[pick] = found


def _curve_points(scores: np.ndarray, accepted: np.ndarray, group: np.ndarray,
                  n_truth: np.ndarray) -> pd.DataFrame:
    """PR points per group (``group`` codes, ``n_truth`` per code): one row per distinct score
    of each group, descending; columns ``group`` + :data:`CURVE_COLUMNS`."""
    order = np.lexsort((-scores, group))
    g, s, a = group[order], scores[order], accepted[order].astype(np.int64)
    new_group = _run_starts(g)
    starts = np.flatnonzero(new_group)
    group_start = starts[np.cumsum(new_group) - 1]
    tp_cum = np.cumsum(a)
    tp = tp_cum - np.r_[0, tp_cum][group_start]
    n = np.arange(len(g)) - group_start + 1
    last = np.r_[(g[1:] != g[:-1]) | (s[1:] != s[:-1]), True][:len(g)]
    g, s, tp, n = g[last], s[last], tp[last], n[last]
    nt = n_truth[g]
    precision, recall, f1 = _rates(tp, n, nt)
    return pd.DataFrame({"group": g, "threshold": s, "tp": tp, "fp": n - tp, "fn": nt - tp,
                         "precision": precision, "recall": recall, "f1": f1})


def _average_precision(points: pd.DataFrame, n_groups: int, n_picks: np.ndarray,
                       n_truth: np.ndarray) -> np.ndarray:
    """AP per group from :func:`_curve_points` rows (Σ ΔR·P), with the empty-case conventions."""
    g = points["group"].to_numpy()
    recall = points["recall"].to_numpy()
    first = _run_starts(g)
    previous = np.where(first, 0.0, np.r_[0.0, recall[:-1]])
    ap = np.bincount(g, weights=(recall - previous) * points["precision"].to_numpy(),
                     minlength=n_groups).astype(np.float64)
    return np.where(n_picks > 0, ap, np.where(n_truth > 0, 0.0, 1.0))


# --------------------------------------------------------------------------- public API


def match_picks(picks: pd.DataFrame, truth: pd.DataFrame,
                radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of picks to true particles, per micrograph (Hungarian algorithm).

    Returns ``(pairs, distances)``: ``pairs`` is an ``(K, 2)`` int array of *positional* row
    indices ``[pick_row, truth_row]`` (sorted by pick row), ``distances`` the K centre distances
    in pixels, all ``<= radius_px`` (inclusive). The matching has the maximum number of pairs
    and, among those, the smallest total distance.
    """
    return _Problem(picks, truth, radius_px).match()


def precision_recall_f1(picks: pd.DataFrame, truth: pd.DataFrame, radius_px: float,
                        threshold: float | None = None) -> dict[str, float]:
    """``{tp, fp, fn, precision, recall, f1}`` of the picks with ``score >= threshold`` (all
    when None); see the module docstring for the empty-case conventions."""
    problem = _Problem(picks, truth, radius_px)
    mask = None
    if threshold is not None:
        mask = problem.picks["score"].to_numpy() >= float(threshold)
    pairs, _ = problem.match(mask)
    n_picks = problem.n_picks if mask is None else int(mask.sum())
    tp = len(pairs)
    precision, recall, f1 = _rates(tp, n_picks, problem.n_truth)
    return {"tp": tp, "fp": n_picks - tp, "fn": problem.n_truth - tp,
            "precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _pooled_curve(problem: _Problem) -> pd.DataFrame:
    scores = _scores_of(problem.picks, "a precision-recall curve")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.lexsort((np.arange(len(scores)), -scores))] = np.arange(len(scores))
    accepted = problem.accepted(rank)
    points = _curve_points(scores, accepted, np.zeros(len(scores), dtype=np.int64),
                           np.array([problem.n_truth]))
    return points.drop(columns="group").reset_index(drop=True)


def precision_recall_curve(picks: pd.DataFrame, truth: pd.DataFrame,
                           radius_px: float) -> pd.DataFrame:
    """Precision, recall and F1 at every distinct pick score (descending), pooled over
    micrographs: columns :data:`CURVE_COLUMNS`. Row ``k`` equals
    ``precision_recall_f1(picks, truth, radius_px, threshold=row.threshold)``.
    Every pick needs a score; no picks → an empty table."""
    return _pooled_curve(_Problem(picks, truth, radius_px))


def average_precision(picks: pd.DataFrame, truth: pd.DataFrame, radius_px: float) -> float:
    """Area under the step-wise PR curve, ``Σ (R_n − R_{n−1}) P_n`` (scikit-learn's
    definition), pooled over micrographs; 1.0 with no picks and no truth, 0.0 with only one."""
    problem = _Problem(picks, truth, radius_px)
    points = _pooled_curve(problem).assign(group=0)
    return float(_average_precision(points, 1, np.array([problem.n_picks]),
                                    np.array([problem.n_truth]))[0])


def best_f1_threshold(picks: pd.DataFrame, truth: pd.DataFrame,
                      radius_px: float) -> tuple[float, float]:
    """``(threshold, f1)`` maximising F1 over the distinct scores (ties: the highest
    threshold). Keeping no pick at all (threshold ``inf``) is chosen only when strictly better,
    i.e. when there is no truth (F1 = 1 by convention) or no pick."""
    problem = _Problem(picks, truth, radius_px)
    curve = _pooled_curve(problem)
    nothing = 1.0 if problem.n_truth == 0 else 0.0
    if curve.empty:
        return math.inf, nothing
    best = int(np.argmax(curve["f1"].to_numpy()))
    f1 = float(curve["f1"].iloc[best])
    if nothing > f1:
        return math.inf, nothing
    return float(curve["threshold"].iloc[best]), f1


def evaluate_micrographs(picks_df: pd.DataFrame, truth_df: pd.DataFrame, radius_px: float,
                         threshold: float | None = None, *,
                         micrographs: Sequence[str] | None = None,
                         ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Metrics per micrograph and pooled.

    Args:
        picks_df, truth_df: particle tables; rows are grouped by the ``micrograph`` column
            (names must match exactly; the CLI normalises them with :func:`micrograph_key`).
        radius_px: match radius in pixels (inclusive).
        threshold: keep picks with ``score >= threshold`` for tp/fp/fn/P/R/F1 (None: all).
            AP and the best-F1 threshold use every pick, whatever ``threshold``.
        micrographs: the micrographs to evaluate (default: every name in either table). Rows
            on other micrographs are ignored; a listed micrograph absent from both tables
            counts as "no picks, no truth".

    Returns:
        ``(per_micrograph, pooled)``: a DataFrame with ``micrograph`` and
        :data:`METRIC_COLUMNS`, one row per micrograph in order; and a dict with
        ``n_micrographs``, the summed ``n_picks, n_truth, tp, fp, fn``, their ``precision,
        recall, f1``, the pooled ``ap``, ``best_threshold`` and ``best_f1``. AP and the best
        threshold are NaN when some pick has no score.
    """
    problem = _Problem(picks_df, truth_df, radius_px, micrographs)
    n_mics = len(problem.names)
    scores = problem.picks["score"].to_numpy(dtype=np.float64)
    in_set = problem.pick_code >= 0
    selected = in_set.copy()
    if threshold is not None:
        selected &= scores >= float(threshold)
    pairs, _ = problem.match(selected)
    truth_in = problem.truth_code >= 0
    n_picks = np.bincount(problem.pick_code[selected], minlength=n_mics)
    n_truth = np.bincount(problem.truth_code[truth_in], minlength=n_mics)
    tp = np.bincount(problem.pick_code[pairs[:, 0]], minlength=n_mics)
    precision, recall, f1 = _rates(tp, n_picks, n_truth)

    all_picks = np.bincount(problem.pick_code[in_set], minlength=n_mics)
    scored = not np.isnan(scores[in_set]).any()
    pooled_ap, best = math.nan, (math.nan, math.nan)
    ap = np.full(n_mics, np.nan)
    if scored:
        code = problem.pick_code[in_set]
        s = scores[in_set]
        rank = np.empty(problem.n_picks, dtype=np.int64)
        rank[np.lexsort((np.arange(problem.n_picks), -np.nan_to_num(scores, nan=-np.inf)))] = \
            np.arange(problem.n_picks)
        accepted = problem.accepted(rank)[in_set]
        ap = _average_precision(_curve_points(s, accepted, code, n_truth), n_mics,
                                all_picks, n_truth)
        pooled_points = _curve_points(s, accepted, np.zeros(len(s), dtype=np.int64),
                                      np.array([int(n_truth.sum())]))
        pooled_ap = float(_average_precision(pooled_points, 1, np.array([len(s)]),
                                             np.array([int(n_truth.sum())]))[0])
        nothing = 1.0 if n_truth.sum() == 0 else 0.0
        if len(pooled_points):
            i = int(np.argmax(pooled_points["f1"].to_numpy()))
            best = (float(pooled_points["threshold"].iloc[i]),
                    float(pooled_points["f1"].iloc[i]))
        if not len(pooled_points) or nothing > best[1]:
            best = (math.inf, nothing)

    table = pd.DataFrame({"micrograph": pd.Series(problem.names, dtype=object),
                          "n_picks": n_picks, "n_truth": n_truth, "tp": tp,
                          "fp": n_picks - tp, "fn": n_truth - tp, "precision": precision,
                          "recall": recall, "f1": f1, "ap": ap})
    sums = {name: int(table[name].sum()) for name in ("n_picks", "n_truth", "tp", "fp", "fn")}
    p, r, f = _rates(sums["tp"], sums["n_picks"], sums["n_truth"])
    pooled: dict[str, Any] = {"n_micrographs": n_mics, **sums, "precision": float(p),
                              "recall": float(r), "f1": float(f), "ap": pooled_ap,
                              "best_threshold": best[0], "best_f1": best[1]}
    return table, pooled


def pixel_metrics(pred_mask: Any, true_mask: Any, ignore_index: int | None = 255,
                  ) -> dict[str, float]:
    """Pixel-wise ``{iou, f1, precision, recall, accuracy}`` of a predicted mask (torchmetrics).

    ``pred_mask``: labels ``{0, 1}`` (integer/bool) or probabilities in ``[0, 1]`` (float,
    thresholded at 0.5); ``true_mask``: ``{0, 1}`` with ``ignore_index`` (default 255) for
    pixels excluded from every metric. Same empty-case conventions as for picks: precision 1
    with no predicted particle pixel, recall 1 with no true one, IoU and F1 1 when both are
    empty. All NaN when every pixel is ignored.
    """
    import torch
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_f1_score,
        binary_jaccard_index,
        binary_precision,
        binary_recall,
    )

    pred = torch.as_tensor(np.asarray(pred_mask) if not isinstance(pred_mask, torch.Tensor)
                           else pred_mask).detach().cpu()
    target = torch.as_tensor(np.asarray(true_mask) if not isinstance(true_mask, torch.Tensor)
                             else true_mask).detach().cpu()
    if pred.shape != target.shape:
        raise param_error("pred_mask.shape", tuple(pred.shape),
                          f"must equal true_mask.shape {tuple(target.shape)}")
    if pred.is_floating_point():
        if pred.numel() and (not torch.isfinite(pred).all() or pred.min() < 0 or pred.max() > 1):
            raise param_error("pred_mask", "values", "probabilities must be finite, in [0, 1]")
    else:
        pred = pred.long()
        if pred.numel() and not torch.isin(pred, torch.tensor([0, 1])).all():
            raise param_error("pred_mask", "values", "labels must be 0 or 1")
    target = target.long()
    allowed = torch.tensor([0, 1] + ([int(ignore_index)] if ignore_index is not None else []))
    if target.numel() and not torch.isin(target, allowed).all():
        raise param_error("true_mask", "values",
                          f"must be 0, 1{'' if ignore_index is None else f' or {ignore_index}'}")
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target).bool()
    if not bool(valid.any()):
        return dict.fromkeys(("iou", "f1", "precision", "recall", "accuracy"), math.nan)
    kwargs = {"ignore_index": ignore_index, "validate_args": False}
    return {
        "iou": float(binary_jaccard_index(pred, target, zero_division=1, **kwargs)),
        "f1": float(binary_f1_score(pred, target, zero_division=1, **kwargs)),
        "precision": float(binary_precision(pred, target, zero_division=1, **kwargs)),
        "recall": float(binary_recall(pred, target, zero_division=1, **kwargs)),
        "accuracy": float(binary_accuracy(pred, target, **kwargs)),
    }


# --------------------------------------------------------------------------- files


def _expand(arguments: Sequence[str], option: str) -> list[Path]:
    """Paths from CLI arguments: files, folders (their particle files) and glob patterns."""
    paths: list[Path] = []
    for argument in arguments:
        if glob.has_magic(argument):
            matches = sorted(glob.glob(argument))
            if not matches:
                raise file_error(argument, f"{option}: no file matches this pattern")
            paths += [Path(match) for match in matches if Path(match).is_file()]
        elif Path(argument).is_dir():
            found = sorted(p for p in Path(argument).iterdir()
                           if p.is_file() and p.suffix.lower() in PARTICLE_EXTENSIONS)
            if not found:
                raise file_error(argument, f"{option}: folder holds no particle file")
            paths += found
        else:
            require_file(Path(argument))
            paths.append(Path(argument))
    return list(dict.fromkeys(paths))


SOURCE_PREFERENCE: tuple[str, ...] = ("star", "topaz", "cryosparc", "cryoppp", "box")
"""The particle file read for a micrograph that several files give (a ``predict.py`` folder
holds ``NAME.star``, ``NAME.box``, ``NAME.csv``, ``particles.star`` and
``coordinate_files.star``): the first format here (RELION STAR and Topaz tables keep sub-pixel
centres and scores, cryoSPARC CSV fractions of the micrograph; CryoPPP CSV has whole pixels,
EMAN BOX rounded box corners); among files of that format, the micrograph's own file (named
after it) before one of several micrographs, then the first given. The others are not read for
that micrograph, so a pick is never counted twice."""


def _read_all(paths: Sequence[Path], diameter: float | None
              ) -> tuple[pd.DataFrame, list[str], dict[str, Path]]:
    """The particles of every micrograph the files name (names normalised), each micrograph's
    from ONE file (:data:`SOURCE_PREFERENCE`); every micrograph named (a per-micrograph file
    with no particle still names its micrograph); and micrograph → the file read for it."""
    read = []  # (path, format, table, micrographs it names)
    for path in paths:
        fmt = particle_format(path)
        table = read_particles(path, diameter)
        listed = [micrograph_key(n) for n in table.attrs.get("micrographs", [])]
        table["micrograph"] = [micrograph_key(n) for n in table["micrograph"]]
        names = listed + list(dict.fromkeys(table["micrograph"]))
        if (table.empty and not listed) or fmt in ("box", "cryoppp"):
            names.append(micrograph_key(path.stem))
        read.append((path, fmt, table, list(dict.fromkeys(names))))

    def rank(number: int, name: str) -> tuple[int, bool, int]:
        path, fmt = read[number][0], read[number][1]
        own = name in (micrograph_key(path.stem), micrograph_key(path.name))
        return SOURCE_PREFERENCE.index(fmt), not own, number

    chosen: dict[str, int] = {}
    for number, (_, _, _, names) in enumerate(read):
        for name in names:
            if name not in chosen or rank(number, name) < rank(chosen[name], name):
                chosen[name] = number
    tables = [table.loc[table["micrograph"].map(chosen).to_numpy() == number,
                        ["micrograph", "x", "y", "diameter", "score"]]
              for number, (_, _, table, _) in enumerate(read)]
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return frame, list(chosen), {name: read[number][0] for name, number in chosen.items()}


def _note_sources(option: str, paths: Sequence[Path], sources: dict[str, Path]) -> None:
    """One stderr line when some files were not read: which, and the rule."""
    unused = [p for p in paths if p not in set(sources.values())]
    if unused:
        shown = ", ".join(p.name for p in unused[:4]) + (", ..." if len(unused) > 4 else "")
        order = " > ".join(SOURCE_PREFERENCE)
        print(f"note: {option}: one file per micrograph ({order}; the micrograph's own file "
              f"first); not used: {len(unused)} file(s) ({shown})", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cryoparticle.picking.evaluate",
        description="Compare particle picks with ground truth: per-micrograph and pooled "
                    "precision, recall, F1 and average precision. Files may be RELION STAR "
                    "(coordinate files, particles.star, coordinate_files.star), EMAN BOX, "
                    "CryoPPP CSV, Topaz tables or cryoSPARC particle CSV; picks and truth are "
                    "matched by micrograph name (file stem / name without extension). Only "
                    "micrographs with a truth file are evaluated. A micrograph given by several "
                    "files (a predict.py folder) is read from one: STAR > Topaz > cryoSPARC > "
                    "CryoPPP CSV > BOX, its own file before a multi-micrograph one.")
    parser.add_argument("--picks", nargs="+", required=True, metavar="PATH_OR_GLOB",
                        help="pick files, folders or glob patterns (quote them)")
    parser.add_argument("--truth", nargs="+", required=True, metavar="PATH_OR_GLOB",
                        help="ground-truth files, folders or glob patterns")
    radius = parser.add_mutually_exclusive_group()
    radius.add_argument("--radius-px", type=float, default=None,
                        help="match radius in pixels (inclusive)")
    radius.add_argument("--radius-fraction", type=float, default=0.5,
                        help="match radius as a fraction of the particle diameter "
                             "(default 0.5)")
    parser.add_argument("--diameter-px", type=float, default=None,
                        help="particle diameter in pixels (default: the median diameter of "
                             "the truth, e.g. CryoPPP's Diameter column)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="keep picks with score >= threshold (default: all picks)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="write the metrics as JSON to this file")
    return parser


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``python -m cryoparticle.picking.evaluate``; returns the JSON record."""
    args = _parser().parse_args(argv)
    if args.diameter_px is not None and not (math.isfinite(args.diameter_px)
                                             and args.diameter_px > 0):
        raise param_error("--diameter-px", args.diameter_px, "must be a positive number")
    pick_files = _expand(args.picks, "--picks")
    truth_files = _expand(args.truth, "--truth")
    picks, _, pick_sources = _read_all(pick_files, args.diameter_px)
    truth, names, truth_sources = _read_all(truth_files, args.diameter_px)
    _note_sources("--picks", pick_files, pick_sources)
    _note_sources("--truth", truth_files, truth_sources)
    if args.radius_px is not None:
        radius = _check_radius(args.radius_px)
    else:
        if not (math.isfinite(args.radius_fraction) and args.radius_fraction >= 0):
            raise param_error("--radius-fraction", args.radius_fraction,
                              "must be a non-negative number")
        diameter = args.diameter_px
        if diameter is None and not truth.empty and truth["diameter"].notna().any():
            diameter = float(truth["diameter"].median())
        if diameter is None and not picks.empty and picks["diameter"].notna().any():
            diameter = float(picks["diameter"].median())
        if diameter is None:
            raise param_error("--radius-px", None, "give --radius-px, or --diameter-px for "
                              "--radius-fraction (the files carry no diameter)")
        radius = args.radius_fraction * diameter
    known = picks["micrograph"].isin(names)
    if (~known).any():
        print(f"note: ignored {int((~known).sum())} pick(s) on "
              f"{picks.loc[~known, 'micrograph'].nunique()} micrograph(s) without ground truth",
              file=sys.stderr)
    table, pooled = evaluate_micrographs(picks[known], truth, radius, args.threshold,
                                         micrographs=names)
    table.insert(1, "picks_file", [pick_sources[m].name if m in pick_sources else "–"
                                   for m in table["micrograph"]])
    with pd.option_context("display.max_rows", None, "display.width", 120,
                           "display.float_format", "{:.3f}".format):
        shown = pd.concat([table, pd.DataFrame([{"micrograph": "(pooled)", "picks_file": "",
                                                  **{k: pooled[k] for k in METRIC_COLUMNS}}])],
                          ignore_index=True)
        print(shown.to_string(index=False))
    print(f"radius {radius:g} px, threshold {args.threshold}, best F1 {pooled['best_f1']:.3f} "
          f"at score >= {pooled['best_threshold']:.4g}")
    table["picks_file"] = [str(pick_sources[m]) if m in pick_sources else None
                           for m in table["micrograph"]]
    table.insert(2, "truth_file", [str(truth_sources[m]) for m in table["micrograph"]])
    record = {"picks": [str(p) for p in pick_files], "truth": [str(p) for p in truth_files],
              "source_preference": list(SOURCE_PREFERENCE), "radius_px": radius,
              "threshold": args.threshold, "pooled": pooled,
              "micrographs": table.to_dict(orient="records")}
    record = jsonable(record)
    if args.json is not None:
        write_json(args.json, record)
    return record


__all__ = [
    "CURVE_COLUMNS", "METRIC_COLUMNS", "MICROGRAPH_EXTENSIONS", "PARTICLE_EXTENSIONS",
    "SOURCE_PREFERENCE",
    "average_precision", "best_f1_threshold",
    "evaluate_micrographs", "match_picks", "micrograph_key", "particle_format", "pixel_metrics",
    "precision_recall_curve", "precision_recall_f1", "read_particles",
]


if __name__ == "__main__":
    main()
