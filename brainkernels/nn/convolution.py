"""``nn.Conv3d`` whose single float32 CPU volumes go through oneDNN (see
:mod:`brainkernels.ops.convolution`); the same parameters and state dict as ``nn.Conv3d``."""

from __future__ import annotations

from torch import Tensor, nn

from brainkernels.ops.convolution import conv3d


class Conv3d(nn.Conv3d):
    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (self.padding_mode != "zeros" or self.groups != 1 or isinstance(self.padding, str)
                or any(d != 1 for d in self.dilation)):
            return super()._conv_forward(input, weight, bias)
        return conv3d(input, weight, bias, self.stride, self.padding)
