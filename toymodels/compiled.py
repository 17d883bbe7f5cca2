"""Compiling the trainer's functions with TorchInductor, callable from several threads at once.

The trainer calls its step once per block of instances per step — thousands of calls a second
for small blocks — and on a CPU it runs blocks on several threads at once (toymodels/sizing.py).
``torch.compile`` suits neither: it guards every call in Python (about 50 µs for the step's dozen
inputs) and its kernels hold the GIL. :func:`compile_function` traces the function once
(``make_fx`` on fake tensors) and compiles the graph with ``torch._inductor.compile`` in C++
wrapper mode: the whole graph is one C++ call that releases the GIL (on a GPU, where a pack is
one block, it keeps Inductor's Python wrapper). The price: the compiled
function is specialised to the example inputs' shapes, dtypes and devices (the caller passes
only inputs like them — the trainer does) and to the number of threads torch used when it was
compiled.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any, Callable, Optional

import torch
import torch.utils._pytree as pytree

log = logging.getLogger(__name__)

AUTO_COMPILE_MIN_WORK = 2.5e8
"""With ``compile=None``, compile only when instances × features × batch × steps reaches this:
below it, eager training finishes before compilation (10–30 s on 2 cores) would pay off."""

_CACHE: dict = {}


def compiler_available(device: torch.device) -> bool:
    """Whether Inductor can build code here: a C++ compiler for the CPU (Triton ships with CUDA torch)."""
    return device.type != "cpu" or shutil.which("g++") is not None or shutil.which("c++") is not None


def _signature(args: Any) -> tuple:
    """Shapes, dtypes and devices of every tensor in ``args`` (what a compiled graph is specialised to)."""
    leaves, spec = pytree.tree_flatten(args)
    return (str(spec), torch.get_num_threads()) + tuple(
        (tuple(t.shape), t.dtype, str(t.device)) if isinstance(t, torch.Tensor) else t for t in leaves)


def compile_function(key: tuple, fn: Callable, example_args: tuple) -> Callable:
    """``fn`` compiled for arguments shaped like ``example_args`` (cached per process).

    ``fn`` takes (nested tuples of) tensors and returns (nested tuples of) tensors; it must not
    branch on tensor values. ``key`` names the function and every constant it closes over.
    Raises what tracing or compilation raises.
    """
    key = key + _signature(example_args)
    if key not in _CACHE:
        from torch.fx.experimental.proxy_tensor import make_fx

        flat, in_spec = pytree.tree_flatten(example_args)
        out_spec: list = []

        def flat_fn(*leaves):
            out, spec = pytree.tree_flatten(fn(*pytree.tree_unflatten(list(leaves), in_spec)))
            out_spec[:] = [spec]
            return out

        graph = make_fx(flat_fn, tracing_mode="fake")(*flat)
        on_cpu = all(t.device.type == "cpu" for t in flat if isinstance(t, torch.Tensor))
        compiled = torch._inductor.compile(graph, flat, options={"cpp_wrapper": True} if on_cpu else {})

        def call(*args):
            return pytree.tree_unflatten(compiled(*pytree.tree_leaves(args)), out_spec[0])

        call(*example_args)  # builds anything built lazily, so that failures surface here
        _CACHE[key] = call
    return _CACHE[key]


def maybe_compiled(key: tuple, fn: Callable, example_args: tuple, want: Optional[bool]) -> tuple[Callable, bool]:
    """(compiled ``fn``, True), or (``fn``, False) when not wanted or when compilation fails (logged)."""
    if not want:
        return fn, False
    try:
        return compile_function(key, fn, example_args), True
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
        log.warning("compilation failed (%s: %s); running eagerly", type(exc).__name__, exc)
        return fn, False
