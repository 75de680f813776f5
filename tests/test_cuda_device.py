"""GPU-only checks of the CUDA and Triton ops (benchmarks/gpu_check.sh runs them). Without a
CUDA fast path conftest.py does not collect this file, and the second-GPU test exists only with
two GPUs: nothing here is generated to be skipped.

- One solver iteration (Algorithm 1: mix, teacher forward, KL + sparsity loss, gradient with
  respect to the mask logits, Newton step) is captured in a CUDA graph and replayed: the ops do
  no host synchronisation, host-to-device copy or host-side work that a graph cannot hold.
- In deterministic mode, replays and eager runs give the same bits.
- Tensors on a GPU other than the current one (cuda:1 with cuda:0 current) compute correctly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import supermix_ext
from supermix_ext.reference import gaussian_smooth_ref, mix_ref, newton_step_ref
from testing import FAST_PATHS, FP32_TOL, MixShape, assert_close, random_mix_inputs

CUDA_PATHS = [p for p in FAST_PATHS if p.values[0] == "cuda"]

SHAPE = MixShape(16, 2, 3, 32, 32, 8, 8)
LAMBDA_S, SIGMA, NUM_CLASSES = 25.0, 1.0, 10


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, NUM_CLASSES),
    )  # fmt: skip
    return net.cuda().eval().requires_grad_(False)


def _iteration(teacher, images, logits, y_hat, active, backend):
    """One Newton iteration of Algorithm 1 on a fixed batch: returns the new logits and the loss."""
    logits = logits.detach().requires_grad_()
    mixed, sparsity = supermix_ext.mix(images, logits, backend=backend)
    log_probs = F.log_softmax(teacher(mixed), dim=1)
    loss = F.kl_div(log_probs, y_hat, reduction="none").sum(1) + LAMBDA_S * sparsity
    (grad,) = torch.autograd.grad(loss.sum(), [logits])
    return supermix_ext.newton_step(logits.detach(), grad, loss.detach(), active, SIGMA, backend=backend), loss


def _inputs(seed):
    images, logits = random_mix_inputs(SHAPE, "cuda", seed=seed)
    g = torch.Generator().manual_seed(seed)
    y_hat = torch.softmax(torch.randn(SHAPE.B, NUM_CLASSES, generator=g), dim=1).cuda()
    active = (torch.arange(SHAPE.B) % 4 != 0).cuda()
    return images, logits, y_hat, active


@pytest.mark.parametrize("device,backend", CUDA_PATHS)
def test_cuda_solver_iteration_has_no_host_sync(device, backend):
    teacher = _teacher()
    images, logits, y_hat, active = _inputs(1)
    _iteration(teacher, images, logits, y_hat, active, backend)  # warm-up: Triton compiles here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _iteration(teacher, images, logits, y_hat, active, backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device,backend", CUDA_PATHS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_cuda_graph_captures_one_solver_iteration(device, backend, deterministic):
    teacher = _teacher()
    static = _inputs(2)
    with supermix_ext.deterministic_mode(deterministic):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up off the default stream, as graph capture requires
                _iteration(teacher, *static, backend)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, static_loss = _iteration(teacher, *static, backend)

        fresh = _inputs(3)
        for target, source in zip(static, fresh):
            target.copy_(source)
        graph.replay()
        torch.cuda.synchronize()
        replayed = static_out.clone()
        graph.replay()
        torch.cuda.synchronize()
        eager_out, eager_loss = _iteration(teacher, *fresh, backend)
    assert_close(static_loss, eager_loss, what="graph loss", atol=1e-5, rtol=1e-5)
    assert_close(replayed, eager_out, what="graph step", atol=1e-4, rtol=1e-4)
    assert torch.equal(replayed[~fresh[3]], fresh[1][~fresh[3]]), "inactive samples changed"
    if deterministic:
        assert torch.equal(replayed, static_out), "two replays differ in deterministic mode"


# Generated only where it can run (no permanent skip on one-GPU machines).
if torch.cuda.device_count() >= 2:
    @pytest.mark.parametrize("device,backend", CUDA_PATHS)
    def test_cuda_ops_on_a_second_gpu(device, backend):
        """Triton launches on the current device; the ops must follow their tensors' device."""
        assert torch.cuda.current_device() == 0
        images, logits = random_mix_inputs(SHAPE, "cuda:1", seed=4)
        logits.requires_grad_()
        mixed, sparsity = supermix_ext.mix(images, logits, backend=backend)
        (grad,) = torch.autograd.grad(mixed.sum() + sparsity.sum(), [logits])
        logits64 = logits.detach().double().requires_grad_()
        mixed64, sparsity64 = mix_ref(images.double(), logits64)
        (grad64,) = torch.autograd.grad(mixed64.sum() + sparsity64.sum(), [logits64])
        assert mixed.device == torch.device("cuda:1")
        assert_close(mixed, mixed64, what="mixed on cuda:1", **FP32_TOL)
        assert_close(grad, grad64, what="grad on cuda:1", atol=1e-4, rtol=1e-4)
        planes = torch.randn(6, 8, 8, device="cuda:1")
        assert_close(supermix_ext.gaussian_smooth(planes, 1.0, backend=backend), gaussian_smooth_ref(planes.double(), 1.0),
                     what="smooth on cuda:1", **FP32_TOL)
        lg, gr = torch.randn(3, 2, 8, 8, device="cuda:1"), torch.randn(3, 2, 8, 8, device="cuda:1")
        loss, active = torch.rand(3, device="cuda:1"), torch.ones(3, dtype=torch.bool, device="cuda:1")
        assert_close(supermix_ext.newton_step(lg, gr, loss, active, 1.0, backend=backend),
                     newton_step_ref(lg.double(), gr.double(), loss.double(), active, 1.0),
                     what="newton_step on cuda:1", atol=1e-4, rtol=1e-4)
