"""Exact TreeSHAP of a fitted booster from per-leaf tables, for the few runners of a race card.

The TreeSHAP of XGBoost ``pred_contribs``, LightGBM ``pred_contrib`` and CatBoost ``ShapValues`` (the
path-dependent algorithm of Lundberg et al., 2018) is a sum over the leaves. A leaf of value v whose path tests
the distinct features D (d of them) adds to each feature i of D

    phi_i = v * (o_i - z_i) * sum over S in D minus i of |S|! (d - |S| - 1)! / d! * prod_{j in S} o_j
                                                         * prod_{j not in S, j != i} z_j

where z_j is the share of the training cover that follows the path at the tests of j (the product of child
cover over parent cover) and o_j is 1 when the runner passes every test of j on the path, else 0. A leaf's
contributions thus depend on the runner only through the bits o: at most 2^depth patterns, tabulated once per
model. Explaining a card is then one look-up per leaf and runner, instead of the libraries' recursion per call
(10-25 ms per library for the 14 runners of a card). The tests check the tables against each library's own.

Tests per library: LightGBM ``x <= threshold`` (its missing-value rules), categorical in-set goes left;
XGBoost ``float32(x) < threshold`` (missing: the default side), categorical in-set goes right; CatBoost's
oblivious trees are read from the leaf each runner reaches (``calc_leaf_indexes``: one bit per level, so
every level's test is known without recomputing its CTRs); a CTR of one categorical feature combined with
binarized numeric ones counts for that categorical feature, as in CatBoost's ShapValues (a CTR of two categorical
features is left to the library).

A card's look-ups run in one compiled pass (numba, ``_explain``): per path, per runner, the outcome bits of the
path's tests, then the path's table row added to the runner's features, with no temporary arrays; the numpy
version (``LeafTables.contributions(..., kernel=False)``) is kept as the reference the tests compare it to.
The kernel is compiled (or loaded from numba's cache) when the tables are built, so at the model's warm-up,
never on a request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from math import factorial
from typing import Any

import numpy as np
from numba import njit

logger = logging.getLogger(__name__)

_K_ZERO = 1e-35  # LightGBM's kZeroThreshold
MAX_DEPTH = 8  # a path's table has 2^depth rows


@dataclass(frozen=True)
class _Path:
    value: float
    tests: list[tuple[int, bool, int, float]]  # (node, goes left, feature, child cover / parent cover)


def _jit(function: Any) -> Any:
    """``function`` compiled with numba, cached on disk when a cache directory is writable: beside the source,
    else numba's user-wide cache (``NUMBA_CACHE_DIR`` overrides both); compiled in each process otherwise."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError as exc:  # numba found no writable cache location
        logger.info("numba cache unavailable for %s (%s): compiled in each process", function.__name__, exc)
        return njit(nogil=True)(function)


def _explain(
    goes_left: np.ndarray,
    nodes: np.ndarray,
    left: np.ndarray,
    features: np.ndarray,
    table: np.ndarray,
    out: np.ndarray,
) -> None:
    """Adds to ``out`` (features, runners) the contributions of every path: for path p and runner r, the outcome
    o of p's tests (bit t set when test t is passed; padding tests read node ``n_nodes`` and always pass) picks
    row o of p's table, added to the runner's features of p. Path by path, all runners together: the table is
    read once, in order."""
    runners, n_nodes = goes_left.shape
    n_paths, depth = nodes.shape
    width = features.shape[1]
    tests = np.empty((n_nodes + 1, runners), dtype=np.bool_)  # each test's runners in one cache line
    for r in range(runners):
        for k in range(n_nodes):
            tests[k, r] = goes_left[r, k]
    for r in range(runners):
        tests[n_nodes, r] = True
    outcome = np.empty(runners, dtype=np.int64)
    for p in range(n_paths):
        outcome[:] = 0
        for t in range(depth):  # a test's row of runners at once (vectorised, without branches)
            node, goes = nodes[p, t], left[p, t]
            for r in range(runners):
                outcome[r] |= np.int64(tests[node, r] == goes) << t
        for w in range(width):
            row = out[features[p, w]]
            for r in range(runners):
                row[r] += table[p, outcome[r], w]


_explain = _jit(_explain)


def _lightgbm_goes_left(
    x: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    nan_missing: np.ndarray,
    zero_missing: np.ndarray,
    categorical: np.ndarray,
    members: np.ndarray,
) -> np.ndarray:
    """``LightGBMTables.goes_left`` in one compiled pass (the numpy version is the reference)."""
    runners, n_nodes = x.shape[0], feature.shape[0]
    out_of_range = members.shape[1] - 1
    out = np.empty((runners, n_nodes), dtype=np.bool_)
    for r in range(runners):
        for k in range(n_nodes):
            v = x[r, feature[k]]
            if categorical[k]:
                if np.isnan(v) or v < 0 or v >= out_of_range:
                    out[r, k] = members[k, out_of_range]
                else:
                    out[r, k] = members[k, int(v)]
            elif np.isnan(v):
                # NaN is missing when the node says so, else it reads as 0.0 (missing for "Zero" nodes)
                out[r, k] = default_left[k] if nan_missing[k] or zero_missing[k] else threshold[k] >= 0.0
            elif zero_missing[k] and -_K_ZERO <= v <= _K_ZERO:
                out[r, k] = default_left[k]
            else:
                out[r, k] = v <= threshold[k]
    return out


def _xgboost_goes_left(
    x: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    categorical: np.ndarray,
    members: np.ndarray,
) -> np.ndarray:
    """``XGBoostTables.goes_left`` in one compiled pass (the numpy version is the reference)."""
    runners, n_nodes = x.shape[0], feature.shape[0]
    out_of_range = members.shape[1] - 1
    out = np.empty((runners, n_nodes), dtype=np.bool_)
    for r in range(runners):
        for k in range(n_nodes):
            v = np.float32(x[r, feature[k]])
            if np.isnan(v):
                out[r, k] = default_left[k]
            elif categorical[k]:
                # codes truncate toward zero, as numpy's astype: (-1, 0) is category 0
                if v <= -1 or v >= out_of_range:
                    out[r, k] = not members[k, out_of_range]
                else:
                    out[r, k] = not members[k, int(v)]
            else:
                out[r, k] = v < threshold[k]
    return out


_lightgbm_goes_left = _jit(_lightgbm_goes_left)
_xgboost_goes_left = _jit(_xgboost_goes_left)


class LeafTables:
    """Every root-to-leaf path of an ensemble with its contributions for each outcome of the path's tests."""

    def __init__(self, paths: list[_Path], n_nodes: int, n_features: int) -> None:
        self.n_features = n_features
        self.n_nodes = n_nodes
        paths = [p for p in paths if p.value != 0.0 and p.tests]
        depth = max((len(p.tests) for p in paths), default=1)
        if depth > MAX_DEPTH:
            raise ValueError(f"Trees deeper than {MAX_DEPTH} levels are not tabulated (got {depth}).")
        width = max((len({f for _, _, f, _ in p.tests}) for p in paths), default=1)
        n = len(paths)
        # padding tests read node n_nodes, a column that always passes (see contributions)
        self.cond_node = np.full((n, depth), n_nodes, dtype=np.int64)
        self.cond_left = np.ones((n, depth), dtype=bool)
        self.features = np.zeros((n, width), dtype=np.int64)
        # table[path, outcome of its tests (bit t set: test t passed), slot] -> contribution to features[path, slot]
        self.table = np.zeros((n, 2**depth, width))
        by_width: dict[int, list[tuple[int, np.ndarray, float, np.ndarray]]] = {}
        outcomes = np.arange(2**depth)
        for row, path in enumerate(paths):
            slots: dict[int, int] = {}
            zero: list[float] = []
            slot_of_test = []
            for col, (node, left, feature, share) in enumerate(path.tests):
                if feature not in slots:
                    slots[feature] = len(slots)
                    zero.append(1.0)
                zero[slots[feature]] *= share
                slot_of_test.append(slots[feature])
                self.cond_node[row, col] = node
                self.cond_left[row, col] = left
            self.features[row, : len(slots)] = list(slots)
            # a feature is passed when every test of it on the path is passed (padding tests always pass)
            pattern = np.zeros(2**depth, dtype=np.int64)
            for k in range(len(slots)):
                tests = [t for t, s in enumerate(slot_of_test) if s == k]
                passed = np.all([(outcomes >> t) & 1 for t in tests], axis=0)
                pattern |= passed.astype(np.int64) << k
            by_width.setdefault(len(slots), []).append((row, np.asarray(zero), path.value, pattern))
        for d, items in by_width.items():
            rows = np.array([r for r, _, _, _ in items])
            table = _leaf_table(np.stack([z for _, z, _, _ in items]), np.array([v for _, _, v, _ in items]))
            patterns = np.stack([p for _, _, _, p in items])  # (paths, outcomes)
            self.table[rows, :, :d] = np.take_along_axis(table, patterns[:, :, None], axis=1)
        self._flat = self.table.reshape(-1, width)
        self._base = (np.arange(n) * 2**depth)[None, :]
        self._nodes = np.ascontiguousarray(self.cond_node.T)  # (depth, paths)
        self._left = np.ascontiguousarray(self.cond_left.T)
        self._index: dict[int, np.ndarray] = {}
        # compiles the kernel (or loads it from numba's cache) now, at the model's warm-up, not on a request
        self.contributions(np.zeros((1, n_nodes), dtype=bool))

    def contributions(self, goes_left: np.ndarray, kernel: bool = True) -> np.ndarray:
        """(runners, features) contributions, from ``goes_left`` (runners, nodes): each test's outcome.

        Path by path, all runners together: the look-ups sweep the table once in order (runner by runner, each
        runner would sweep the whole table again, several MB, and wait on memory for every leaf). ``kernel``:
        the compiled pass (``_explain``); False, the numpy reference (the same sums, with temporaries).
        """
        runners = len(goes_left)
        if goes_left.shape != (runners, self.n_nodes):
            raise ValueError(f"goes_left must have shape (runners, {self.n_nodes}). Got {goes_left.shape} instead.")
        if kernel:
            out = np.zeros((self.n_features, runners))  # a feature's runners side by side
            goes_left = np.ascontiguousarray(goes_left, dtype=bool)
            _explain(goes_left, self.cond_node, self.cond_left, self.features, self.table, out)
            return np.ascontiguousarray(out.T)
        # (nodes + 1, runners), contiguous: each test's row of runners is one read
        tests = np.ascontiguousarray(np.concatenate([goes_left, np.ones((runners, 1), dtype=bool)], axis=1).T)
        outcome = np.repeat(self._base.T, runners, axis=1)  # (paths, runners): row of the path's table
        for t in range(self._nodes.shape[0]):
            outcome += (tests[self._nodes[t]] == self._left[t][:, None]).astype(np.int64) << t
        values = self._flat[outcome]  # (paths, runners, width)
        index = self._index.get(runners)
        if index is None:
            index = (np.arange(runners)[None, :, None] * self.n_features + self.features[:, None, :]).ravel()
            self._index[runners] = index
        out = np.bincount(index, weights=values.ravel(), minlength=runners * self.n_features)
        return out.reshape(runners, self.n_features)


def _leaf_table(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """phi (paths, 2^d, d) for paths of d distinct features with zero fractions z (paths, d), values v."""
    n, d = z.shape
    out = np.zeros((n, 2**d, d))
    weight = [factorial(s) * factorial(d - s - 1) / factorial(d) for s in range(d)]
    for pattern in range(2**d):
        o = np.array([(pattern >> j) & 1 for j in range(d)], dtype=float)
        for i in range(d):
            others = [j for j in range(d) if j != i]
            total = np.zeros(n)
            for mask in range(2 ** len(others)):
                inside = [others[k] for k in range(len(others)) if (mask >> k) & 1]
                term = np.full(n, weight[len(inside)])
                for j in others:
                    term = term * (o[j] if j in inside else z[:, j])
                total += term
            out[:, pattern, i] = v * (o[i] - z[:, i]) * total
    return out


# -- LightGBM ----------------------------------------------------------------------------------------------
class LightGBMTables:
    """TreeSHAP tables of the first ``n_trees`` trees of a LightGBM booster (single output)."""

    def __init__(self, model: Any, n_trees: int, n_features: int) -> None:
        dump = model.dump_model(num_iteration=n_trees)
        if int(dump.get("num_tree_per_iteration", 1)) != 1:
            raise ValueError("only boosters of one tree per round are tabulated")
        trees = dump["tree_info"][:n_trees]
        feature, threshold, default_left, missing, categorical, cat_sets = [], [], [], [], [], []
        paths: list[_Path] = []

        def walk(node: dict[str, Any], tests: list[tuple[int, bool, int, float]]) -> None:
            if "leaf_value" in node:
                paths.append(_Path(float(node["leaf_value"]), tests))
                return
            index = len(feature)
            feature.append(int(node["split_feature"]))
            is_cat = node["decision_type"] == "=="
            categorical.append(is_cat)
            cat_sets.append({int(c) for c in str(node["threshold"]).split("||")} if is_cat else set())
            threshold.append(0.0 if is_cat else float(node["threshold"]))
            default_left.append(bool(node["default_left"]))
            missing.append(str(node["missing_type"]))
            parent = float(node["internal_count"])
            for child, left in ((node["left_child"], True), (node["right_child"], False)):
                count = float(child.get("internal_count", child.get("leaf_count", 0)))
                walk(child, [*tests, (index, left, feature[index], count / parent if parent else 0.0)])

        for tree in trees:
            walk(tree["tree_structure"], [])
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold)
        self.default_left = np.asarray(default_left)
        self.nan_missing = np.asarray([m == "NaN" for m in missing])
        self.zero_missing = np.asarray([m == "Zero" for m in missing])
        self.categorical = np.asarray(categorical)
        self._cat_nodes = np.flatnonzero(self.categorical)
        width = max((max(s) for s in cat_sets if s), default=0) + 1
        self.members = np.zeros((len(feature), width + 1), dtype=bool)  # last column: codes out of range
        for k, s in enumerate(cat_sets):
            self.members[k, sorted(s)] = True
        self.tables = LeafTables(paths, len(feature), n_features)
        self.goes_left(np.zeros((1, n_features)))  # compiles the kernel now (the model's warm-up)

    def goes_left(self, x: np.ndarray, kernel: bool = True) -> np.ndarray:
        if kernel:
            return _lightgbm_goes_left(
                np.ascontiguousarray(x, dtype=np.float64),
                self.feature,
                self.threshold,
                self.default_left,
                self.nan_missing,
                self.zero_missing,
                self.categorical,
                self.members,
            )
        v = x[:, self.feature]  # (runners, nodes)
        isnan = np.isnan(v)
        filled = np.where(isnan & ~self.nan_missing, 0.0, v)
        is_zero = (filled >= -_K_ZERO) & (filled <= _K_ZERO)
        to_default = (self.zero_missing & (is_zero | np.isnan(filled))) | (self.nan_missing & isnan)
        with np.errstate(invalid="ignore"):
            out = np.where(to_default, self.default_left, filled <= self.threshold)
        cats = self._cat_nodes
        if len(cats):
            c = v[:, cats]
            with np.errstate(invalid="ignore"):
                code = np.where(np.isnan(c) | (c < 0), -1, np.nan_to_num(c, nan=-1.0)).astype(np.int64)
            out_of_range = self.members.shape[1] - 1
            code = np.where((code < 0) | (code >= out_of_range), out_of_range, code)
            out[:, cats] = self.members[cats[None, :], code]
        return out

    def contributions(self, x: np.ndarray, kernel: bool = True) -> np.ndarray:
        return self.tables.contributions(self.goes_left(x, kernel), kernel)


# -- XGBoost -----------------------------------------------------------------------------------------------
class XGBoostTables:
    """TreeSHAP tables of the first ``n_trees`` trees of an XGBoost booster (one tree per round)."""

    def __init__(self, model: Any, n_trees: int, n_features: int) -> None:
        learner = json.loads(model.save_raw("json"))["learner"]
        booster = learner["gradient_booster"]
        if booster.get("name") != "gbtree" or int(booster["model"]["gbtree_model_param"]["num_parallel_tree"]) != 1:
            raise ValueError("only gbtree boosters of one tree per round are tabulated")
        trees = booster["model"]["trees"][:n_trees]
        feature, threshold, default_left, categorical, cat_sets = [], [], [], [], []
        paths: list[_Path] = []
        for tree in trees:
            left_of, right_of = tree["left_children"], tree["right_children"]
            cover = tree["sum_hessian"]
            cats = dict(
                zip(
                    tree["categories_nodes"],
                    (
                        set(tree["categories"][s : s + n])
                        for s, n in zip(tree["categories_segments"], tree["categories_sizes"], strict=True)
                    ),
                    strict=True,
                )
            )
            index: dict[int, int] = {}
            for node in range(len(left_of)):
                if left_of[node] != -1:
                    index[node] = len(feature)
                    feature.append(int(tree["split_indices"][node]))
                    threshold.append(tree["split_conditions"][node])
                    default_left.append(bool(tree["default_left"][node]))
                    is_cat = int(tree["split_type"][node]) == 1
                    categorical.append(is_cat)
                    cat_sets.append(cats.get(node, set()) if is_cat else set())
            stack: list[tuple[int, list[tuple[int, bool, int, float]]]] = [(0, [])]
            while stack:
                node, tests = stack.pop()
                if left_of[node] == -1:
                    paths.append(_Path(float(np.float32(tree["split_conditions"][node])), tests))
                    continue
                k = index[node]
                for child, left in ((left_of[node], True), (right_of[node], False)):
                    share = cover[child] / cover[node] if cover[node] else 0.0
                    stack.append((child, [*tests, (k, left, feature[k], share)]))
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float32)
        self.default_left = np.asarray(default_left)
        self.categorical = np.asarray(categorical)
        self._cat_nodes = np.flatnonzero(self.categorical)
        width = max((max(s) for s in cat_sets if s), default=0) + 1
        self.members = np.zeros((len(feature), width + 1), dtype=bool)
        for k, s in enumerate(cat_sets):
            self.members[k, sorted(s)] = True
        self.tables = LeafTables(paths, len(feature), n_features)
        self.goes_left(np.zeros((1, n_features)))  # compiles the kernel now (the model's warm-up)

    def goes_left(self, x: np.ndarray, kernel: bool = True) -> np.ndarray:
        if kernel:
            return _xgboost_goes_left(
                np.ascontiguousarray(x, dtype=np.float64),
                self.feature,
                self.threshold,
                self.default_left,
                self.categorical,
                self.members,
            )
        v = x.astype(np.float32)[:, self.feature]
        with np.errstate(invalid="ignore"):
            out = v < self.threshold
        cats = self._cat_nodes
        if len(cats):
            c = v[:, cats]
            code = np.nan_to_num(c, nan=-1.0).astype(np.int64)
            out_of_range = self.members.shape[1] - 1
            code = np.where((code < 0) | (code >= out_of_range), out_of_range, code)
            out[:, cats] = ~self.members[cats[None, :], code]
        return np.where(np.isnan(v), self.default_left, out)

    def contributions(self, x: np.ndarray, kernel: bool = True) -> np.ndarray:
        return self.tables.contributions(self.goes_left(x, kernel), kernel)


# -- CatBoost ----------------------------------------------------------------------------------------------
class CatBoostTables:
    """TreeSHAP tables of a CatBoost model of oblivious trees, read from the leaf each runner reaches."""

    def __init__(self, model: Any, n_features: int) -> None:
        leaf_values = np.asarray(model.get_leaf_values(), dtype=float)
        leaf_weights = np.asarray(model.get_leaf_weights(), dtype=float)
        scale, _ = model.get_scale_and_bias()
        paths: list[_Path] = []
        self.levels: list[int] = []
        offset = 0
        n_nodes = 0
        for tree in range(model.tree_count_):
            features = [_catboost_feature(s) for s in model._get_tree_splits(tree, None)]
            depth = len(features)
            values = leaf_values[offset : offset + 2**depth] * float(scale)
            weights = leaf_weights[offset : offset + 2**depth]
            offset += 2**depth
            self.levels.append(depth)
            for leaf in range(2**depth):
                tests = []
                # level k's test is bit k of the leaf index; the root is the last level (CatBoost's order)
                for k in reversed(range(depth)):
                    bit = (leaf >> k) & 1
                    same_above = leaf >> (k + 1)
                    parent = weights[(np.arange(2**depth) >> (k + 1)) == same_above].sum()
                    child = weights[((np.arange(2**depth) >> k) == (leaf >> k))].sum()
                    tests.append((n_nodes + k, bool(bit), features[k], child / parent if parent else 0.0))
                paths.append(_Path(float(values[leaf]), tests))
            n_nodes += depth
        self.model = model
        self.tables = LeafTables(paths, n_nodes, n_features)
        self._shift = np.concatenate([np.arange(d) for d in self.levels]).astype(np.uint32)
        self._tree_of = np.repeat(np.arange(len(self.levels)), self.levels)

    def goes_left(self, pool: Any) -> np.ndarray:
        """'Left' stands for bit 1 of each level here (paths record the bit they take)."""
        leaves = self.model.calc_leaf_indexes(pool, thread_count=1)  # (runners, trees)
        return ((leaves[:, self._tree_of] >> self._shift) & 1).astype(bool)

    def contributions(self, pool: Any, kernel: bool = True) -> np.ndarray:
        return self.tables.contributions(self.goes_left(pool), kernel)


def _catboost_feature(split: str) -> int:
    """The feature a split of ``_get_tree_splits`` is attributed to: '32, bin=...', a one-feature CTR '{142} ...',
    or a CTR of one categorical feature combined with binarized numeric ones '{142, 31 border=95.5} ...': that
    categorical feature, as CatBoost's own ShapValues count it (checked against them in the tests). A CTR of two
    or more categorical features is not tabulated (its attribution was not matched): ValueError."""
    if not split.startswith("{"):
        head = split.split(",")[0].strip()
    else:
        items = [item.strip() for item in split[1 : split.index("}")].split(",")]
        categorical = [item for item in items if item.isdigit()]  # a binarized numeric feature reads 'k border=x'
        if len(categorical) != 1:
            raise ValueError(f"CatBoost split {split!r} tests a combination of categorical features: not tabulated.")
        head = categorical[0]
    if not head.isdigit():
        raise ValueError(f"CatBoost split {split!r}: no feature index found, not tabulated.")
    return int(head)
