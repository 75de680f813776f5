"""Data-parallel models: BatchNorm synchronised over ranks (also on CPUs) and the DDP wrapper."""
from __future__ import annotations


import torch
from torch import nn

from ..runtime import DistInfo, memory_format

__all__ = ["CpuSyncBatchNorm", "convert_sync_batchnorm", "prepare_model"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks (each rank's
    output feeds its own loss, so d(sum of losses)/d(input) is the sum of the gradients)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for gloo (CPU) jobs.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors. This computes the per-channel mean and then
    the biased variance of the global batch with two autograd-aware all-reduces (whose
    backward sums the gradients over ranks), so forward, backward and running statistics
    (unbiased variance, as BatchNorm) equal one process's BatchNorm over the concatenated
    batch up to float rounding. Outside training, or in a single process, it is a plain
    BatchNorm. Same parameters and buffers as BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_count = x.numel() // x.shape[1]
        sums = torch.cat([xf.sum(dims), xf.new_tensor([float(local_count)])])
        sums = all_reduce(sums)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                n = float(count)
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        return out.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> ``nn.SyncBatchNorm`` (GPU) or :class:`CpuSyncBatchNorm` (CPU)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cpu_sync(model)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module,
                                                                               CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out


def prepare_model(model: nn.Module, info: DistInfo, channels_last: bool
                  ) -> tuple[nn.Module, nn.Module]:
    """Move to the device (channels_last), and under torchrun convert BatchNorm to
    SyncBatchNorm and wrap in DistributedDataParallel. Returns (model, module to call)."""
    model = model.to(info.device, memory_format=memory_format(channels_last))
    if not info.distributed:
        return model, model
    from torch.nn.parallel import DistributedDataParallel

    model = convert_sync_batchnorm(model, info.device)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


