"""Rows through the operations: replaying shape operations on row ids, broadcasting operands.

Every value computed from the input carries ``rid``, the row of each of its elements. A
shape operation's rows are found by running the same operation on the row ids (``replay``);
an elementwise operation between a signal and a tensor of other rows (a position table
broadcast over the examples, a bias) reads the operand's moments in the output's rows
(``lifted_stats``) and sends its gradient back summed over the broadcast (``unlift``).
"""



from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwatch.theory.rules import rid_of, stats_of
from gradwatch.theory.trace import schema_info
from gradwatch.theory.values import (
    Const,
    Context,
    Data,
    Grad,
    Space,
    Stats,
    Table,
    Value,
    data_stats,
    table_rows,
)


def replay(func: Any, args: tuple, kwargs: dict, which: Any) -> Any:
    """Run a shape operation on row-id tensors: ``which(value)`` gives a tensor's ids."""

    def sub(a):
        if isinstance(a, Value):
            r = which(a)
            return r.contiguous() if isinstance(r, torch.Tensor) else r
        if isinstance(a, list | tuple):
            return type(a)(sub(x) for x in a)
        return a

    name = schema_info(func)[0]
    if name in ("view", "_unsafe_view", "_reshape_alias"):
        func = torch.ops.aten.reshape.default
        args = args[:2]
    skip = ("dtype", "device", "layout", "memory_format", "pin_memory", "non_blocking")
    return func(*sub(args), **{k: sub(v) for k, v in kwargs.items() if k not in skip})



# ------------------------------------------------------------------------ row maps
def row_map(space: Space, out_rid: torch.Tensor, op_rid: torch.Tensor, table: bool) -> np.ndarray:
    """For each position t of the output, the operand row it reads (-1: none).

    Raises:
        ValueError: one output position reads several operand rows, or another example.
    """
    op_rid = op_rid.expand(out_rid.shape) if op_rid.shape != out_rid.shape else op_rid
    pairs = torch.unique(torch.stack([out_rid.reshape(-1), op_rid.reshape(-1)]), dim=1).numpy()
    m = np.full(space.T, -1)
    for r_out, r_op in pairs.T:
        t = space.pos[r_out]
        target = r_op if table else space.pos[r_op]
        if not table and space.ex[r_op] != space.ex[r_out]:
            raise ValueError("an elementwise operation pairs rows of different examples")
        if m[t] not in (-1, target):
            raise ValueError("an elementwise operation pairs one position with several rows")
        m[t] = target
    return m


def lifted_stats(ctx: Context, v: Value, out_rid: torch.Tensor) -> Stats:
    """Moments of an operand in the rows of the output (broadcast included)."""
    space = ctx.space
    rid = rid_of(v)
    if isinstance(v, Table | Const) or rid is None:
        val = torch.as_tensor(
            v.value if isinstance(v, Table | Const | Data) else 0.0, dtype=torch.float64
        )
        return data_stats(space, val.expand(out_rid.shape), out_rid)
    st = stats_of(ctx, v)
    if torch.equal(rid.expand(out_rid.shape) if rid.shape != out_rid.shape else rid, out_rid):
        return st
    idx = row_map(space, out_rid, rid, table=False)
    ok = idx >= 0
    sel = np.flatnonzero(ok)
    A = np.zeros_like(st.A)
    A[np.ix_(sel, sel)] = st.A[np.ix_(idx[sel], idx[sel])]
    C = None
    if st.C is not None:
        C = np.zeros_like(st.C)
        C[np.ix_(sel, sel)] = st.C[np.ix_(idx[sel], idx[sel])]
    mu = np.zeros_like(st.mu)
    mu[sel] = st.mu[idx[sel]]
    return Stats(A=A, C=C, mu=mu, present=ok & st.present[np.maximum(idx, 0)])


def unlift(ctx: Context, v: Value, out_rid: torch.Tensor, g: Grad) -> Grad:
    """The gradient of an operand from the gradient in the output's rows (sums broadcasts)."""
    space = ctx.space
    rid = rid_of(v)
    if isinstance(v, Table):
        own = table_rows(v.value) if rid is None else rid
        own = own.expand(out_rid.shape) if own.shape != out_rid.shape else own
        pairs = torch.unique(torch.stack([out_rid.reshape(-1), own.reshape(-1)]), dim=1).numpy()
        r_main, r_tab = pairs
        n_tab = int(own.max()) + 1 if own.numel() else 1
        # the main rows' gradient covariance: GA within an example, GC across
        t = space.pos[r_main]
        same = space.ex[r_main][:, None] == space.ex[r_main][None, :]
        full = np.where(
            same, g.GA[np.ix_(t, t)], (g.GC if g.GC is not None else 0 * g.GA)[np.ix_(t, t)]
        )
        ind = np.zeros((n_tab, len(r_main)))
        ind[r_tab, np.arange(len(r_main))] = 1.0
        return Grad(ind @ full @ ind.T)
    if rid is None:
        return Grad(np.zeros_like(g.GA))
    if torch.equal(rid.expand(out_rid.shape) if rid.shape != out_rid.shape else rid, out_rid):
        return g
    idx = row_map(space, out_rid, rid, table=False)
    sel = np.flatnonzero(idx >= 0)
    ga = np.zeros_like(g.GA)
    np.add.at(ga, (idx[sel][:, None], idx[sel][None, :]), g.GA[np.ix_(sel, sel)])
    gc = None
    if g.GC is not None:
        gc = np.zeros_like(g.GC)
        np.add.at(gc, (idx[sel][:, None], idx[sel][None, :]), g.GC[np.ix_(sel, sel)])
    return Grad(ga, gc)


def _broadcast_rid(rids: list, out: torch.Tensor) -> torch.Tensor:
    r = rids[0]
    return r.expand(out.shape) if tuple(r.shape) != tuple(out.shape) else r


