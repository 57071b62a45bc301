"""Where each feature cell sits on the input image, per encoder family.

Cell i of a tap is centred on input pixel ``offset + stride * i`` (pixel-index coordinates: pixel j is
centred on j). A convolution or pooling of kernel k and stride s that pads ``p`` cells before its input
maps output o to inputs o s - p ... o s - p + k - 1, centred on o s + (k - 1) / 2 - p; through a chain
of layers::

    offset <- offset + stride * ((k - 1) / 2 - p),    stride <- stride * s

* torchvision ResNets and MobileNets, timm ``efficientnet_b5``: every layer pads p = (k - 1) / 2 on
  both sides, so every term is 0: cell i is centred on pixel ``stride * i`` (not stride (i + 0.5)).
* timm ``tf_`` EfficientNets: TensorFlow 'same' padding (``Conv2dSame``) pads
  p = floor(max((ceil(n / s) - 1) s + k - n, 0) / 2) before an input of n cells: it depends on the size.
* ViT-B/16: patch token i covers pixels 16 i ... 16 i + 15: offset 7.5, stride 16.

The published upsampling (bilinear, ``align_corners=True``) stretches the h cells over the H pixels
instead, so the last cell lands on pixel H - 1 rather than on ``offset + stride (h - 1)``: up to
``stride`` pixels towards the bottom-right. ``utils.anomaly_map`` samples each pixel at its own cell
coordinate when a calibration records these grids.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union


@dataclass(frozen=True)
class CellGrid:
    """Cell i of a tap is centred on input pixel ``offset + stride * i`` (both axes alike)."""
    stride: float
    offset: float

    def as_list(self) -> List[float]:
        return [float(self.stride), float(self.offset)]


Padding = Union[int, str]  # cells padded before the input, or 'same' (TensorFlow's rule, size-dependent)


def chain_grid(layers: Sequence[Tuple[int, int, Padding]], size: int) -> CellGrid:
    """The grid after ``layers`` = (kernel, stride, padding) in order, for an input ``size`` pixels wide
    (stride-1 layers that pad (k - 1) / 2 change nothing and may be left out)."""
    stride, offset, cells = 1.0, 0.0, size
    for kernel, step, padding in layers:
        if padding == 'same':
            out = math.ceil(cells / step)
            before = max((out - 1) * step + kernel - cells, 0) // 2
        else:
            before = padding
            out = (cells + 2 * padding - kernel) // step + 1
        offset += stride * ((kernel - 1) / 2 - before)
        stride *= step
        cells = out
    return CellGrid(stride, offset)



def strided_layers(named_modules) -> List[Tuple[int, int, Padding]]:
    """(kernel, stride, padding) along one axis of the convolutions and max-poolings of ``named_modules``
    ((name, module) in forward order). A ResNet's ``downsample`` shortcut runs beside its block's strided
    convolution, on the same grid, and is left out; timm's ``Conv2dSame`` pads the TensorFlow way."""
    import torch.nn as nn
    layers = []
    for name, module in named_modules:
        if 'downsample' in name.split('.'):
            continue
        if isinstance(module, nn.Conv2d):
            same = type(module).__name__ == 'Conv2dSame'  # timm's, matched by name: timm is imported only when used
            layers.append((module.kernel_size[0], module.stride[0], 'same' if same else module.padding[0]))
        elif isinstance(module, nn.MaxPool2d):
            kernel, stride, padding = (v if isinstance(v, int) else v[0]
                                       for v in (module.kernel_size, module.stride, module.padding))
            layers.append((kernel, stride, padding))
    return layers


def modules_through(net, last: str):
    """(name, module) of ``net``'s top-level children in forward order, through the child ``last``."""
    for name, child in net.named_children():
        yield from child.named_modules(prefix=name)
        if name == last:
            return


def grid_after(modules, size: int) -> CellGrid:
    """The grid of the output of ``modules`` (name, module pairs in forward order) at an input of ``size``."""
    return chain_grid(strided_layers(modules), size)
