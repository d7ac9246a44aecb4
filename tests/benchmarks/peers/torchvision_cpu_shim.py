"""Lets the PyPI torchvision wheel import beside the CPU build of torch (installed into .venv-biapy by setup.sh).

PyPI's Linux torchvision wheels are CUDA builds: their C++ extension (_C.so) needs libc10_cuda.so and
libtorch_cuda.so, which the CPU torch (2.13.0+cpu, from /opt/wheels) lacks, so the extension fails to
load. torchvision is written to work without it (its C++ ops - nms, roi_align, deform_conv2d... - are then
unavailable), except that torchvision/_meta_registrations.py registers fake kernels for ``torchvision::nms``
and ``torchvision::qnms`` unconditionally, and that raises "operator torchvision::nms does not exist" on
import. The CPU wheel that would avoid this (torchvision==0.28.0+cpu) is only on PyTorch's own index, which
this workplace cannot reach.

This module, imported at interpreter start by a .pth file, waits for the first ``import torchvision`` and,
only when its extension cannot load, declares the schemas of those two operators (no kernels) first. Nothing
of BiaPy's 2D semantic segmentation uses them: calling them still raises, as torchvision does without its
extension. torch is imported only when torchvision is.
"""
import importlib.abc
import sys


class _TorchvisionOpsSchemas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _declare()
        return None


_LIB = None


def _declare():
    global _LIB
    try:
        import glob
        import importlib.util
        import os

        import torch

        spec = importlib.util.find_spec("torchvision")
        so = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")) if spec and spec.origin else []
        try:
            if so:
                import ctypes

                ctypes.CDLL(so[0])
                return  # the extension loads: torchvision declares its ops itself
        except OSError:
            pass
        _LIB = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except Exception as e:  # never break the interpreter's start
        print(f"torchvision_cpu_shim: {type(e).__name__}: {e}", file=sys.stderr)


sys.meta_path.insert(0, _TorchvisionOpsSchemas())
