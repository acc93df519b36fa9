"""Live sinks the Monitor hands to the writer (the live TensorBoard export), supplied from above.

The watch layer sits below ``report``, so it cannot import the TensorBoard exporter. The
package root registers a factory here (:func:`set_live_sink_factory`); ``gw.watch(...,
tensorboard=LOGDIR)`` asks it for a sink, and the writer calls the sink from its own thread
with every decoded flush: ``sink(steps, layer names, stat names, values)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradwatch import handoff
from gradwatch.errors import GradwatchValueError


def set_live_sink_factory(factory: Callable[[str | Path], Any] | None) -> None:
    """Register (or, with None, remove) the factory ``log_dir -> sink`` of live exports."""
    handoff.set_live_sink_factory(factory)


def make_live_sink(log_dir: str | Path) -> Any:
    """A live sink writing to ``log_dir``, from the registered factory.

    Raises:
        GradwatchValueError: no factory is registered (``import gradwatch`` registers the
            TensorBoard one).
    """
    factory = handoff.live_sink_factory()
    if factory is None:
        raise GradwatchValueError(
            "tensorboard= needs the live TensorBoard export, which `import gradwatch` "
            "registers; import gradwatch (not only gradwatch.monitor) before watching"
        )
    return factory(log_dir)
