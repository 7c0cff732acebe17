"""One forward pass through nnsight that reads and edits layer values, optionally stopping early.

nnsight 0.8 installs an inert controller as each submodule's ``forward`` when the model is
wrapped (``nnsight.NNsight(module)``); no torch hooks are registered. Inside
``with envoy.trace(x):`` the body runs in a worker greenlet that is handed each requested
location (``{path}.input`` / ``{path}.output``) as the forward reaches it; assigning to
``envoy.output`` swaps the value; ``tracer.stop()`` unwinds the forward right after the
current location. When the block ends, normally or by an exception, nnsight's
``Interleaver.cancel`` drops every worker, so nothing outlives the call.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn

if TYPE_CHECKING:  # nnsight is imported when a VisionModel is built, not with this module
    from nnsight import Envoy

Where = Literal["input", "output"]


@dataclass
class Step:
    """What to do at one location: ``edit`` maps the served value to its replacement and
    ``read`` maps the (edited) value to what is kept under ``key``. Steps must be given in the
    order the forward reaches their locations."""

    envoy: Envoy
    where: Where
    key: str
    edit: Callable[[Any], Any] | None = None
    read: Callable[[Any], Any] | None = None


def envoy_at(root: Envoy, name: str) -> Envoy:
    """The envoy of submodule ``name`` (a ``named_modules`` name) under ``root``."""
    envoy = root
    for part in name.split("."):
        child = envoy._child_map.get(part)
        envoy = child if child is not None else getattr(envoy, part)
    return envoy


#: the collector generation that frees an early stop's cycles (see `_collect_stop_garbage`)
GC_GENERATION = 1


def run_traced(
    root: Envoy,
    fn: Callable[..., Any],
    inputs: Tensor,
    steps: Sequence[Step],
    stop: bool,
) -> tuple[Any, dict[str, Any]]:
    """Run ``fn(inputs)`` traced by nnsight, applying ``steps`` in order.

    Returns ``(result, reads)``: ``result`` is what ``fn`` returned (``None`` when ``stop`` cut
    the forward after the last step) and ``reads`` maps each step's ``key`` to its ``read``.
    """
    result, reads = _run(root, fn, inputs, steps, stop)
    if stop and steps:
        _collect_stop_garbage()  # after _run's frame (and the tracer it held) is gone
    return result, reads


def _run(
    root: Envoy, fn: Callable[..., Any], inputs: Tensor, steps: Sequence[Step], stop: bool
) -> tuple[Any, dict[str, Any]]:
    reads: dict[str, Any] = {}
    with root.trace(inputs, fn=fn) as tracer:
        for step in steps:
            value = step.envoy.input if step.where == "input" else step.envoy.output
            if step.edit is not None:
                value = step.edit(value)
                if step.where == "input":
                    step.envoy.input = value
                else:
                    step.envoy.output = value
            if step.read is not None:
                reads[step.key] = step.read(value)
        if stop:
            tracer.stop()
        reads["__result__"] = tracer.result
    return reads.pop("__result__", None), reads


def _collect_stop_garbage() -> None:
    """Free what an early stop leaves in reference cycles.

    nnsight stops a forward by raising an exception through the model; the exception's
    traceback holds the model's frames (with the batch's activations) in a reference cycle
    that only the cyclic garbage collector frees. Left to the automatic collector, a
    streaming run holds hundreds of MB of dead activations between full collections (its
    peak memory then grows with the run). The cycle is young, so collecting the young
    generations right away frees it at little cost.
    """
    gc.collect(GC_GENERATION)


def trace_state_clean(root: Envoy) -> bool:
    """Whether nnsight holds no workers and is not interleaving (nothing left from a trace)."""
    interleaver = root.interleaver
    return not interleaver.interleaving and not interleaver.mediators


def torch_hooks_clean(module: nn.Module) -> bool:
    """Whether no forward/backward hooks are registered on any submodule of ``module``."""
    for sub in module.modules():
        if sub._forward_hooks or sub._forward_pre_hooks or sub._backward_hooks:
            return False
        if getattr(sub, "_backward_pre_hooks", None):
            return False
    return True
