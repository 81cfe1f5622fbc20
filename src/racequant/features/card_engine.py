"""Race-card features without SQL: the bulk build's own expressions, compiled once to numpy.

A race card is 14 rows; DuckDB spends ~0.1 ms of fixed cost on each of the ~600 expressions of the feature
SQL however few the rows (BENCHMARKS.md), so serving a card through SQL costs ~165 ms. This module keeps the
definitions single-sourced and leaves SQL anyway: every feature expression of the bulk build (the SQL strings
of speed.py, class_.py, sectionals.py, context.py, connections.py, pedigree.py, composites.py, market.py and
the race columns of ``_base.py``) is parsed once by DuckDB's own parser (``json_serialize_sql``) and its parse
tree compiled into Python closures over numpy arrays, with DuckDB's semantics for the types the features use:

* DECIMAL values are exact scaled integers (sums, differences and products exact, as in DuckDB); a DECIMAL
  cast to DOUBLE follows DuckDB's cast (exact integer part plus scaled fraction beyond 2**53); ``avg`` of a
  DECIMAL divides the exact sum by count * 10**scale in long double, as DuckDB's avg does;
* ``/`` is DOUBLE division (x / 0 = inf or nan), DOUBLE -> DECIMAL casts round half away from zero;
* DOUBLE sums (lists, windows) add left to right, as DuckDB's sum and avg do; ``list_stddev_samp`` is
  DuckDB's Welford update;
* NULL follows SQL: three-valued logic, aggregates skip NULLs, ``greatest`` ignores them, ``coalesce``...

A card's race follows every stored race it may see, so (as in the SQL card path, build.py) each window call
of the bulk build is, for the card's row, an aggregate over stored rows: the horse windows become masked
aggregates over the horse's stored runs (a (runner, run) matrix, the last run rightmost, the frame read from
the bulk build's WINDOW clause), the group totals become differences of prefix sums over the key's stored
(key, race) rows (the last N rows for rolling groups), the pars and priors prefix sums over the stored races.
The stored state is loaded into memory once per warehouse file and fingerprint (``engine_for``).

Anything the compiler does not know raises ``Unsupported`` (at compile time: every card, with a warning; on
a card's values: that card) and the card takes the SQL path, which stays the reference of the tests.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import json
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from pandas.api.internals import create_dataframe_from_blocks

logger = logging.getLogger(__name__)

_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max
_TWO53 = 2**53


class Unsupported(Exception):
    """An expression or a card the compiled engine does not handle (the SQL path does)."""


# -- values ------------------------------------------------------------------------------------------------
# kind: "int" (int64), "dec" (int64 scaled by 10**scale), "dbl" (float64), "bool", "str" (object), "date"
# (int64 days), "null" (untyped NULL), "list" (elem: a Col of shape (rows, length), keep: kept elements).
@dataclass(slots=True)
class Col:
    kind: str
    v: np.ndarray
    null: np.ndarray
    scale: int = 0
    width: int = 18
    elem: Col | None = None
    keep: np.ndarray | None = None
    # its casts, made once: a column read by several expressions is converted once a card, a constant of the
    # program once a process (Cols are never changed in place once built)
    casts: dict[tuple[str, int, int], Col] | None = None


def _dec_to_double(v: np.ndarray, scale: int) -> np.ndarray:
    """DuckDB's DECIMAL -> DOUBLE: exact int / 10**scale, or integer part + fraction beyond 2**53."""
    if scale == 0:
        return v.astype(np.float64)
    out = v / (10.0**scale)  # int64 -> float64, then the division (as v.astype(np.float64) / 10.0**scale)
    if not v.size or (v.max() <= _TWO53 and v.min() >= -_TWO53):  # no |v| beyond 2**53
        return out
    big = np.abs(v) > _TWO53
    if not big.any():
        return out
    p = 10**scale
    if scale <= 18:  # the loop below, vectorised: q truncated toward zero, then float(q) + float(x - q*p) / 10**s
        x = v[big]
        q = np.abs(x) // p * np.where(x >= 0, 1, -1)
        out[big] = q.astype(np.float64) + (x - q * p).astype(np.float64) / 10.0**scale
    else:
        for i in np.flatnonzero(big.ravel()):
            x = int(v.ravel()[i])
            q = abs(x) // p * (1 if x >= 0 else -1)
            out.ravel()[i] = float(q) + float(x - q * p) / 10.0**scale
    return out


def _double_to_dec(x: np.ndarray, scale: int) -> np.ndarray:
    """DuckDB's DOUBLE -> DECIMAL: x * 10**scale rounded half away from zero."""
    v = x * (10.0**scale)
    r = np.trunc(v)
    r = r + np.where(np.abs(v - r) >= 0.5, np.sign(v), 0.0)
    ok = np.isfinite(r) & (np.abs(r) < 9.2e18)
    return np.where(ok, r, 0.0).astype(np.int64)


def to_double(c: Col) -> Col:
    if c.kind == "dbl":
        return c
    casts = c.casts
    if casts is None:
        casts = c.casts = {}
    else:
        out = casts.get(_DBL)
        if out is not None:
            return out
    if c.kind == "dec":
        out = Col("dbl", _dec_to_double(c.v, c.scale), c.null)
    elif c.kind in ("int", "bool", "null"):
        out = Col("dbl", c.v.astype(np.float64), c.null)
    else:
        raise Unsupported(f"no DOUBLE cast of {c.kind}")
    casts[_DBL] = out
    return out


_DBL = ("dbl", 0, 18)


def to_dec(c: Col, scale: int, width: int = 18) -> Col:
    key = ("dec", scale, width)
    casts = c.casts
    if casts is None:
        casts = c.casts = {}
    else:
        out = casts.get(key)
        if out is not None:
            return out
    if c.kind == "dec":
        if scale == c.scale:
            out = Col("dec", c.v, c.null, scale, width)
        elif scale > c.scale:
            out = Col("dec", _mul_i64(c.v, np.int64(10 ** (scale - c.scale))), c.null, scale, width)
        else:
            raise Unsupported("DECIMAL scale-down")
    elif c.kind in ("int", "bool", "null"):
        out = Col("dec", _mul_i64(c.v.astype(np.int64), np.int64(10**scale)), c.null, scale, width)
    elif c.kind == "dbl":
        out = Col("dec", _double_to_dec(c.v, scale), c.null | ~np.isfinite(c.v), scale, width)
    else:
        raise Unsupported(f"no DECIMAL cast of {c.kind}")
    casts[key] = out
    return out


def _mul_i64(a: np.ndarray, b: np.ndarray | np.int64) -> np.ndarray:
    """Exact int64 product (the engine gives up rather than wrap around)."""
    out = np.multiply(a, b)
    if np.ndim(b) == 0 and a.dtype == np.int64:
        # a scalar factor: the largest |a| decides, as below (int -> float rounding and * |b| are monotonic)
        if a.size and float(max(int(a.max()), -int(a.min()))) * abs(float(b)) >= 4e18:
            raise Unsupported("DECIMAL product beyond int64")
        return out
    fa = np.abs(np.asarray(a, dtype=np.float64)) * np.abs(np.asarray(b, dtype=np.float64))
    if fa.size and fa.max() >= 4e18:
        raise Unsupported("DECIMAL product beyond int64")
    return out


def _numeric_common(a: Col, b: Col) -> str:
    if a.kind == "dbl" or b.kind == "dbl":  # as below: DOUBLE first, then DECIMAL
        return "dbl"
    if a.kind == "dec" or b.kind == "dec":
        return "dec"
    if a.kind == b.kind == "int":
        return "int"
    kinds = {a.kind, b.kind} - {"null"}
    if not kinds:
        return "null"
    if "dbl" in kinds:
        return "dbl"
    if "dec" in kinds:
        return "dec"
    if kinds <= {"int", "bool"}:
        return "int"
    if len(kinds) == 1:
        return kinds.pop()
    raise Unsupported(f"no common type of {sorted(kinds)}")


def _as_kind(c: Col, kind: str, scale: int = 0, width: int = 18) -> Col:
    if c.kind == kind and (kind != "dec" or c.scale == scale):
        return c
    if kind == "dbl":
        return to_double(c)
    if kind == "dec":
        return to_dec(c, scale, width)
    if c.kind == kind:
        return c
    key = (kind, 0, 18)
    casts = c.casts
    if casts is None:
        casts = c.casts = {}
    else:
        out = casts.get(key)
        if out is not None:
            return out
    if kind == "int" and c.kind in ("int", "bool", "null"):
        out = Col("int", c.v.astype(np.int64), c.null)
    elif c.kind == "null":
        out = Col(kind, np.zeros(c.v.shape, dtype=object if kind == "str" else np.int64), c.null)
    else:
        raise Unsupported(f"no cast of {c.kind} to {kind}")
    casts[key] = out
    return out


def _common_all(cols: Sequence[Col]) -> tuple[str, int, int]:
    """The type DuckDB gives a CASE / coalesce / greatest of these values: (kind, scale, width)."""
    first = None
    for c in cols:
        if c.kind == "null":
            continue
        if first is None:
            first = c.kind
        elif c.kind != first:
            break
    else:  # one kind besides NULL (or none), not DECIMAL: as below
        if first is None:
            return "null", 0, 18
        if first != "dec":
            return first, 0, 18
    kinds = {c.kind for c in cols} - {"null"}
    if not kinds:
        return "null", 0, 18
    if kinds <= {"int", "dec", "dbl", "bool"}:
        kind = next(k for k in ("dbl", "dec", "int", "bool") if k in kinds)
    elif len(kinds) == 1:
        kind = kinds.pop()
    else:
        raise Unsupported(f"no common type of {sorted(kinds)}")
    scale = max((c.scale for c in cols if c.kind == "dec"), default=0)
    width = max((c.width for c in cols if c.kind == "dec"), default=18)
    return kind, scale, width


def _const(kind: str, value: Any, shape: tuple[int, ...] = (1,), scale: int = 0, width: int = 18) -> Col:
    if value is None:
        return Col("null", np.zeros(shape, np.int64), np.ones(shape, bool))
    dtype = {"int": np.int64, "dec": np.int64, "dbl": np.float64, "bool": bool, "str": object}[kind]
    v = np.empty(shape, dtype=dtype)
    v[...] = value
    return Col(kind, v, np.zeros(shape, bool), scale, width)


# -- parsing -----------------------------------------------------------------------------------------------
def parse_select(sql: str) -> dict[str, Any]:
    """The parse tree of one SELECT statement, by DuckDB's own parser."""
    conn = duckdb.connect()
    try:
        out = json.loads(conn.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])  # type: ignore[index]
    finally:
        conn.close()
    if out.get("error"):
        raise Unsupported(f"DuckDB could not parse: {out.get('error_message')}")
    return out["statements"][0]["node"]


def parse_exprs(exprs: Sequence[str], window_clause: str = "") -> list[dict[str, Any]]:
    window = f" WINDOW {window_clause}" if window_clause else ""
    node = parse_select(f"SELECT {', '.join(exprs)} FROM t{window}")
    return list(node["select_list"])


# -- compiling ---------------------------------------------------------------------------------------------
Fn = Callable[["Ctx"], Col]


class Ctx:
    """What compiled expressions read: the named columns, lambda parameters, the horse-window provider."""

    def __init__(self, n: int, env: dict[str, Col], window: Callable[[str, str | None, dict[str, Any]], Col] | None):
        self.n = n
        self.env = env
        self.window = window
        self.lambdas: list[dict[str, Col]] = []
        self.local: dict[str, Col] = {}
        self.shared: dict[int, Col] = {}  # values of the statement's repeated subexpressions (``_Sharing``)

    def lookup(self, names: list[str]) -> Col:
        if len(names) == 1:
            name = names[0]
            for frame in reversed(self.lambdas):
                if name in frame:
                    return frame[name]
            col = self.env.get(name)
            if col is None:
                col = self.local.get(name)
            if col is None:
                raise Unsupported(f"unknown column {name!r}")
        elif len(names) == 2:
            key = f"{names[0]}.{names[1]}"
            col = self.env.get(key)
            if col is None:
                col = self.env.get(names[1])
            if col is None:
                raise Unsupported(f"unknown column {key!r}")
        else:
            raise Unsupported(f"column {'.'.join(names)}")
        if self.lambdas and col.v.ndim == 1 and col.kind != "list":
            return Col(col.kind, col.v[:, None], col.null[:, None], col.scale, col.width)
        return col


def _children(node: dict[str, Any]) -> list[dict[str, Any]]:
    if "children" in node:
        return list(node["children"])
    return [a["expression"] for a in node.get("arguments", [])]


@dataclass
class _Sharing:
    """The subexpressions a SELECT list repeats (outside lambdas), by their text: each is computed once a
    statement (``Ctx.shared``), as ``coalesce(g_sire.n_b, 0)`` or ``list_stddev_samp(l_speed3)`` are. An
    expression's value depends only on its text and the statement's columns (a name resolves to the input
    column, else to an earlier item, never to one defined later), so a repeat has the first one's value."""

    slots: dict[str, int]
    in_lambda: int = 0

    @classmethod
    def of(cls, select_list: Sequence[dict[str, Any]]) -> _Sharing:
        counts: dict[str, int] = {}

        def walk(node: Any) -> None:
            if isinstance(node, list):
                for x in node:
                    walk(x)
            elif isinstance(node, dict):
                if node.get("class") == "LAMBDA":
                    return
                if node.get("class") in _SHARED_CLASSES and "type" in node:
                    key = _text(node)
                    counts[key] = counts.get(key, 0) + 1
                for x in node.values():
                    walk(x)

        walk(list(select_list))
        return cls({k: i for i, k in enumerate(k for k, c in counts.items() if c > 1)})


_SHARED_CLASSES = {"CAST", "COMPARISON", "CONJUNCTION", "OPERATOR", "CASE", "FUNCTION"}
_SHARING: contextvars.ContextVar[_Sharing | None] = contextvars.ContextVar("card_engine_sharing", default=None)


def _text(node: Any) -> str:
    """An expression's text: its parse tree without aliases and query locations."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("alias", "query_location", "query_location_length")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return json.dumps(strip(node), sort_keys=True)


def compile_expr(node: dict[str, Any]) -> Fn:
    fn = _compile_node(node)
    sharing = _SHARING.get()
    if sharing is None or sharing.in_lambda or node["class"] not in _SHARED_CLASSES:
        return fn
    slot = sharing.slots.get(_text(node))
    if slot is None:
        return fn

    def shared(ctx: Ctx) -> Col:
        out = ctx.shared.get(slot)  # type: ignore[arg-type]
        if out is None:
            out = ctx.shared[slot] = fn(ctx)  # type: ignore[index]
        return out

    return shared


def _compile_node(node: dict[str, Any]) -> Fn:
    cls, typ = node["class"], node["type"]
    if cls == "COLUMN_REF":
        return _compile_ref(list(node["column_names"]))
    if cls == "CONSTANT":
        return _compile_constant(node["literal"])
    if cls == "CAST":
        return _compile_cast(node)
    if cls == "COMPARISON":
        return _compile_comparison(typ, compile_expr(node["left"]), compile_expr(node["right"]))
    if cls == "CONJUNCTION":
        parts = [compile_expr(c) for c in node["children"]]
        return _compile_conjunction(typ, parts)
    if cls == "OPERATOR":
        return _compile_operator(node)
    if cls == "CASE":
        return _compile_case(node)
    if cls == "FUNCTION":
        return _compile_function(node)
    if cls == "WINDOW":
        return _compile_window(node)
    raise Unsupported(f"expression class {cls} ({typ})")


def _compile_ref(names: list[str]) -> Fn:
    """A column reference: ``Ctx.lookup``, its common case (a plain name, no lambda) without the call."""
    if len(names) == 2:  # a qualified name: the env's "a.b", else "b"
        qualified, last = f"{names[0]}.{names[1]}", names[1]

        def qualified_ref(ctx: Ctx) -> Col:
            if not ctx.lambdas:
                col = ctx.env.get(qualified)
                if col is None:
                    col = ctx.env.get(last)
                if col is not None:
                    return col
            return ctx.lookup(names)

        return qualified_ref
    if len(names) != 1:
        return lambda ctx: ctx.lookup(names)
    name = names[0]

    def ref(ctx: Ctx) -> Col:
        if not ctx.lambdas:
            col = ctx.env.get(name)
            if col is None:
                col = ctx.local.get(name)
            if col is not None:
                return col
        return ctx.lookup(names)

    return ref


def _compile_constant(lit: dict[str, Any]) -> Fn:
    kind, text = lit["kind"], lit["text"]
    if kind == "NULL_LITERAL":
        col = _const("int", None)
    elif kind == "INTEGER":
        col = _const("int", int(text))
    elif kind == "NUMERIC":
        m = re.fullmatch(r"(-?)(\d+)\.(\d*)", text)
        if not m:
            raise Unsupported(f"numeric literal {text}")
        sign, whole, frac = m.groups()
        value = int(whole + frac) * (-1 if sign else 1)
        col = _const("dec", value, scale=len(frac), width=max(len(whole.lstrip("0")) + len(frac), 1))
    elif kind == "STRING":
        col = _const("str", text)
    else:
        raise Unsupported(f"literal {kind}")
    return lambda ctx: col


_TYPE_KIND = {"DOUBLE": "dbl", "FLOAT8": "dbl", "INTEGER": "int", "BIGINT": "int", "INT": "int", "VARCHAR": "str"}


def _compile_cast(node: dict[str, Any]) -> Fn:
    child = compile_expr(node["child"])
    t = node["type_expr"]
    name = t["type_name"].upper()
    try_cast = node.get("try_cast", False)
    if name == "DECIMAL":
        width, scale = (int(c["literal"]["text"]) for c in t["children"])
        return lambda ctx: to_dec(child(ctx), scale, width)
    kind = _TYPE_KIND.get(name)
    if kind is None:
        raise Unsupported(f"CAST to {name}")

    def cast(ctx: Ctx) -> Col:
        c = child(ctx)
        if c.kind == kind:
            return c
        if kind == "str":
            if c.kind in ("str", "null"):
                return _as_kind(c, "str")
            raise Unsupported("CAST to VARCHAR")
        if c.kind == "str":
            if kind != "dbl" or not try_cast:
                raise Unsupported("CAST of VARCHAR")
            return _try_cast_double(c)
        if kind == "int" and c.kind in ("dbl", "dec"):
            raise Unsupported("CAST to an integer")
        return _as_kind(c, kind)

    return cast


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_DOUBTFUL = re.compile(r"(?i)inf|nan|_|^\s*[+-]?\d")


def _try_cast_double(c: Col) -> Col:
    out = np.zeros(c.v.shape, np.float64)
    null = c.null.copy()
    for i, s in enumerate(c.v.ravel()):
        if null.ravel()[i]:
            continue
        if isinstance(s, str) and _NUMBER.fullmatch(s):
            out.ravel()[i] = float(s)
        elif isinstance(s, str) and _DOUBTFUL.search(s):
            raise Unsupported(f"TRY_CAST of {s!r}")  # a spelling DuckDB may read as a number (inf, 1_000)
        else:
            null.ravel()[i] = True
    return Col("dbl", out, null)


def _pair(a: Col, b: Col) -> tuple[Col, Col, str]:
    if a.kind == b.kind and (a.kind in ("dbl", "int") or (a.kind == "dec" and a.scale == b.scale)):
        return a, b, a.kind  # already comparable (the casts below would give the same values)
    kind = _numeric_common(a, b) if {a.kind, b.kind} & {"dbl", "dec", "int", "bool"} else None
    if kind is None:
        if a.kind == b.kind or "null" in (a.kind, b.kind):
            kind = a.kind if a.kind != "null" else b.kind
            x, y = _as_kind(a, kind), _as_kind(b, kind)
            if kind == "str":  # NULL slots compare as "" (masked out afterwards)
                if x.null.any():
                    x = Col("str", np.where(x.null, "", x.v), x.null)
                if y.null.any():
                    y = Col("str", np.where(y.null, "", y.v), y.null)
            return x, y, kind
        raise Unsupported(f"compare {a.kind} with {b.kind}")
    if kind == "dec":
        scale = max(a.scale if a.kind == "dec" else 0, b.scale if b.kind == "dec" else 0)
        return to_dec(a, scale), to_dec(b, scale), kind
    return _as_kind(a, kind), _as_kind(b, kind), kind


_CMP = {
    "COMPARE_EQUAL": np.equal,
    "COMPARE_NOTEQUAL": np.not_equal,
    "COMPARE_LESSTHAN": np.less,
    "COMPARE_GREATERTHAN": np.greater,
    "COMPARE_LESSTHANOREQUALTO": np.less_equal,
    "COMPARE_GREATERTHANOREQUALTO": np.greater_equal,
}


def _compile_comparison(typ: str, left: Fn, right: Fn) -> Fn:
    if typ in ("COMPARE_NOT_DISTINCT_FROM", "COMPARE_DISTINCT_FROM"):
        distinct = typ == "COMPARE_DISTINCT_FROM"

        def nd(ctx: Ctx) -> Col:
            a, b, _k = _pair(left(ctx), right(ctx))
            eq = np.where(a.null | b.null, a.null & b.null, _eq(a.v, b.v))
            eq = ~eq if distinct else eq
            return Col("bool", np.asarray(eq, bool), np.zeros(eq.shape, bool))

        return nd
    op = _CMP.get(typ)
    if op is None:
        raise Unsupported(typ)

    def cmp(ctx: Ctx) -> Col:
        a, b, _k = _pair(left(ctx), right(ctx))
        null = a.null | b.null
        v = op(a.v, b.v)
        return Col("bool", np.asarray(v, bool) & ~null, null)

    return cmp


def _eq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.equal(a, b), bool)


def _compile_conjunction(typ: str, parts: list[Fn]) -> Fn:
    is_and = typ == "CONJUNCTION_AND"
    if typ not in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
        raise Unsupported(typ)

    def conj(ctx: Ctx) -> Col:
        cols = [_bool(p(ctx)) for p in parts]
        v, null = cols[0].v, cols[0].null
        for c in cols[1:]:
            if is_and:
                false = (~v & ~null) | (~c.v & ~c.null)
                null = ~false & (null | c.null)
                v = ~false & ~null
            else:
                true = (v & ~null) | (c.v & ~c.null)
                null = ~true & (null | c.null)
                v = true
        return Col("bool", v, null)

    return conj


def _bool(c: Col) -> Col:
    if c.kind == "bool":
        return c
    if c.kind == "null":
        return Col("bool", np.zeros(c.v.shape, bool), c.null)
    raise Unsupported(f"{c.kind} as a condition")


def _compile_operator(node: dict[str, Any]) -> Fn:
    typ = node["type"]
    kids = [compile_expr(c) for c in node["children"]]
    if typ in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL"):
        want_null = typ == "OPERATOR_IS_NULL"

        def isnull(ctx: Ctx) -> Col:
            c = kids[0](ctx)
            v = c.null if want_null else ~c.null
            return Col("bool", v, np.zeros(v.shape, bool))

        return isnull
    if typ == "OPERATOR_NOT":

        def not_(ctx: Ctx) -> Col:
            c = _bool(kids[0](ctx))
            return Col("bool", ~c.v & ~c.null, c.null)

        return not_
    if typ == "OPERATOR_COALESCE":
        return lambda ctx: _coalesce([k(ctx) for k in kids])
    if typ == "ARRAY_EXTRACT":
        return lambda ctx: _array_extract(kids[0](ctx), kids[1](ctx))
    raise Unsupported(typ)


def _to_shape(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``np.broadcast_to(a, shape)``, or ``a`` itself if it has the shape (the same values; no call of ~2 us)."""
    return a if a.shape == shape else np.broadcast_to(a, shape)


def _broadcast(cols: Sequence[Col]) -> list[Col]:
    first = cols[0].v.shape
    if all(c.v.shape == first and c.null.shape == first for c in cols):
        return list(cols)
    shape = np.broadcast_shapes(*(c.v.shape for c in cols), *(c.null.shape for c in cols))
    return [
        c
        if c.v.shape == shape and c.null.shape == shape
        else Col(c.kind, np.broadcast_to(c.v, shape), np.broadcast_to(c.null, shape), c.scale, c.width)
        for c in cols
    ]


def _coalesce(cols: list[Col]) -> Col:
    kind, scale, width = _common_all(cols)
    if kind != "null":
        cols = [_as_kind(c, kind, scale, width) for c in cols]
    v = cols[-1].v
    null = cols[-1].null
    for c in reversed(cols[:-1]):
        v = np.where(c.null, v, c.v)
        null = c.null & null
    return Col(kind, v, null, scale, width)


def _array_extract(lst: Col, idx: Col) -> Col:
    if lst.kind != "list" or lst.elem is None or idx.kind != "int":
        raise Unsupported("list extract")
    e = lst.elem
    m = e.v.shape[-1]
    i = idx.v - 1
    ok = (i >= 0) & (i < m) & ~idx.null
    shape = np.broadcast_shapes(e.v.shape, i.shape)
    ii = _to_shape(np.where(ok, i, 0), shape)
    v = np.take_along_axis(_to_shape(e.v, shape), ii, axis=-1)
    null = np.take_along_axis(_to_shape(e.null, shape), ii, axis=-1)
    return Col(e.kind, v, null | ~_to_shape(ok, shape), e.scale, e.width)


def _compile_case(node: dict[str, Any]) -> Fn:
    checks = [(compile_expr(c["when_expr"]), compile_expr(c["then_expr"])) for c in node["case_checks"]]
    other = compile_expr(node["else_expr"])
    if len(checks) == 1:
        return _compile_case1(*checks[0], other)

    def case(ctx: Ctx) -> Col:
        conds = [_bool(w(ctx)) for w, _t in checks]
        results = [t(ctx) for _w, t in checks] + [other(ctx)]
        kind, scale, width = _common_all(results)
        if kind == "null":
            return results[-1]
        results = [_as_kind(r, kind, scale, width) for r in results]
        v = results[-1].v
        null = results[-1].null
        for cond, res in zip(reversed(conds), reversed(results[:-1]), strict=True):
            take = cond.v & ~cond.null
            v = np.where(take, res.v, v)
            null = np.where(take, res.null, null)
        return Col(kind, v, null, scale, width)

    return _compile_switch(node, case) or case


def _compile_switch(node: dict[str, Any], general: Fn) -> Fn | None:
    """``CASE x WHEN c1 THEN r1 WHEN c2 THEN r2 ... ELSE r END`` with constant strings (or integers) c and
    constant r, as ``race_class`` -> ``class_num``: each row's value looked up once instead of a comparison and
    two ``np.where`` a check; the general CASE's result (the first equal c's r, else r, NULL x matching none;
    the values, dtype and shape ``np.where`` gives). None where the CASE is not of this form."""
    whens = [c["when_expr"] for c in node["case_checks"]]
    if not all(
        w["class"] == "COMPARISON" and w["type"] == "COMPARE_EQUAL" and w["right"]["class"] == "CONSTANT" for w in whens
    ):
        return None
    if len({_text(w["left"]) for w in whens}) != 1:
        return None
    literals = {w["right"]["literal"]["kind"] for w in whens}
    if literals == {"STRING"}:
        key_kind, keys = "str", [w["right"]["literal"]["text"] for w in whens]
    elif literals == {"INTEGER"}:
        key_kind, keys = "int", [int(w["right"]["literal"]["text"]) for w in whens]
    else:
        return None
    outcomes = [c["then_expr"] for c in node["case_checks"]] + [node["else_expr"]]
    if not all(o["class"] == "CONSTANT" for o in outcomes):
        return None
    subject = compile_expr(whens[0]["left"])
    constants = [_compile_constant(o["literal"]) for o in outcomes]
    first: dict[Any, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    typed: list[tuple[str, int, int, list[Any], list[Any], np.dtype, np.dtype]] = []

    def switch(ctx: Ctx) -> Col:
        x = subject(ctx)
        if x.kind != key_kind or x.v.ndim != 1 or x.v.shape != x.null.shape:
            return general(ctx)
        if not typed:  # constants: their common type and converted values are the same every call
            results = [c(ctx) for c in constants]
            kind, scale, width = _common_all(results)
            if kind == "null":
                return general(ctx)
            results = [_as_kind(r, kind, scale, width) for r in results]
            if any(r.v.shape != (1,) or r.null.shape != (1,) for r in results):
                return general(ctx)
            typed.append(
                (
                    kind,
                    scale,
                    width,
                    [r.v[0] for r in results],
                    [r.null[0] for r in results],
                    np.result_type(*(r.v for r in results)),
                    np.result_type(*(r.null for r in results)),
                )
            )
        kind, scale, width, values, nulls, dtype, null_dtype = typed[0]
        last = len(values) - 1
        pick = [
            last if null else first.get(value, last) for value, null in zip(x.v.tolist(), x.null.tolist(), strict=True)
        ]
        v = np.empty(len(pick), dtype)
        v[:] = [values[i] for i in pick]
        return Col(kind, v, np.array([nulls[i] for i in pick], null_dtype), scale, width)

    return switch


def _compile_case1(when: Fn, then: Fn, other: Fn) -> Fn:
    """``CASE WHEN c THEN x ELSE y END``: the general CASE with one check, and where c holds on every row, x
    itself (as ``np.where`` would give it: ``_all_of``)."""

    def case1(ctx: Ctx) -> Col:
        cond = _bool(when(ctx))
        res, last = then(ctx), other(ctx)
        kind, scale, width = _common_all((res, last))
        if kind == "null":
            return last
        res, last = _as_kind(res, kind, scale, width), _as_kind(last, kind, scale, width)
        take = cond.v & ~cond.null
        if _all_of(take, res, last.v, last.null):
            return Col(kind, res.v, res.null, scale, width)
        return Col(kind, np.where(take, res.v, last.v), np.where(take, res.null, last.null), scale, width)

    return case1


_DOUBLE_OPS: dict[str, Callable[..., np.ndarray]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
}


def _compile_arith(op: str, left: Fn, right: Fn) -> Fn:
    """``a op b``: ``_arith``, its common case (two DOUBLEs) without the call."""
    fn = _DOUBLE_OPS[op]

    def arith(ctx: Ctx) -> Col:
        a, b = left(ctx), right(ctx)
        if a.kind == "dbl" and b.kind == "dbl":
            return Col("dbl", fn(a.v, b.v), a.null | b.null)
        return _arith(op, a, b)

    return arith


_INT_OPS: dict[str, Callable[..., np.ndarray]] = {"+": np.add, "-": np.subtract, "*": _mul_i64}


def _all_of(take: np.ndarray, res: Col, v: np.ndarray, null: np.ndarray) -> bool:
    """Whether ``np.where(take, res.v, v)`` and ``np.where(take, res.null, null)`` are ``res.v`` and ``res.null``
    (value, shape and dtype): ``take`` is true on every row, no operand broadcasts beyond ``res``'s shape, and
    ``v`` has ``res.v``'s dtype."""
    shape = take.shape
    return (
        res.v.shape == shape
        and res.null.shape == shape
        and res.v.dtype == v.dtype
        and res.null.dtype == null.dtype
        and (v.shape == shape or (v.size == 1 and v.ndim <= len(shape)))
        and (null.shape == shape or (null.size == 1 and null.ndim <= len(shape)))
        and np.count_nonzero(take) == take.size
    )


def _arith(op: str, a: Col, b: Col) -> Col:
    if a.kind == "date" and b.kind == "date" and op == "-":
        return Col("int", a.v - b.v, a.null | b.null)
    null = a.null | b.null
    if op == "/":
        x, y = to_double(a), to_double(b)
        return Col("dbl", x.v / y.v, null)
    kind = _numeric_common(a, b)
    if kind == "null":
        return Col("null", np.zeros(null.shape, np.int64), null)
    if kind == "dbl":
        return Col("dbl", _DOUBLE_OPS[op](to_double(a).v, to_double(b).v), null)
    if kind == "int":
        fn = _INT_OPS[op]
        return Col("int", fn(a.v.astype(np.int64, copy=False), b.v.astype(np.int64, copy=False)), null)
    sa = a.scale if a.kind == "dec" else 0
    sb = b.scale if b.kind == "dec" else 0
    width = min(38, max(a.width if a.kind == "dec" else 19, b.width if b.kind == "dec" else 19))
    if op == "*":
        va = np.where(a.null, 0, a.v).astype(np.int64)
        vb = np.where(b.null, 0, b.v).astype(np.int64)
        return Col("dec", _mul_i64(va, vb), null, sa + sb, width)
    s = max(sa, sb)
    x, y = to_dec(a, s), to_dec(b, s)
    fn = np.add if op == "+" else np.subtract
    return Col("dec", fn(np.where(x.null, 0, x.v), np.where(y.null, 0, y.v)), null, s, width)


def _compile_function(node: dict[str, Any]) -> Fn:
    name = node["function_name"].lower()
    args = node.get("arguments", [])
    if node.get("filter") or node.get("distinct"):
        raise Unsupported(f"{name} with FILTER / DISTINCT")
    if name == "list":  # the field lists: today's runners in horse_id order (the rows are in that order)
        orders = node.get("order_bys", {}).get("orders", [])
        if len(orders) != 1 or orders[0]["expression"].get("column_names") != ["horse_id"]:
            raise Unsupported("list() not ordered by horse_id")
        inner = compile_expr(args[0]["expression"])

        def make_list(ctx: Ctx) -> Col:
            c = inner(ctx)
            if c.v.shape != (ctx.n,):
                c = _broadcast([c, _const("int", 0, (ctx.n,))])[0]
            elem = Col(c.kind, c.v[None, :], c.null[None, :], c.scale, c.width)
            return Col("list", np.zeros(1), np.zeros(1, bool), elem=elem, keep=np.ones((1, ctx.n), bool))

        return make_list
    if node.get("order_bys", {}).get("orders"):
        raise Unsupported(f"{name} with ORDER BY")
    if name in ("list_filter", "list_transform"):
        lst = compile_expr(args[0]["expression"])
        lam = args[1]["expression"]
        if lam["class"] != "LAMBDA":
            raise Unsupported(f"{name} without a lambda")
        lhs = lam["lhs"]
        params = (
            [p["expression"]["column_names"][0] for p in lhs["arguments"]]
            if lhs["class"] == "FUNCTION"
            else [lhs["column_names"][0]]
        )
        sharing = _SHARING.get()
        if sharing is not None:
            sharing.in_lambda += 1  # a lambda's body reads its parameters: nothing in it is shared
        try:
            body = compile_expr(lam["expr"])
        finally:
            if sharing is not None:
                sharing.in_lambda -= 1
        return _compile_lambda(name, lst, params, body)
    if name == "row":
        raise Unsupported("row()")
    kids = [compile_expr(a["expression"]) for a in args]
    if name in ("+", "-", "*", "/"):
        if len(kids) == 1:
            if name != "-":
                raise Unsupported(f"unary {name}")
            return lambda ctx: _negate(kids[0](ctx))
        return _compile_arith(name, kids[0], kids[1])
    if name == "list_value":
        return lambda ctx: _list_value([k(ctx) for k in kids], ctx.n)
    if name in _LIST_AGGS:
        agg = _LIST_AGGS[name]
        return lambda ctx: agg(kids[0](ctx))
    simple = _SCALARS.get(name)
    if simple is None:
        raise Unsupported(f"function {name}")
    return lambda ctx: simple(*[k(ctx) for k in kids])


def _list_value(cols: list[Col], n: int) -> Col:
    """``[a, b, ...]``: one list per row."""
    kind, scale, width = _common_all(cols)
    cols = [_as_kind(c, kind, scale, width) for c in cols]
    v = np.stack([np.broadcast_to(c.v, (n,)) for c in cols], axis=-1)
    null = np.stack([np.broadcast_to(c.null, (n,)) for c in cols], axis=-1)
    elem = Col(kind, v, null, scale, width)
    return Col("list", np.zeros(1), np.zeros(1, bool), elem=elem, keep=np.ones(v.shape, bool))


def _negate(c: Col) -> Col:
    if c.kind in ("int", "dec", "dbl"):
        return Col(c.kind, -c.v, c.null, c.scale, c.width)
    raise Unsupported(f"-{c.kind}")


def _compile_lambda(name: str, lst_fn: Fn, params: list[str], body: Fn) -> Fn:
    def run(ctx: Ctx) -> Col:
        lst = lst_fn(ctx)
        if lst.kind != "list" or lst.elem is None or lst.keep is None:
            raise Unsupported(f"{name} of {lst.kind}")
        e = lst.elem
        m = e.v.shape[-1]
        frame = {params[0]: e}
        if len(params) > 1:
            idx = np.arange(1, m + 1, dtype=np.int64)[None, :]
            frame[params[1]] = Col("int", idx, np.zeros(idx.shape, bool))
        ctx.lambdas.append(frame)
        try:
            out = body(ctx)
        finally:
            ctx.lambdas.pop()
        if name == "list_filter":
            b = _bool(out)
            keep = lst.keep & b.v & ~b.null
            ev, en = _to_shape(e.v, keep.shape), _to_shape(e.null, keep.shape)
            return Col("list", np.zeros(1), np.zeros(1, bool), elem=Col(e.kind, ev, en, e.scale, e.width), keep=keep)
        shape = lst.keep.shape
        if out.v.shape != shape or out.null.shape != shape:
            shape = np.broadcast_shapes(out.v.shape, out.null.shape, shape)
            out = Col(out.kind, _to_shape(out.v, shape), _to_shape(out.null, shape), out.scale, out.width)
        return Col("list", np.zeros(1), np.zeros(1, bool), elem=out, keep=_to_shape(lst.keep, out.v.shape))

    return run


def _list_parts(c: Col) -> tuple[Col, np.ndarray]:
    if c.kind != "list" or c.elem is None or c.keep is None:
        raise Unsupported(f"list function on {c.kind}")
    e = c.elem
    shape = c.keep.shape if c.keep.shape == e.v.shape else np.broadcast_shapes(c.keep.shape, e.v.shape)
    keep = _to_shape(c.keep, shape)
    return e, keep & ~_to_shape(e.null, shape)


def _list_len(c: Col) -> Col:
    if c.kind != "list" or c.keep is None:
        raise Unsupported("len of a non-list")
    n = c.keep.sum(axis=-1).astype(np.int64)
    return Col("int", n, np.zeros(n.shape, bool))


def _list_count(c: Col) -> Col:
    _e, ok = _list_parts(c)
    n = ok.sum(axis=-1).astype(np.int64)
    return Col("int", n, np.zeros(n.shape, bool))


def _seq_sum(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Left-to-right sums of DOUBLE values along the last axis (as DuckDB adds them, not numpy's pairwise)."""
    x = np.where(ok, v, 0.0)
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1])
    return np.cumsum(x, axis=-1)[..., -1]


def _list_sum(c: Col) -> Col:
    e, ok = _list_parts(c)
    none = ~ok.any(axis=-1)
    if e.kind == "dbl":
        return Col("dbl", _seq_sum(e.v, ok), none)
    if e.kind in ("dec", "int"):
        s = np.where(ok, e.v, 0).astype(np.int64).sum(axis=-1)
        return Col(e.kind, s, none, e.scale, 38)
    raise Unsupported(f"list_sum of {e.kind}")


def _dec_avg(total: np.ndarray, count: np.ndarray, scale: int) -> np.ndarray:
    """DuckDB's avg(DECIMAL): the exact sum / (count * 10**scale), in long double, rounded to DOUBLE."""
    q = total.astype(np.longdouble) / (count.astype(np.longdouble) * _long_power(scale))
    return q.astype(np.float64)


@functools.cache
def _long_power(scale: int) -> np.longdouble:
    return np.longdouble(10.0**scale)


def _list_avg(c: Col) -> Col:
    e, ok = _list_parts(c)
    n = ok.sum(axis=-1)
    none = n == 0
    if e.kind == "dbl":
        return Col("dbl", _seq_sum(e.v, ok) / n, none)
    if e.kind in ("dec", "int"):
        s = np.where(ok, e.v, 0).astype(np.int64).sum(axis=-1)
        return Col("dbl", _dec_avg(s, n, e.scale if e.kind == "dec" else 0), none)
    raise Unsupported(f"list_avg of {e.kind}")


def _list_extreme(fn: Callable[..., np.ndarray]) -> Callable[[Col], Col]:
    def run(c: Col) -> Col:
        e, ok = _list_parts(c)
        none = ~ok.any(axis=-1)
        if e.kind == "dbl":
            fill = -np.inf if fn is np.max else np.inf
            return Col("dbl", fn(np.where(ok, e.v, fill), axis=-1), none)
        if e.kind in ("dec", "int"):
            fill = _I64_MIN if fn is np.max else _I64_MAX
            return Col(e.kind, fn(np.where(ok, e.v, fill), axis=-1), none, e.scale, e.width)
        raise Unsupported(f"list max/min of {e.kind}")

    return run


def _welford(xs: Sequence[float]) -> float | None:
    """DuckDB's stddev_samp: Welford's update in DOUBLE."""
    n, mean, d2 = 0, 0.0, 0.0
    for x in xs:
        n += 1
        new_mean = mean + (x - mean) / n
        d2 = d2 + (x - new_mean) * (x - mean)
        mean = new_mean
    return math.sqrt(d2 / (n - 1)) if n > 1 else None


def _list_stddev_samp(c: Col) -> Col:
    e, ok = _list_parts(c)
    ev = to_double(e).v if e.kind != "dbl" else e.v
    ev = np.broadcast_to(ev, ok.shape)
    rows = ok.reshape(-1, ok.shape[-1])
    vals = ev.reshape(-1, ok.shape[-1])
    out = np.zeros(rows.shape[0])
    null = np.zeros(rows.shape[0], bool)
    for i in range(rows.shape[0]):
        s = _welford(vals[i][rows[i]].tolist())
        if s is None:
            null[i] = True
        else:
            out[i] = s
    return Col("dbl", out.reshape(ok.shape[:-1]), null.reshape(ok.shape[:-1]))


_LIST_AGGS: dict[str, Callable[[Col], Col]] = {
    "len": _list_len,
    "length": _list_len,
    "list_count": _list_count,
    "list_sum": _list_sum,
    "list_avg": _list_avg,
    "list_max": _list_extreme(np.max),
    "list_min": _list_extreme(np.min),
    "list_stddev_samp": _list_stddev_samp,
}


def _greatest_least(is_greatest: bool) -> Callable[..., Col]:
    def run(*cols: Col) -> Col:
        kind, scale, width = _common_all(cols)
        cs = [_as_kind(c, kind, scale, width) for c in cols]
        v, null = cs[0].v, cs[0].null
        for c in cs[1:]:
            better = (c.v > v) if is_greatest else (c.v < v)
            take = ~c.null & (null | better)
            v = np.where(take, c.v, v)
            null = null & c.null
        return Col(kind, v, null, scale, width)

    return run


def _sqrt(c: Col) -> Col:
    d = to_double(c)
    return Col("dbl", np.sqrt(d.v), d.null)


def _abs(c: Col) -> Col:
    if c.kind not in ("int", "dec", "dbl"):
        raise Unsupported(f"abs of {c.kind}")
    return Col(c.kind, np.abs(c.v), c.null, c.scale, c.width)


def _nullif(a: Col, b: Col) -> Col:
    x, y, _k = _pair(a, b)
    same = ~x.null & ~y.null & _eq(x.v, y.v)
    return Col(a.kind, a.v, a.null | same, a.scale, a.width)


def _split_part(s: Col, sep: Col, idx: Col) -> Col:
    out = np.empty(s.v.shape, object)
    null = s.null | sep.null | idx.null
    sv, sepv, iv = np.broadcast_arrays(s.v, sep.v, idx.v)
    for i in range(out.size):
        if null.ravel()[i]:
            out.ravel()[i] = ""
            continue
        parts = str(sv.ravel()[i]).split(str(sepv.ravel()[i])) if sepv.ravel()[i] else [str(sv.ravel()[i])]
        k = int(iv.ravel()[i])
        out.ravel()[i] = parts[k - 1] if 1 <= k <= len(parts) else ""
    return Col("str", out, np.asarray(null, bool))


_SCALARS: dict[str, Callable[..., Col]] = {
    "greatest": _greatest_least(True),
    "least": _greatest_least(False),
    "sqrt": _sqrt,
    "abs": _abs,
    "nullif": _nullif,
    "split_part": _split_part,
}


def _compile_window(node: dict[str, Any]) -> Fn:
    func = node["function_name"].lower()
    if node.get("filter_expr") or node.get("ignore_nulls") or node.get("distinct") or node.get("arg_orders"):
        raise Unsupported(f"window {func} with options")
    if node.get("offset_expr") or node.get("default_expr"):
        raise Unsupported(f"window {func} with an offset")
    args = node.get("arguments", [])
    if func == "count_star" or (func == "count" and not args):
        arg = None
    elif len(args) == 1 and args[0]["expression"]["class"] == "COLUMN_REF":
        arg = args[0]["expression"]["column_names"][-1]
    elif len(args) == 1 and args[0]["expression"]["class"] == "STAR":
        arg = None
    else:
        raise Unsupported(f"window {func} over an expression")
    spec = _window_spec(node)
    spec["frame_key"] = (tuple(spec["partition"]), spec["last"], spec["lag_only"])
    spec["key"] = (func, arg, *spec["frame_key"])

    def win(ctx: Ctx) -> Col:
        if ctx.window is None:
            raise Unsupported("a window call outside the horse stage")
        return ctx.window(func, arg, spec)

    return win


def _window_spec(node: dict[str, Any]) -> dict[str, Any]:
    parts = [p["column_names"][-1] for p in node["partitions"]]
    orders = [o["expression"]["column_names"][-1] for o in node["orders"]]
    if not parts or parts[0] != "horse_id" or orders != ["race_seq"]:
        raise Unsupported("a window not over the horse's runs in start order")
    start, end = node["start"], node["end"]
    if end == "EXPR_PRECEDING_ROWS" and node["end_expr"]["literal"]["text"] == "1":
        if start == "UNBOUNDED_PRECEDING":
            last = None
        elif start == "EXPR_PRECEDING_ROWS":
            last = int(node["start_expr"]["literal"]["text"])
        else:
            raise Unsupported(f"frame start {start}")
        return {"partition": parts[1:], "last": last, "lag_only": False}
    if start in ("UNBOUNDED_PRECEDING", "UNBOUNDED") and end in ("CURRENT_ROW_RANGE", "CURRENT_ROW_ROWS"):
        return {"partition": parts[1:], "last": None, "lag_only": True}
    raise Unsupported(f"frame {start} .. {end}")


def _frame_key(spec: dict[str, Any]) -> tuple[Any, ...]:
    """A window frame's identity: its partition columns, its last N rows, lag's frame."""
    key = spec.get("frame_key")
    return key if key is not None else (tuple(spec["partition"]), spec["last"], spec["lag_only"])


# -- the stored state in memory ----------------------------------------------------------------------------
def _kind_of(sql_type: str) -> tuple[str, int, int]:
    t = sql_type.upper()
    m = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", t)
    if m:
        return "dec", int(m.group(2)), int(m.group(1))
    if t in ("INTEGER", "BIGINT", "HUGEINT", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER"):
        return "int", 0, 18
    if t in ("DOUBLE", "FLOAT"):
        return "dbl", 0, 18
    if t == "VARCHAR":
        return "str", 0, 18
    if t == "DATE":
        return "date", 0, 18
    if t == "BOOLEAN":
        return "bool", 0, 18
    return "other", 0, 18


def _fetch(
    conn: duckdb.DuckDBPyConnection, table: str, order: str, cols: Sequence[str] | None = None
) -> dict[str, Col]:
    """Columns of a stored table as Cols (DECIMALs as exact scaled int64, strings as objects, dates as days)."""
    types = {str(r[0]): str(r[1]) for r in conn.execute(f"DESCRIBE {table}").fetchall()}
    names = [c for c in (cols if cols is not None else types) if _kind_of(types[c])[0] != "other"]
    select = []
    for c in names:
        kind, scale, _w = _kind_of(types[c])
        if kind == "dec":
            select.append(f"CAST(CAST({c} AS DECIMAL(38, {scale})) * {10**scale} AS BIGINT) AS {c}")
        elif kind == "int":
            select.append(f"CAST({c} AS BIGINT) AS {c}")
        elif kind == "date":
            select.append(f"CAST({c} - DATE '1970-01-01' AS BIGINT) AS {c}")
        elif kind == "bool":
            select.append(f"CAST({c} AS BOOLEAN) AS {c}")
        else:
            select.append(c)
        select.append(f"{c} IS NULL AS {c}__null")
    data = conn.execute(f"SELECT {', '.join(select)} FROM {table} ORDER BY {order}").fetchnumpy()
    out = {}
    for c in names:
        kind, scale, width = _kind_of(types[c])
        null = np.asarray(data[f"{c}__null"], bool)
        raw = data[c]
        if kind == "str":  # one object per distinct string, not per row
            v = np.where(null, "", np.asarray(raw, dtype=object)).astype(object)
            uniq, inverse = np.unique(v.astype(str), return_inverse=True)
            v = np.where(null, None, uniq.astype(object)[inverse])
        elif kind == "dbl":
            v = np.where(null, 0.0, np.asarray(raw, dtype=np.float64))
        elif kind == "bool":
            v = np.where(null, False, np.asarray(raw, dtype=bool))
        else:
            v = np.where(null, 0, np.ma.filled(raw, 0) if np.ma.isMaskedArray(raw) else raw).astype(np.int64)
        out[c] = Col(kind, v, null, scale, width)
    return out


@dataclass
class _Prefix:
    """Prefix sums (exact int64) and non-NULL counts of some columns of rows sorted by (key, race_seq)."""

    seq: np.ndarray
    sums: dict[str, tuple[str, int, int, np.ndarray, np.ndarray | None]]  # name -> (kind, scale, width, sums, counts)
    stacked: np.ndarray  # every column's sums, one row each (``sums`` holds views of the rows)

    @classmethod
    def of(cls, cols: Mapping[str, Col], seq: np.ndarray, names: Sequence[str], types: Mapping[str, tuple]) -> _Prefix:
        prefix = []
        for n in names:
            c = cols[n]
            if c.kind not in ("int", "dec"):
                raise Unsupported(f"prefix sums of {c.kind}")
            prefix.append(np.concatenate([[0], np.cumsum(np.where(c.null, 0, c.v), dtype=np.int64)]))
        stacked = np.stack(prefix) if prefix else np.zeros((0, len(seq) + 1), np.int64)
        sums = {}
        for j, n in enumerate(names):
            c = cols[n]
            # non-NULL counts only where there are NULLs (else the count is the number of rows)
            k = np.concatenate([[0], np.cumsum(~c.null, dtype=np.int64)]) if c.null.any() else None
            sums[n] = (*types[n], stacked[j], k)
        return cls(seq, sums, stacked)

    def totals(self, lo: np.ndarray, hi: np.ndarray) -> list[Col]:
        """``total`` of every column (in ``sums`` order), the sums differenced at once."""
        diff = self.stacked[:, hi] - self.stacked[:, lo]
        no_rows = (hi - lo) == 0
        out = []
        for j, (kind, scale, width, _s, k) in enumerate(self.sums.values()):
            out.append(Col(kind, diff[j], no_rows if k is None else (k[hi] - k[lo]) == 0, scale, width))
        return out

    def total(self, name: str, lo: np.ndarray, hi: np.ndarray) -> Col:
        kind, scale, width, s, k = self.sums[name]
        counts = hi - lo if k is None else k[hi] - k[lo]
        return Col(kind, s[hi] - s[lo], counts == 0, scale, width)


def _sum_type(c: Col) -> tuple[str, int, int]:
    """The type of sum(c): DECIMAL(38, s) or HUGEINT."""
    return (c.kind, c.scale, 38) if c.kind == "dec" else ("int", 0, 38)


@dataclass
class _Group:
    """A group's stored (key, race) rows sorted by (key, race_seq): key -> number, the first row of each key,
    and key number * stride + race_seq (ascending), so one searchsorted finds every card row's last row."""

    keys: tuple[str, ...]
    rolling: int | None
    codes: dict[tuple[Any, ...], int]
    starts: np.ndarray
    ordered: np.ndarray
    stride: int
    prefix: _Prefix
    totals: tuple[str, ...] = ()  # the card columns of the prefix's sums, in its order: g_<group>.<total>

    @classmethod
    def of(cls, keys: tuple[str, ...], rolling: int | None, cols: Mapping[str, Col], prefix: _Prefix) -> _Group:
        index = _key_index(cols, keys)
        codes = {key: i for i, key in enumerate(index)}
        starts = np.array([s for s, _e in index.values()] or [0], np.int64)
        seq = prefix.seq
        stride = int(seq.max()) + 2 if len(seq) else 2
        code_of_row = np.full(len(seq), len(index), np.int64)  # rows of NULL keys (sorted last) are never found
        for i, (s, e) in enumerate(index.values()):
            code_of_row[s:e] = i
        ordered = code_of_row * stride + seq
        if len(ordered) and (np.diff(ordered) < 0).any():
            raise Unsupported("group rows not sorted by key and race_seq")
        return cls(keys, rolling, codes, starts, ordered, stride, prefix)


def _key_index(cols: Mapping[str, Col], keys: Sequence[str]) -> dict[tuple[Any, ...], tuple[int, int]]:
    """Key tuple -> (first, end) row of rows sorted by the key; rows with a NULL key are left out."""
    n = len(cols[keys[0]].v)
    if n == 0:
        return {}
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        c = cols[k]
        v = c.v
        change[1:] |= (v[1:] != v[:-1]) | (c.null[1:] != c.null[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    out = {}
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        key = tuple(_py(cols[k], s) for k in keys)
        if None not in key:
            out[key] = (s, e)
    return out


def _py(c: Col, i: int) -> Any:
    if c.null[i]:
        return None
    x = c.v[i]
    if c.kind == "dbl":
        return float(x)
    if c.kind in ("int", "dec", "date"):
        return int(x)
    return x


def _pys(c: Col, n: int) -> list[Any]:
    """``[_py(c, i) for i in range(n)]``, by ``tolist`` where it gives the same values."""
    if c.kind in ("str", "int", "dec", "date", "dbl") and c.v.shape == (n,) and c.null.shape == (n,):
        return [None if null else x for x, null in zip(c.v.tolist(), c.null.tolist(), strict=True)]
    return [_py(c, i) for i in range(n)]


def _race_key(d: int, race_no: Any, off_time: Any, race_id: str) -> tuple[Any, ...]:
    """The start order of races: date, race_no NULLS LAST, off_time NULLS LAST, race_id."""
    return (
        d,
        race_no is None,
        0 if race_no is None else int(race_no),
        off_time is None,
        "" if off_time is None else str(off_time),
        str(race_id),
    )


_EPOCH = date(1970, 1, 1)


@dataclass
class CardEngine:
    """The stored race-card state in memory and the compiled feature program."""

    fingerprint: str
    program: Program
    race_keys: list[tuple[Any, ...]]
    race_dates: np.ndarray
    race_seq_of: dict[str, int]
    runs: dict[str, Col]
    run_index: dict[str, tuple[int, int]]
    groups: dict[str, _Group]
    rt: _Prefix
    cpa_all: _Prefix
    class_par: dict[float, _Prefix]
    mom_seq: np.ndarray
    mom: dict[str, Col]
    horses: dict[str, tuple[Any, ...]]
    run_types: dict[str, tuple[str, int, int]]
    # VARCHAR run column -> (string -> code, each run's code, -1 if NULL): partitions compare codes, not strings
    run_codes: dict[str, tuple[dict[str, int], np.ndarray]] = field(default_factory=dict)

    def codes(self, name: str) -> tuple[dict[str, int], np.ndarray]:
        """The codes of a VARCHAR run column (made at its first use; the same whichever thread makes them)."""
        out = self.run_codes.get(name)
        if out is None:
            c = self.runs[name]
            values = [None if null else x for x, null in zip(c.v.tolist(), c.null.tolist(), strict=True)]
            mapping: dict[str, int] = {}
            for x in values:
                if x is not None and x not in mapping:
                    mapping[x] = len(mapping)
            run = np.array([-1 if x is None else mapping[x] for x in values], np.int64)
            out = self.run_codes[name] = (mapping, run)
        return out

    @classmethod
    def load(cls, conn: duckdb.DuckDBPyConnection, fingerprint: str, program: Program) -> CardEngine:
        races = _fetch(conn, "feature_state_race", "race_seq", ["race_id", "date", "race_no", "off_time", "race_seq"])
        seq = races["race_seq"].v
        if not np.array_equal(seq, np.arange(1, len(seq) + 1)):
            raise Unsupported("stored races are not numbered 1..n")
        race_keys = [
            _race_key(_py(races["date"], i), _py(races["race_no"], i), _py(races["off_time"], i), races["race_id"].v[i])
            for i in range(len(seq))
        ]
        if race_keys != sorted(race_keys):
            raise Unsupported("stored races are not in start order")
        race_seq_of = {str(r): int(s) for r, s in zip(races["race_id"].v.tolist(), seq.tolist(), strict=True)}
        run_types = {str(r[0]): _kind_of(str(r[1])) for r in conn.execute("DESCRIBE feature_state_run").fetchall()}
        wanted = sorted(set(program.run_columns) | {"horse_id", "race_seq"})
        runs = _fetch(conn, "feature_state_run", "horse_id, race_seq", wanted)
        run_index = {k[0]: v for k, v in _key_index(runs, ["horse_id"]).items()}
        groups = {}
        for name, (keys, rolling) in program.groups.items():
            table = f"feature_state_ga_{name}"
            cols = _fetch(conn, table, ", ".join((*keys, "race_seq")), [*keys, "race_seq", *_GROUP_SUMS])
            types = {n: _sum_type(cols[n]) for n in _GROUP_SUMS}
            prefix = _Prefix.of(cols, cols["race_seq"].v, _GROUP_SUMS, types)
            groups[name] = _Group.of(tuple(keys), rolling, cols, prefix)
            total_of = {src: total for total, src in _GROUP_TOTALS.items()}
            groups[name].totals = tuple(f"g_{name}.{total_of[src]}" for src in prefix.sums)
        rt = _fetch(conn, "feature_state_rt", "race_seq", ["race_seq", "n_res", "n_won", "n_placed"])
        rt_prefix = _Prefix.of(
            rt,
            rt["race_seq"].v,
            ("n_res", "n_won", "n_placed"),
            {n: _sum_type(rt[n]) for n in ("n_res", "n_won", "n_placed")},
        )
        cpa = _fetch(conn, "feature_state_cpa", "race_seq", ["race_seq", "class_num", "winner_fig", "fig_sum", "fig_n"])
        cpa_all = _Prefix.of(
            cpa, cpa["race_seq"].v, ("fig_sum", "fig_n"), {n: _sum_type(cpa[n]) for n in ("fig_sum", "fig_n")}
        )
        class_par = {}
        has = ~cpa["class_num"].null & ~cpa["winner_fig"].null
        for value in np.unique(cpa["class_num"].v[has]).tolist():
            rows = has & (cpa["class_num"].v == value)
            sub = {k: Col(c.kind, c.v[rows], c.null[rows], c.scale, c.width) for k, c in cpa.items()}
            class_par[float(value)] = _Prefix.of(
                sub, sub["race_seq"].v, ("winner_fig",), {"winner_fig": _sum_type(sub["winner_fig"])}
            )
        mom = _fetch(conn, "feature_state_mom", "race_seq")
        mom_seq = mom.pop("race_seq").v
        horses: dict[str, tuple[Any, ...]] = {}
        for row in conn.execute("SELECT horse_id, sire, dam, damsire, sex, foaled_year FROM horses").fetchall():
            horses.setdefault(str(row[0]), tuple(row[1:]))
        return cls(
            fingerprint,
            program,
            race_keys,
            np.array([k[0] for k in race_keys], np.int64),
            race_seq_of,
            runs,
            run_index,
            groups,
            rt_prefix,
            cpa_all,
            class_par,
            mom_seq,
            mom,
            horses,
            run_types,
        )

    # -- one card ------------------------------------------------------------------------------------------
    def history(self, race: Mapping[str, Any], cutoff: date) -> tuple[int, int | None]:
        """(last_seq, own_seq) as build._history_before computes them: the stored races before the card that
        are dated on or before ``cutoff``, and the race_seq of the card's own race if the warehouse holds it."""
        d = (race["date"] - _EPOCH).days
        key = _race_key(d, _int(race.get("race_no")), _str(race.get("off_time")), str(_str(race["race_id"])))
        k = bisect.bisect_left(self.race_keys, key)
        k = int(np.searchsorted(self.race_dates[:k], (cutoff - _EPOCH).days, side="right"))
        own = self.race_seq_of.get(str(race["race_id"]))
        if own is not None and own == k:
            k -= 1
        return k, own

    def features(
        self,
        race: Mapping[str, Any],
        runners: Sequence[Mapping[str, Any]],
        horses: Sequence[Mapping[str, Any]],
        last_seq: int,
    ) -> pd.DataFrame:
        """The card's features (the rows and columns ``build_features`` gives its race), from its records."""
        # NULL slots hold placeholder values and SQL's x / 0 is inf or nan: no floating-point warnings
        with np.errstate(all="ignore"):
            base = self._base(race, runners, horses, last_seq)
            return self.program.run(self, base, last_seq)

    def _base(
        self,
        race: Mapping[str, Any],
        runners: Sequence[Mapping[str, Any]],
        horses: Sequence[Mapping[str, Any]],
        last_seq: int,
    ) -> dict[str, Col]:
        """The card's base rows (_fx_run of the SQL card path), sorted by horse_id.

        ``race``, ``runners`` (declared, results cleared) and ``horses`` are the records of
        ``build._card_records``. A card has no results, so every column the base stage derives from results
        is NULL; the race columns are the bulk build's own expressions (``_fx_race``); the pars and priors are
        the aggregates of ``card_base_steps`` over the stored races; values are typed as the SQL card path
        casts them (anything it would convert another way, as a float draw or a numeric jockey id, is
        ``Unsupported``).
        """
        u = sorted(runners, key=lambda r: _str(r.get("horse_id")) or "")
        n = len(u)
        ids = [_str(r.get("horse_id")) for r in u]
        if len(set(ids)) != n or None in ids:
            raise Unsupported("a horse twice on one card")
        env: dict[str, Col] = {}
        no_value, null = np.zeros(n, np.int64), np.ones(n, bool)  # every NULL column (Cols are never changed)
        for c, (kind, scale, width) in self.run_types.items():
            if kind != "other":
                env[c] = Col(kind, no_value, null, scale, width)
        race_cols = self.program.race_columns(race)
        for c, col in race_cols.items():
            env[c] = _rep(col, n)
        env["race_id"] = _obj([_str(race.get("race_id"))] * n)
        env["horse_id"] = _obj(ids)
        env["race_seq"] = _const("int", last_seq + 1, (n,))
        env["race_seq_h"] = _const("int", 1, (n,))
        env["field_size"] = _const("int", n, (n,))
        for c in ("horse_name", "jockey_id", "trainer_id", "gear"):
            env[c] = _obj([_str(r.get(c)) for r in u])
        for c in ("saddle_no", "draw"):
            env[c] = _ints([r.get(c) for r in u])
        for c in ("carried_weight_lbs", "horse_weight_lbs", "rating"):
            kind, scale, width = self.run_types[c]
            dbl = _dbls([r.get(c) for r in u])
            env[c] = to_dec(dbl, scale, width) if kind == "dec" else dbl
        for c in ("win_odds", "place_odds"):
            env[c] = _dbls([r.get(c) for r in u])
        card_horses: dict[str, tuple[Any, ...]] = {}
        for h in horses:
            hid = _str(h.get("horse_id"))
            if hid is not None:
                card_horses.setdefault(hid, tuple(h.get(c) for c in ("sire", "dam", "damsire", "sex", "foaled_year")))
        recs = [self.horses.get(i) or card_horses.get(i) or (None,) * 5 for i in ids]  # type: ignore[arg-type]
        for j, c in enumerate(("sire", "dam", "damsire")):
            env[c] = _obj([_str(r[j]) for r in recs])
        year = race["date"].year
        foaled = _ints([r[4] for r in recs])
        own_age = _ints([r.get("age") for r in u])
        env["age"] = Col("int", np.where(own_age.null, year - foaled.v, own_age.v), own_age.null & foaled.null)
        sexes = [_str(r.get("sex")) for r in u]
        env["sex"] = _obj([s if s is not None else _str(h[3]) for s, h in zip(sexes, recs, strict=True)])
        self._priors(env, race_cols, last_seq, n)
        for c in ("par_time", "sec_m"):  # pars of the card's own figure: not computed here (it has no figure)
            env.pop(c, None)
        return env

    def _priors(self, env: dict[str, Col], race_cols: Mapping[str, Col], last_seq: int, n: int) -> None:
        """prior_win, prior_place, prior_fig and class_par_fig: card_base_steps' aggregates of stored races."""
        lo = np.zeros(1, np.int64)
        hi = np.array([np.searchsorted(self.rt.seq, last_seq, side="right")])
        won, placed, res = (to_double(self.rt.total(x, lo, hi)) for x in ("n_won", "n_placed", "n_res"))
        env["prior_win"] = _rep(Col("dbl", won.v / res.v, won.null | res.null), n)
        env["prior_place"] = _rep(Col("dbl", placed.v / res.v, placed.null | res.null), n)
        hi = np.array([np.searchsorted(self.cpa_all.seq, last_seq, side="right")])
        fs, fn = (to_double(self.cpa_all.total(x, lo, hi)) for x in ("fig_sum", "fig_n"))
        env["prior_fig"] = _rep(Col("dbl", fs.v / fn.v, fs.null | fn.null), n)
        cls_num = race_cols["class_num"]
        _kind, scale, width = self.run_types["class_par_fig"]
        par = Col("dbl", np.zeros(1), np.ones(1, bool))
        if not cls_num.null[0]:
            p = self.class_par.get(float(cls_num.v[0]))
            if p is not None:
                hi = np.array([np.searchsorted(p.seq, last_seq, side="right")])
                t = p.total("winner_fig", lo, hi)
                count = hi - lo
                par = Col("dbl", _dec_avg(t.v, count, t.scale), count == 0)
        env["class_par_fig"] = _rep(to_dec(par, scale, width), n)

    def horse_window(self, base: Mapping[str, Col], last_seq: int) -> Callable[[str, str | None, dict[str, Any]], Col]:
        """The horse windows of the bulk build, for the card's rows: aggregates over the horse's stored runs.

        A (runner, run) matrix holds each horse's stored runs up to last_seq, the last run rightmost; a
        window's frame is the runs of its partition (the card's values of the partition columns), the last N
        of them for ``ROWS BETWEEN N PRECEDING AND 1 PRECEDING``, the last one for lag.
        """
        ids = base["horse_id"].v.tolist()
        spans = []
        for h in ids:
            s, e = self.run_index.get(h, (0, 0))
            e = s + int(np.searchsorted(self.runs["race_seq"].v[s:e], last_seq, side="right"))
            spans.append((s, e))
        width = max(max((e - s for s, e in spans), default=0), 1)  # one empty column if nobody ran
        idx = np.zeros((len(ids), width), np.int64)
        valid = np.zeros((len(ids), width), bool)
        for i, (s, e) in enumerate(spans):
            if e > s:
                idx[i, width - (e - s) :] = np.arange(s, e)
                valid[i, width - (e - s) :] = True
        gathered: dict[str, Col] = {}
        frames: dict[tuple[Any, ...], np.ndarray] = {}
        invalid = ~valid

        def stored(name: str) -> Col:
            src = self.runs.get(name)
            if src is None:
                raise Unsupported(f"stored run column {name!r}")
            return src

        def col(name: str) -> Col:
            c = gathered.get(name)
            if c is None:
                src = stored(name)
                c = Col(src.kind, src.v[idx], src.null[idx] | invalid, src.scale, src.width)
                gathered[name] = c
            return c

        narrowed: dict[tuple[str, int], Col] = {}

        def last_cols(name: str, m: int) -> Col:
            """``col(name)``'s last m columns (gathered alone)."""
            c = narrowed.get((name, m))
            if c is None:
                src = stored(name)
                cols = idx[:, -m:]
                c = Col(src.kind, src.v[cols], src.null[cols] | invalid[:, -m:], src.scale, src.width)
                narrowed[(name, m)] = c
            return c

        def frame(spec: dict[str, Any]) -> np.ndarray:
            key = _frame_key(spec)
            f = frames.get(key)
            if f is None:
                f = valid.copy()
                for p in spec["partition"]:
                    card_p = base[p]
                    if stored(p).kind == "str" and card_p.kind == "str" and card_p.v.shape == (len(ids),):
                        # equal strings (NULL equal to NULL): equal codes, -1 for NULL, -2 for a string no run has
                        mapping, run_codes = self.codes(p)
                        card = [
                            -1 if null else mapping.get(x, -2)
                            for x, null in zip(card_p.v.tolist(), card_p.null.tolist(), strict=True)
                        ]
                        f &= run_codes[idx] == np.array(card, np.int64)[:, None]
                        continue
                    runs_p = col(p)
                    if runs_p.kind == "str":
                        same = np.equal(
                            np.where(runs_p.null, None, runs_p.v), np.where(card_p.null, None, card_p.v)[:, None]
                        )
                    else:
                        same = np.where(
                            runs_p.null, card_p.null[:, None], ~card_p.null[:, None] & (runs_p.v == card_p.v[:, None])
                        )
                    f &= np.asarray(same, bool)
                if spec["lag_only"] or spec["last"] is not None:
                    from_right = np.cumsum(f[:, ::-1], axis=1)[:, ::-1]
                    f &= from_right <= (1 if spec["lag_only"] else spec["last"])
                frames[key] = f
            return f

        done: dict[tuple[Any, ...], Col] = {}

        def window(func: str, arg: str | None, spec: dict[str, Any]) -> Col:
            key = spec.get("key") or (func, arg, tuple(spec["partition"]), spec["last"], spec["lag_only"])
            out = done.get(key)
            if out is None:
                out = done[key] = aggregate(func, arg, spec)
            return out

        # (column, frame) -> its non-NULL values in the frame: the mask, their count, no value (sum, avg, max...)
        masked: dict[tuple[Any, ...], tuple[Col, np.ndarray, np.ndarray, np.ndarray]] = {}
        sums: dict[tuple[Any, ...], np.ndarray] = {}  # (column, frame) -> the int64 sum of its values

        def values(arg: str, spec: dict[str, Any]) -> tuple[Col, np.ndarray, np.ndarray, np.ndarray]:
            key = (arg, _frame_key(spec))
            out = masked.get(key)
            if out is None:
                last = spec["last"]
                if not spec["partition"] and last is not None and last + 1 < width:
                    # the horse's last N runs are the matrix's last N columns (runs are right-aligned): the
                    # aggregates read those and one column outside the frame, so that a DOUBLE sum still starts
                    # from the 0.0 of the columns left out (the same additions, the same bits)
                    c = last_cols(arg, last + 1)
                    f = frame(spec)[:, -(last + 1) :]
                else:
                    c, f = col(arg), frame(spec)
                ok = f & ~c.null
                k = ok.sum(axis=1)
                out = masked[key] = (c, ok, k, k == 0)
            return out

        def total(arg: str, spec: dict[str, Any]) -> np.ndarray:
            """The sum of the column's values in the frame: DOUBLEs left to right, integers exact in int64."""
            key = (arg, _frame_key(spec))
            s = sums.get(key)
            if s is None:
                c, ok, _k, _none = values(arg, spec)
                if c.kind == "dbl":
                    s = sums[key] = _seq_sum(c.v, ok)
                else:
                    s = sums[key] = np.where(ok, c.v, 0).sum(axis=1, dtype=np.int64)
            return s

        def aggregate(func: str, arg: str | None, spec: dict[str, Any]) -> Col:
            if (func == "lag") != spec["lag_only"]:
                raise Unsupported(f"{func} over this frame")
            if arg is None:
                if func != "count":
                    raise Unsupported(f"{func}(*)")
                k = frame(spec).sum(axis=1).astype(np.int64)
                return Col("int", k, np.zeros(len(k), bool))
            if func == "lag" and not spec["partition"]:
                # the frame is the horse's last run, the matrix's last column: its value, or NULL (with the
                # value of the first column, as the argmax below gives it)
                src = stored(arg)
                last_run = idx[:, -1]
                null = src.null[last_run] | invalid[:, -1]
                v = np.where(null, src.v[idx[:, 0]], src.v[last_run])
                return Col(src.kind, v, null, src.scale, src.width)
            c, ok, k, none = values(arg, spec)
            if func == "count":
                return Col("int", k.astype(np.int64), np.zeros(len(k), bool))
            if func == "lag":
                pos = np.argmax(ok, axis=1)
                v = c.v[np.arange(len(pos)), pos] if c.v.shape[1] else np.zeros(len(pos), c.v.dtype)
                return Col(c.kind, v, none, c.scale, c.width)
            if func in ("sum", "avg"):
                if c.kind == "dbl":
                    s = total(arg, spec)
                    if func == "sum":
                        return Col("dbl", s, none)
                    return Col("dbl", s / k, none)
                if c.kind in ("dec", "int"):
                    s = total(arg, spec)
                    if func == "sum":
                        kind, scale, w = _sum_type(c)
                        return Col(kind, s, none, scale, w)
                    return Col("dbl", _dec_avg(s, k, c.scale if c.kind == "dec" else 0), none)
            if func in ("max", "min") and c.kind in ("dbl", "dec", "int", "date"):
                if c.kind == "dbl":
                    fill = -np.inf if func == "max" else np.inf
                else:
                    fill = _I64_MIN if func == "max" else _I64_MAX
                vals = np.where(ok, c.v, fill)
                v = vals.max(axis=1) if func == "max" else vals.min(axis=1)
                if not vals.shape[1]:
                    v = np.zeros(len(k), c.v.dtype)
                return Col(c.kind, np.where(none, 0, v).astype(c.v.dtype), none, c.scale, c.width)
            raise Unsupported(f"window {func} of {c.kind}")

        return window

    def group_totals(self, base: Mapping[str, Col], last_seq: int) -> dict[str, Col]:
        """g_<group>.<total> of every group for the card's rows: sums of the key's stored (key, race) rows
        before the card (the last N rows for a rolling group); NULL for a key with none (or a NULL key)."""
        n = len(base["horse_id"].v)
        out: dict[str, Col] = {}
        values: dict[str, list[Any]] = {}
        for g in self.groups.values():
            for k in g.keys:
                if k not in values:
                    values[k] = _pys(base[k], n)
            listed = [g.codes.get(key, -1) for key in zip(*(values[k] for k in g.keys), strict=True)]
            codes = np.array(listed)
            if min(listed, default=0) >= 0:  # every key found (as below, without the masks)
                hi = np.searchsorted(g.ordered, codes * g.stride + last_seq, side="right")
                start = g.starts[codes]
                hi = np.maximum(hi, start)
                lo = start if g.rolling is None else np.maximum(start, hi - g.rolling)
            else:
                found = codes >= 0
                code = np.where(found, codes, 0)
                hi = np.searchsorted(g.ordered, code * g.stride + last_seq, side="right")
                start = g.starts[code]
                hi = np.where(found, np.maximum(hi, start), 0)
                lo = start if g.rolling is None else np.maximum(start, hi - g.rolling)
                lo = np.where(found, lo, 0)
            for total, col in zip(g.totals, g.prefix.totals(lo, hi), strict=True):
                out[total] = col
        return out

    def fitted_m(self, last_seq: int, n: int) -> dict[str, Col]:
        """The fitted m of the last stored race with changes before the card (row 0: the defaults)."""
        i = int(np.searchsorted(self.mom_seq, last_seq, side="right")) - 1
        if i < 0:
            raise Unsupported("no stored m row")
        return {
            k: _rep(Col(c.kind, c.v[i : i + 1], c.null[i : i + 1], c.scale, c.width), n) for k, c in self.mom.items()
        }


_GROUP_SUMS = ("n", "w", "p", "fs", "fn")
_GROUP_TOTALS = {"n_b": "n", "w_b": "w", "p_b": "p", "fs_b": "fs", "fn_b": "fn"}


def _none(x: Any) -> Any:
    if x is None or x is pd.NA or x is pd.NaT:
        return None
    if isinstance(x, float | np.floating) and math.isnan(x):
        return None
    return x


def _str(x: Any) -> str | None:
    """A VARCHAR of the card: strings only (the SQL path would cast other values its own way)."""
    if type(x) is str:
        return x
    x = _none(x)
    if x is None or isinstance(x, str):
        return x
    raise Unsupported(f"a non-string value {x!r} where a string is expected")


def _obj(values: Sequence[Any]) -> Col:
    v = np.empty(len(values), dtype=object)
    v[:] = list(values)
    return Col("str", v, np.array([x is None for x in values], bool))


def _int(x: Any) -> int | None:
    if type(x) is int:
        return x
    x = _none(x)
    if x is None:
        return None
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer | float | np.floating):
        raise Unsupported(f"a non-numeric value {x!r} where an integer is expected")
    if isinstance(x, float | np.floating) and not float(x).is_integer():
        raise Unsupported(f"a fractional value {x!r} where an integer is expected")
    return int(x)


def _ints(values: Sequence[Any]) -> Col:
    vals = [_int(x) for x in values]
    return Col("int", np.array([0 if x is None else x for x in vals], np.int64), np.array([x is None for x in vals]))


def _dbl(x: Any) -> float | None:
    if type(x) is float and x == x:  # not NaN
        return x
    x = _none(x)
    if x is None:
        return None
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer | float | np.floating):
        raise Unsupported(f"a non-numeric value {x!r} where a number is expected")
    return float(x)


def _dbls(values: Sequence[Any]) -> Col:
    vals = [_dbl(x) for x in values]
    return Col(
        "dbl", np.array([0.0 if x is None else x for x in vals], np.float64), np.array([x is None for x in vals])
    )


def _rep(c: Col, n: int) -> Col:
    return Col(c.kind, np.repeat(c.v, n), np.repeat(c.null, n), c.scale, c.width)


# -- the program: the bulk build's statements, compiled ----------------------------------------------------
Item = tuple[str, Fn]


def _items(select_list: Sequence[dict[str, Any]], skip: Sequence[str] = ()) -> list[Item]:
    """(output name, compiled expression) of each item of a select list (``*`` and ``skip`` left out);
    a subexpression the list repeats is computed once (``_Sharing``)."""
    token = _SHARING.set(_Sharing.of([n for n in select_list if n.get("alias") not in skip]))
    try:
        return _compile_items(select_list, skip)
    finally:
        _SHARING.reset(token)


def _compile_items(select_list: Sequence[dict[str, Any]], skip: Sequence[str]) -> list[Item]:
    out = []
    for node in select_list:
        if node["class"] == "STAR":
            continue
        alias = node.get("alias") or (node["column_names"][-1] if node["class"] == "COLUMN_REF" else "")
        if not alias:
            raise Unsupported("an unnamed select item")
        if alias in skip:
            continue
        out.append((alias, compile_expr(node)))
    return out


def _stage(ctx: Ctx, items: Sequence[Item]) -> dict[str, Col]:
    """One SELECT list over ``ctx.env``; names resolve to the input columns first, then to earlier items."""
    out: dict[str, Col] = {}
    ctx.local = out
    n = ctx.n
    shape = (n,)
    for alias, fn in items:
        col = fn(ctx)
        if col.kind != "list" and col.v.shape != shape:
            rows = np.broadcast_shapes(col.v.shape, col.null.shape, shape)
            col = Col(col.kind, np.broadcast_to(col.v, rows), np.broadcast_to(col.null, rows), col.scale, col.width)
        out.setdefault(alias, col)
    return out


def _merge(env: dict[str, Col], new: Mapping[str, Col]) -> dict[str, Col]:
    """``SELECT x.*, <new>``: a name already present keeps its first column (as a later reference reads it)."""
    out = dict(env)
    for k, v in new.items():
        out.setdefault(k, v)
    return out


@dataclass
class Program:
    """The bulk build's feature statements (build.py, _base.py), parsed by DuckDB and compiled."""

    race_items: list[Item]
    horse_items: list[Item]
    join_items: list[Item]
    list_items: list[Item]
    field_items: list[Item]
    composite_items: list[Item]
    output_items: list[Item]
    groups: dict[str, tuple[tuple[str, ...], int | None]]
    run_columns: tuple[str, ...]
    spec_dtypes: dict[str, str]

    @classmethod
    def compile(cls) -> Program:
        from racequant.features import build as b
        from racequant.features._base import base_steps
        from racequant.features.manifest import all_specs

        race_sql = dict(base_steps("races", "runners", "horses"))["_fx_race"]
        horse_sql = dict(b._target_steps())["_fx_h"]
        steps = dict(b._output_steps())
        out = parse_select(steps["_fx_out"])
        race_node = parse_select(race_sql)
        horse_node = parse_select(horse_sql)
        program = cls(
            race_items=_items(race_node["select_list"], skip=("race_seq", "section_distances_m")),
            horse_items=_items(horse_node["select_list"], skip=("race_id", "horse_id")),
            join_items=_items(parse_select(steps["_fx_j"])["select_list"]),
            list_items=_items(parse_select(steps["_fx_fl"])["select_list"], skip=("race_id",)),
            field_items=_items(parse_select(steps["_fx_f"])["select_list"]),
            composite_items=_items(out["from_table"]["subquery"]["node"]["select_list"]),
            output_items=_items(out["select_list"]),
            groups=b._groups(),
            run_columns=tuple(b._HORSE_INPUTS),
            spec_dtypes={s.name: s.dtype for s in all_specs()},
        )
        return program

    def race_columns(self, race: Mapping[str, Any]) -> dict[str, Col]:
        """The race's columns of _fx_race (one row), from the card's race record typed as _CARD_RACES types it."""
        d = race["date"]
        src = {
            "date": Col("date", np.array([(d - _EPOCH).days], np.int64), np.zeros(1, bool)),
            "race_no": _ints([race.get("race_no")]),
            "prize": _dbls([race.get("prize")]),
            "distance_m": _ints([race.get("distance_m")]),
        }
        for c in ("race_id", "track", "country", "off_time", "surface", "going", "race_class", "rating_band"):
            src[c] = _obj([_str(race.get(c))])
        src["course_config"] = _obj([_str(race.get("course_config"))])
        return {**src, **_stage(Ctx(1, src, None), self.race_items)}

    def run(self, engine: CardEngine, base: dict[str, Col], last_seq: int) -> pd.DataFrame:
        n = len(base["horse_id"].v)
        horse = _stage(Ctx(n, base, engine.horse_window(base, last_seq)), self.horse_items)
        env = _merge(base, horse)
        env.update(engine.group_totals(base, last_seq))
        env.update(engine.fitted_m(last_seq, n))
        env = _merge(env, _stage(Ctx(n, env, None), self.join_items))
        env = _merge(env, _stage(Ctx(n, env, None), self.list_items))
        env = _merge(env, _stage(Ctx(n, env, None), self.field_items))
        env = _merge(env, _stage(Ctx(n, env, None), self.composite_items))
        out = _stage(Ctx(n, env, None), self.output_items)
        return _frame(out)


def _frame(cols: Mapping[str, Col]) -> pd.DataFrame:
    """The output columns as the SQL path's frame gives them (DOUBLE -> float64 with NaN, VARCHAR -> str,
    DATE -> datetime64[us]), assembled from its blocks: the DOUBLE columns as one 2D block (a DataFrame built
    a column at a time costs ~5 ms, one inserted at a time ~1.5 ms, from blocks ~0.3 ms)."""
    names = list(cols)
    n = len(next(iter(cols.values())).v)
    doubles = [i for i, k in enumerate(names) if cols[k].kind in ("dbl", "null")]
    block = np.empty((len(doubles), n))
    if doubles:  # every value, then NaN where NULL: one copy and one masked store for the whole block
        block[...] = [cols[names[i]].v for i in doubles]
        block[np.array([cols[names[i]].null for i in doubles], bool)] = np.nan
    blocks: list[tuple[Any, np.ndarray]] = [(block, np.array(doubles, dtype=np.intp))]
    for i, name in enumerate(names):
        c = cols[name]
        if c.kind in ("dbl", "null"):
            continue
        if c.kind == "str":
            values: Any = _strings(np.where(c.null, None, c.v).astype(object))
        elif c.kind == "date":
            values = c.v.astype("datetime64[D]").astype("datetime64[us]")[None, :]
        elif c.kind == "int" and not c.null.any():
            values = c.v.astype(np.int64)[None, :]
        else:
            raise Unsupported(f"output column {name} of {c.kind}")
        blocks.append((values, np.array([i], dtype=np.intp)))
    # a shallow copy of the index built once: the same values, and a frame's own (its name can be set in place)
    columns = _columns(tuple(names)).copy()
    return create_dataframe_from_blocks(blocks, index=pd.RangeIndex(n), columns=columns)


@functools.lru_cache(maxsize=8)
def _columns(names: tuple[str, ...]) -> pd.Index:
    """The output's column index, built once (building one of 150 names costs ~80 us, a copy ~3 us)."""
    return pd.Index(names)


_STR = pd.api.types.pandas_dtype("str")


def _strings(values: np.ndarray) -> Any:
    """``pd.array(values, dtype="str")`` of an object array of str and None (the same array, without its checks
    of every value's type: ~5 us instead of ~30)."""
    if not (isinstance(_STR, pd.StringDtype) and _STR.storage == "pyarrow"):
        return pd.array(values, dtype="str")
    import pyarrow as pa

    return pd.arrays.ArrowStringArray(pa.array(values, type=pa.large_string(), from_pandas=True), dtype=_STR)


# -- serving: one engine per connection and stored state ---------------------------------------------------
@dataclass(frozen=True)
class StateHooks:
    """How the engine checks and refreshes the stored state (build.py's functions; no import cycle)."""

    fingerprint: Callable[[duckdb.DuckDBPyConnection], str]
    refresh: Callable[[duckdb.DuckDBPyConnection], bool]


_LOCK = threading.Lock()
_MAX_ENGINES = 4
# (database file, or the connection of an in-memory database) -> (the connection if in-memory, its engine)
_ENGINES: dict[tuple[str, Any], tuple[weakref.ref[duckdb.DuckDBPyConnection] | None, CardEngine]] = {}
# connection -> (the connection, its database file or None, read-only)
_DATABASES: dict[int, tuple[weakref.ref[duckdb.DuckDBPyConnection], str | None, bool]] = {}
# read-only connection -> the engine it was checked against (the file cannot change while it is open)
_CHECKED: dict[int, tuple[weakref.ref[duckdb.DuckDBPyConnection], CardEngine]] = {}


@functools.cache
def _compiled() -> Program | Unsupported:
    """The compiled program, once per process; if the feature SQL uses something the compiler does not know,
    the reason (then every card takes the SQL path, which is said once, loudly)."""
    try:
        return Program.compile()
    except Unsupported as exc:
        logger.warning("The feature SQL does not compile for race cards (%s): every card takes the SQL path", exc)
        return exc


def _program() -> Program:
    program = _compiled()
    if isinstance(program, Unsupported):
        raise program
    return program


def _database(conn: duckdb.DuckDBPyConnection) -> tuple[tuple[str, Any], bool]:
    """The database a connection reads, and whether read-only: its file (an engine serves every connection to
    it, as the serving API's per-request read-only connections), or the connection for an in-memory one."""
    known = _DATABASES.get(id(conn))
    if known is None or known[0]() is not conn:
        row = conn.execute(
            "SELECT path, readonly FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
        path = str(Path(row[0]).resolve()) if row and row[0] else None
        for key in [k for k, (ref, *_rest) in _DATABASES.items() if ref() is None]:
            del _DATABASES[key]
        known = _DATABASES[id(conn)] = (weakref.ref(conn), path, bool(row and row[1]))
    key = ("file", known[1]) if known[1] is not None else ("memory", id(conn))
    return key, known[2] and known[1] is not None


def engine_for(conn: duckdb.DuckDBPyConnection, hooks: StateHooks) -> CardEngine:
    """The engine of ``conn``'s current stored state: kept while the warehouse fingerprint is unchanged
    (one cheap query a card), else the state is refreshed (``refresh_card_state``) and loaded again.

    The fingerprint (row counts, last import, feature version) decides, as it decides when the stored state
    is rebuilt: the state is a function of what it summarises. A read-only connection to a file is checked
    once: while it is open DuckDB lets no process write the file (the serving API holds one).
    """
    key, read_only = _database(conn)
    checked = _CHECKED.get(id(conn)) if read_only else None
    if checked is not None and checked[0]() is conn:
        entry = _ENGINES.get(key)
        if entry is not None and entry[1] is checked[1]:
            return checked[1]
    fingerprint = hooks.fingerprint(conn)

    def current() -> CardEngine | None:
        entry = _ENGINES.get(key)
        if entry is None or entry[1].fingerprint != fingerprint or (entry[0] is not None and entry[0]() is not conn):
            return None
        return entry[1]

    engine = current()
    if engine is None:
        with _LOCK:
            engine = current()
            if engine is None:
                started = time.perf_counter()
                hooks.refresh(conn)
                engine = CardEngine.load(conn, fingerprint, _program())
                for k in [k for k, (ref, _e) in _ENGINES.items() if k == key or (ref is not None and ref() is None)]:
                    del _ENGINES[k]
                while len(_ENGINES) >= _MAX_ENGINES:
                    del _ENGINES[next(iter(_ENGINES))]
                _ENGINES[key] = (weakref.ref(conn) if key[0] == "memory" else None, engine)
                logger.info("Loaded the race-card engine in %.2f s", time.perf_counter() - started)
    if read_only:
        for k in [k for k, (ref, _e) in _CHECKED.items() if ref() is None]:
            del _CHECKED[k]
        _CHECKED[id(conn)] = (weakref.ref(conn), engine)
    return engine


def card_features(
    conn: duckdb.DuckDBPyConnection,
    race: Mapping[str, Any],
    runners: Sequence[Mapping[str, Any]],
    horses: Sequence[Mapping[str, Any]],
    cutoff: date,
    hooks: StateHooks,
) -> pd.DataFrame | None:
    """The card's features by the compiled engine, or None where the SQL card path must run: the card's own
    race stored with an earlier start (a hole in its history), or anything the engine does not handle."""
    try:
        engine = engine_for(conn, hooks)
        last_seq, own_seq = engine.history(race, cutoff)
        if own_seq is not None and own_seq < last_seq:
            return None
        return engine.features(race, runners, horses, last_seq)
    except Unsupported as exc:
        logger.info("Race card %s takes the SQL path: %s", race.get("race_id"), exc)
        return None
