"""The video forward of a model captured as a CUDA graph, and the check that refuses a forward a graph cannot hold
(internal: :class:`vmm.embedder.VideoTextEncoder` uses it for full batches on CUDA, ``cuda_graph=True``).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class HostSyncError(RuntimeError):
    """A forward that makes the host wait for the GPU, found before a capture."""


class RefuseHostSync(TorchDispatchMode):
    """Raises on an op that makes the host wait for the GPU (a value read back, a shape that depends on the data,
    a copy between host and GPU), which a CUDA graph cannot capture. In this thread only, unlike
    ``torch.cuda.set_sync_debug_mode``, which would fail every other thread's syncs meanwhile. Data made by
    ``torch.tensor(..., device="cuda")`` or ``new_tensor`` never passes the dispatcher and is not seen."""

    gpu = "cuda"  # the tests emulate a GPU with the "meta" device
    _READS = {"item", "_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "equal", "unique", "_unique",
              "_unique2", "unique_dim", "unique_consecutive"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Under inference mode a composite op (torch.where(cond), tensor.to(device)) reaches this mode whole and
        # runs its inner ops (nonzero, _to_copy) without it: decompose it here so they are seen, as PyTorch's
        # FakeTensorMode does.
        if _composite(func):
            try:
                with self:
                    out = func.decompose(*args, **kwargs)
            except HostSyncError:
                raise
            except Exception:  # a decomposition that does not apply here: the op is checked whole
                out = NotImplemented
            if out is not NotImplemented:
                return out
        name = func.overloadpacket.__name__
        leaves = tree_leaves((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors} | {d.type for d in leaves if isinstance(d, torch.device)}
        masked = name == "index" and any(t.dtype in (torch.bool, torch.uint8) for t in tensors[1:])
        if (self.gpu in devices and (name in self._READS or masked)) or (
                {self.gpu, "cpu"} <= devices and name in ("to", "_to_copy", "copy_")):
            raise HostSyncError(f"the forward calls {name}, which makes the host wait for the GPU")
        return func(*args, **kwargs)


def _composite(func) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")
    except (AttributeError, RuntimeError):  # a PyTorch without this query: the op is checked whole
        return False


class GraphedVideoForward:
    """``model.encode_video(x)`` captured as a CUDA graph for one input shape; each call replays it.

    Eager PyTorch spends about 25 ms of Python issuing one VideoMamba-M forward of 32 clips (55 ms on an H200's
    GPU), so any thread that holds the GIL delays the GPU: beside a thread receiving clips from 15 decoder
    processes, as `vmm index` runs it, the same forward took 65-68 ms. A replay issues the whole forward at once
    (55 ms there too; `vmm index` 7-9% faster end to end) and is bit-identical to the eager forward (the same
    kernels on the same inputs). The graph reads the weights through the pointers it was captured with, so
    :class:`vmm.embedder.VideoTextEncoder` drops it when a parameter or buffer is replaced.
    """

    def __init__(self, model, example: torch.Tensor, autocast):
        device = example.device
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.current_stream(device)):
            # (the outer stream context puts the caller's stream back even when the capture fails)
            self.input = example.clone()
            # Warm-up on a side stream, as the CUDA graph docs ask (lazy initialisation must not be captured).
            # It refuses the ops that make the host wait for the GPU: a capture that fails midway on one can leave
            # CUDA's random-number state unusable for the rest of the process, so such a model stays eager.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), autocast(cache_enabled=False), RefuseHostSync():
                model.encode_video(self.input)
            torch.cuda.current_stream(device).wait_stream(side)
            # The weight casts stay inside the graph (no autocast cache), as each eager call makes them too. The
            # capture stream is the model's device's: torch.cuda.graph's default one is made once per process, on
            # whichever device was current then, and a capture for another GPU on it records nothing.
            self.graph = torch.cuda.CUDAGraph()
            with (torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device), capture_error_mode="thread_local"),
                  autocast(cache_enabled=False)):
                self.output = model.encode_video(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The embeddings of ``x`` as a new CPU float32 tensor (the graph's output is overwritten next call)."""
        self.input.copy_(x)
        self.graph.replay()
        return self.output.float().cpu()
