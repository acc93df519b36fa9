"""How a watched model is sharded: DTensor placements, the layout's name, what a rank counts.

Under FSDP2 (``fully_shard``), HSDP (FSDP2 on a 2-D mesh, replicate x shard) and tensor
parallelism (``parallelize_module``) parameters and gradients are DTensors. For each tensor a
rank holds a shard (``Shard``), a copy (``Replicate``) or an addend (``Partial``) per mesh
dimension. A statistic that adds up over shards is exact when every rank adds its local part
and the copies along ``Replicate`` dimensions are counted once: :func:`counts_here` says
whether this rank's part is the one counted. Plain tensors beside DTensors (modules that
tensor parallelism leaves alone) are copies on every rank: rank 0 counts them.

Layouts that cannot be made exact are refused with an error that names them
(:func:`check_model`): FSDP1 (``FullyShardedDataParallel``), and DTensor meshes that do not
hold ranks outside the Monitor's process group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradwatch.errors import GradwatchValueError

try:  # torch.distributed may be built without these packages
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - every torch this project supports has them
    DTensor = Replicate = FSDPModule = FullyShardedDataParallel = None  # type: ignore


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank's local tensor of a DTensor; a plain tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def local_part(out: Any) -> torch.Tensor | None:
    """A DTensor activation's local tensor (None: not a DTensor, or a ``Partial`` addend).

    A slice adds up over the ranks at the flush; a copy is counted once per rank, which
    leaves means, standard deviations and fractions unchanged. A ``Partial`` output is not
    the activation on any rank, so it is not read.
    """
    if not is_dtensor(out) or has_partial(out):
        return None
    with torch.no_grad():  # a view of the local tensor, without an autograd node
        return out.to_local()


def has_partial(t: Any) -> bool:
    """Whether a DTensor has a ``Partial`` placement (its value is the sum over ranks)."""
    return is_dtensor(t) and any(p.is_partial() for p in t.placements)


def mesh_ranks(mesh: Any) -> list[int]:
    """The global ranks of a device mesh, sorted."""
    return sorted(mesh.mesh.flatten().tolist())


def counts_here(t: Any, rank: int, root: int) -> bool:
    """Whether this rank's local part of ``t`` is counted in sums over the ranks.

    ``rank`` is this process's global rank, ``root`` the global rank of the Monitor group's
    rank 0. A DTensor's part is counted on the ranks at coordinate 0 of each ``Replicate``
    mesh dimension. A DTensor on a mesh that leaves out some of the Monitor's ranks (the
    data-parallel sub-mesh of a 2-D layout holds the modules that tensor parallelism leaves
    alone) is a copy on each such sub-mesh: the sub-mesh that holds ``root`` counts it. A
    plain tensor (a copy on every rank) is counted by ``root``.
    """
    if not is_dtensor(t):
        return rank == root
    mesh = t.device_mesh
    coord = mesh.get_coordinate()
    if coord is None or root not in mesh_ranks(mesh):
        return False
    return all(c == 0 for c, p in zip(coord, t.placements, strict=True) if p.is_replicate())


def without_partial_and_shard(t: Any) -> Any:
    """A gradient both ``Partial`` and ``Shard`` made ``Replicate`` on its ``Partial`` dims.

    One extra collective for that tensor; layouts seldom make it. Others are returned as they
    are.
    """
    if not is_dtensor(t):
        return t
    if any(p.is_partial() for p in t.placements) and any(p.is_shard() for p in t.placements):
        placements = [Replicate() if p.is_partial() else p for p in t.placements]
        return t.redistribute(t.device_mesh, placements)
    return t


def replicated_partial(t: Any) -> Any:
    """``t`` with its ``Partial`` placements made ``Replicate`` (one collective).

    Other tensors are returned as they are.
    """
    if not has_partial(t):
        return t
    placements = [Replicate() if p.is_partial() else p for p in t.placements]
    return t.redistribute(t.device_mesh, placements)


def layout_name(model: nn.Module, params: list[torch.Tensor]) -> str | None:
    """"FSDP2", "HSDP", "tensor parallel", "2-D (tensor parallel + FSDP2)" or None (unsharded)."""
    if not any(is_dtensor(p) for p in params):
        return None
    tp = any(getattr(m, "_distribute_module_applied", False) for m in model.modules())
    fsdp = any(isinstance(m, FSDPModule) for m in model.modules())
    if tp and fsdp:
        return "2-D (tensor parallel + FSDP2)"
    if tp:
        return "tensor parallel"
    hsdp = any(is_dtensor(p) and any(pl.is_replicate() for pl in p.placements) for p in params)
    return "HSDP" if hsdp else "FSDP2"


def check_model(model: nn.Module, params: list[torch.Tensor], group: Any,
                distributed: bool) -> str | None:
    """The sharded layout's name (None: not sharded); raises for layouts it cannot make exact.

    Raises:
        GradwatchValueError: FSDP1, or a DTensor mesh that does not span the Monitor's ranks.
    """
    for m in model.modules():
        if FullyShardedDataParallel is not None and isinstance(m, FullyShardedDataParallel):
            raise GradwatchValueError(
                "model is wrapped in FSDP1 (torch.distributed.fsdp.FullyShardedDataParallel), "
                "whose parameters gradwatch cannot read exactly; use FSDP2 "
                "(torch.distributed.fsdp.fully_shard) and call gw.watch(model) after "
                "fully_shard (see docs/howto/fsdp.md)"
            )
    name = layout_name(model, params)
    if name is None:
        return None
    if not distributed:
        world, ranks = 1, [dist.get_rank() if dist.is_initialized() else 0]
    else:
        world = dist.get_world_size(group)
        ranks = [dist.get_global_rank(group, i) if group is not None else i
                 for i in range(world)]
    meshes = {id(p.device_mesh): p.device_mesh for p in params if is_dtensor(p)}
    for mesh in meshes.values():
        inside = mesh_ranks(mesh)
        if not set(inside) <= set(ranks):
            raise GradwatchValueError(
                f"model is sharded ({name}) on a device mesh over ranks {inside}, but the "
                f"Monitor combines ranks {sorted(ranks)}: the Monitor's process group must "
                "hold every rank of the model's meshes; pass process_group= a group that "
                "does (the default group does)"
            )
    return name


# -- tensor parallelism: which part of a tensor of the batch (and of its gradient) a rank holds
@dataclass(frozen=True)
class Share:
    """How the ranks of a tensor-parallel mesh hold a tensor of the batch and its gradient.

    Per mesh dimension: its size, this rank's coordinate and ``("shard", tensor dim)`` (each
    rank holds a slice along ``tensor dim``) or ``("copy", -1)`` (each rank holds it whole:
    ``Replicate``, and ``Partial``, whose gradient is a copy on every rank).
    """

    sizes: tuple[int, ...]
    coord: tuple[int, ...]
    kinds: tuple[tuple[str, int], ...]

    @property
    def ranks(self) -> int:
        """How many ranks the mesh holds."""
        return math.prod(self.sizes)

    def weight(self) -> float:
        """The factor on this rank's sum of squares: the mesh's sum counts each entry once."""
        w = 1.0
        for size, (kind, _) in zip(self.sizes, self.kinds, strict=True):
            if kind == "copy":
                w /= size
        return w

    def ends(self, time_dim: int, ndim: int) -> tuple[float, float, int]:
        """(factor on the first step's square, on the last step's, sequence length factor).

        Sharded along the time dimension, the first step lies at coordinate 0 and the last at
        the mesh's last coordinate; the sequence is the shards' lengths added.
        """
        first = last = 1.0
        grow = 1
        for size, c, (kind, dim) in zip(self.sizes, self.coord, self.kinds, strict=True):
            if kind == "copy":
                first /= size
                last /= size
            elif dim % ndim == time_dim:
                first *= float(c == 0)
                last *= float(c == size - 1)
                grow *= size
        return first, last, grow


def share_of(mesh: Any, placements: Any) -> Share | None:
    """The :class:`Share` of a tensor with ``placements`` on ``mesh`` (None: not on this rank)."""
    coord = mesh.get_coordinate()
    if coord is None:
        return None
    kinds = tuple(("shard", int(p.dim)) if p.is_shard() else ("copy", -1) for p in placements)
    return Share(tuple(int(s) for s in mesh.shape), tuple(int(c) for c in coord), kinds)


def _boundary(node: Any) -> Share | None:
    # to_local's node: the gradient of the local tensor has the placements it declares
    spec = getattr(node, "dtensor_spec", None)
    if spec is None:
        return None
    return share_of(spec.mesh, getattr(node, "grad_placements", None) or spec.placements)


def output_share(t: torch.Tensor) -> tuple[Share | None, set[int]]:
    """How the ranks hold ``t`` (a layer's output) and the sizes of the meshes met on the way.

    A DTensor says it. A plain tensor is walked back through the autograd graph to the
    ``to_local`` calls it was computed from (tensor parallelism's styles make them; ops on
    local tensors in between keep the layout): their placements. None: no DTensor made it
    (a copy on every rank of the group). Raises ``ValueError`` when the paths disagree.
    """
    if is_dtensor(t):
        share = share_of(t.device_mesh, t.placements)
        return share, {share.ranks} if share is not None else set()
    found: set[Share] = set()
    stack, seen = [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        share = _boundary(node)
        if share is not None:
            found.add(share)
            continue
        if hasattr(node, "variable"):  # a leaf's AccumulateGrad
            continue
        stack.extend(f for f, _ in node.next_functions)
    sizes = {s.ranks for s in found}
    if not found:
        return None, sizes
    if len(found) > 1 and any(k == "shard" for s in found for k, _ in s.kinds):
        raise ValueError(f"the tensor is computed from differently sharded tensors ({found})")
    return next(iter(found)), sizes


def input_share(root: Any, leaf: torch.Tensor) -> tuple[Share | None, set[int]]:
    """How the ranks hold ``leaf`` (the model's input), found from a later node ``root``.

    The ``from_local`` call nearest the leaf on a path from ``root`` says its placements (a
    sequence-parallel input is sharded on its sequence dimension); None: no DTensor is made
    from it (a copy on every rank of the group). Also the sizes of the meshes met.
    """
    stack: list[tuple[Any, Share | None]] = [(root, None)]
    seen: set[int] = set()
    sizes: set[int] = set()
    while stack:
        node, state = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None:
            if var is leaf:
                return state, sizes
            continue
        out = _boundary(node)
        if out is not None:
            sizes.add(out.ranks)
            state = None
        elif hasattr(node, "forward_input_placements"):  # from_local's node
            state = share_of(node.forward_input_device_mesh,
                             getattr(node, "grad_placements", None)
                             or node.forward_input_placements)
            if state is not None:
                sizes.add(state.ranks)
        stack.extend((f, state) for f, _ in node.next_functions)
    return None, sizes


def is_tensor_parallel(layout: str | None) -> bool:
    """Whether a layout's name (:func:`layout_name`) includes tensor parallelism."""
    return layout is not None and "tensor parallel" in layout
