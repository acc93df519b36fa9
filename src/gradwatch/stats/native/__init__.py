"""gradwatch's compiled hot path: C++ kernels built once per machine, cached, optional.

On CPU, the cost that remains in the Monitor's hot path is Python's per call (a hook per layer,
a kernel launch per small tensor) and passes over memory that one fused loop could share. The
kernels in ``kernels.cpp`` take that below Python:

- ``sumsq_max``: per-tensor L2 norms (and max |x|) of a list of tensors in one parallel loop,
  and the total sum of squares (so that a finite step is known without another pass);
- ``snapshot_take`` / ``update_norms``: the weights copied into one flat buffer before the
  optimizer step, then ``||w_before - w_after||`` and ``||w_after||`` in one read of each;
- ``act_stats``: sum, L2 norm, saturated count and dead units of many activations at once;
  ``ActPlan``: the same into their rows of a buffer, when a step's activations repeat the
  last step's (rows, sizes, none changed in place), with no Python per activation;
- ``hook_sumsq``: a C++ gradient hook that adds ``||d loss / d output||^2`` into a slot: no
  Python runs in the backward pass for the back-propagated norm;
- ``LayerOutputHook``: the listener of each layer's output that hangs that hook, called by
  the per-layer forward hook with no Python frame of its own.

They are built with ``torch.utils.cpp_extension`` from this package's own source, by the
machine's C++ compiler (and ninja), into ``$GRADWATCH_CACHE`` (default ``~/.cache/gradwatch``),
keyed by the source, torch's and Python's versions, once per machine and only when asked:
``python -m gradwatch.stats.native`` (or :func:`build`). Importing gradwatch or watching a
model never starts a compiler; each Monitor loads the cached build if there is one
(:func:`refresh`). Without a build, without a compiler, or with ``GRADWATCH_NATIVE=0``,
everything runs on the Python path, which computes the same statistics (to float32 rounding:
the kernels add in another order). The kernels take dense, contiguous, real floating CPU
tensors; anything else (accelerators included) stays on the Python path.

The float32 loops run in explicit vectors (``simd.h``): AVX-512F, or AVX2 with FMA, compiled
beside the portable loops and chosen when the module loads, from what the CPU has (``isa()``
says which; ``set_isa(k)`` caps it, for tests). They read the gradients faster than
``torch._foreach_norm`` does on the same machine (``benchmarks/kernels.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("kernels.cpp")
#: The headers it includes: what the reductions share, the activation statistics, and the
#: float32 loops in explicit vectors (chosen at load time).
HEADERS = tuple(Path(__file__).with_name(n) for n in ("common.h", "activations.h", "simd.h"))
#: Environment variable: "0" keeps gradwatch on its Python path (no build, no load).
ENV = "GRADWATCH_NATIVE"
#: Environment variable: the cache directory (default ``~/.cache/gradwatch``).
CACHE_ENV = "GRADWATCH_CACHE"

#: Compiler flags: portable (no -march=native: a cache on a shared home directory may serve
#: several kinds of CPU); ``-fopenmp-simd`` lets the lane loops vectorise without -ffast-math.
CFLAGS = ["/O2"] if os.name == "nt" else ["-O3", "-fopenmp-simd"]
_state: dict[str, Any] = {"module": None, "checked": False, "dir": None, "enabled": None}


def enabled() -> bool:
    """Whether the compiled path may be used (``GRADWATCH_NATIVE`` is not "0").

    Read when a Monitor is made (:func:`refresh`), not at every step.
    """
    on = _state["enabled"]
    if on is None:
        on = _state["enabled"] = (
            os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off"))
    return on


def refresh() -> Any:
    """Read ``GRADWATCH_NATIVE`` again, look for a build again, then :func:`get`.

    Each Monitor calls it once, when it is made: a build made since (by another process)
    is picked up by the next Monitor.
    """
    _state["enabled"] = None
    _state["checked"] = False
    return get()


def key() -> str:
    """What the build depends on: the source, torch, Python and the machine's architecture."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        h.update(header.read_bytes())
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|{platform.machine()}|{CFLAGS}".encode())
    h.update(str(torch._C._GLIBCXX_USE_CXX11_ABI).encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """The directory this machine's build lives in."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "gradwatch")
    d = Path(root) / "native" / key()
    _state["dir"] = d
    return d


def _name() -> str:
    d = _state["dir"] or build_dir()
    return f"gradwatch_native_{d.name}"


def compiler() -> str | None:
    """The C++ compiler torch's extension builder would call, if one is on the PATH."""
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or (shutil.which("g++") if "CXX" not in os.environ else None)


def _built(d: Path) -> Path | None:
    so = d / f"{_name()}.so"
    return so if (d / "READY").exists() and so.exists() else None


def _import(so: Path) -> Any:
    spec = importlib.util.spec_from_file_location(_name(), so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get() -> Any:
    """The compiled module, or None (Python path): the cached build, loaded once.

    Looks on disk once per :func:`refresh` (not at every step); never builds.
    """
    if not (_state["enabled"] if _state["enabled"] is not None else enabled()):
        return None
    mod = _state["module"]
    if mod is not None or _state["checked"]:
        return mod
    _state["checked"] = True
    d = build_dir()
    so = _built(d)
    if so is not None:
        try:
            mod = _state["module"] = _import(so)
        except Exception:  # noqa: BLE001 - a broken cache: rebuilt by the next build()
            (d / "READY").unlink(missing_ok=True)
    return mod


def build() -> Any:
    """Build (or load) the compiled module in this process; None if it cannot be built.

    A compile takes about a minute of one core; another process building the same module
    is waited for (torch's extension builder locks the build directory).
    """
    _state["enabled"] = None  # read GRADWATCH_NATIVE again
    if not enabled():
        return None
    _state["checked"] = False
    mod = get()
    if mod is not None or compiler() is None:
        return mod
    d = build_dir()
    d.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension

    try:
        mod = cpp_extension.load(
            name=_name(), sources=[str(SOURCE)], build_directory=str(d),
            extra_cflags=CFLAGS, verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed compile
        (d / "build.log").write_text(f"{exc!r}\n")
        return None
    (d / "READY").write_text(_name())
    _state["module"] = mod
    return mod


def reset() -> None:
    """Forget the loaded module and what was read from the environment (for tests)."""
    _state.update(module=None, checked=False, dir=None, enabled=None)


def main() -> int:
    """``python -m gradwatch.stats.native``: build the module, say where it is."""
    if compiler() is None:
        print("gradwatch native kernels: no C++ compiler found; the Python path is used")
        return 1
    mod = build()
    if mod is None:
        print(f"gradwatch native kernels: the build failed; see {build_dir()}")
        return 1
    print(f"gradwatch native kernels: {build_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
