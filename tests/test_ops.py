"""The three ops on every backend built here, against the pure-PyTorch reference."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import supermix_ext
from supermix_ext import ops
from supermix_ext.reference import (
    gaussian_smooth_ref,
    gaussian_taps,
    mix_ref,
    newton_step_ref,
)
from testing import (
    DEVICES,
    FAST_PATHS,
    FP32_TOL,
    GRID_SHAPES,
    IMAGE_DTYPES,
    MIX_SHAPES,
    SIGMAS,
    SMALL_MIX_SHAPES,
    MixShape,
    assert_close,
    backends_for,
    random_mix_inputs,
)

ALL_PATHS = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in backends_for(device)
]


def _ref64(images, logits):
    return mix_ref(images.double(), logits.double())


# ------------------------------------------------------------------------------------ mix ----
@pytest.mark.parametrize("device,backend", FAST_PATHS)
@pytest.mark.parametrize("image_dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("shape", MIX_SHAPES, ids=str)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_mix_forward_matches_reference(device, backend, image_dtype, shape, contiguous):
    images, logits = random_mix_inputs(shape, device, image_dtype, contiguous=contiguous, seed=hash(str(shape)) % 1000)
    mixed, sparsity = supermix_ext.mix(images, logits, backend=backend)
    expected_mixed, expected_sparsity = _ref64(images, logits)
    assert mixed.dtype == image_dtype and sparsity.dtype == torch.float32
    assert_close(sparsity, expected_sparsity, what="sparsity", **FP32_TOL)
    if image_dtype == torch.float32:
        assert_close(mixed, expected_mixed, what="mixed", **FP32_TOL)
    else:
        # Low precision: at most about twice PyTorch's own error in that dtype, plus a little.
        torch_mixed, _ = mix_ref(images, logits)
        torch_error = (torch_mixed.double() - expected_mixed).abs().max().item()
        our_error = (mixed.double() - expected_mixed).abs().max().item()
        assert our_error <= 2 * torch_error + 1e-3, (
            f"{image_dtype}: kernel error {our_error:.3g} vs PyTorch's {torch_error:.3g}"
        )


@pytest.mark.parametrize("device,backend", FAST_PATHS)
@pytest.mark.parametrize("image_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", MIX_SHAPES, ids=str)
def test_mix_gradients_match_reference(device, backend, image_dtype, shape):
    images, logits = random_mix_inputs(shape, device, image_dtype, contiguous=False, seed=7)
    g = torch.Generator().manual_seed(11)
    grad_mixed = torch.randn(shape.B, shape.C, shape.H, shape.W, generator=g).to(device)
    grad_sparsity = torch.randn(shape.B, generator=g).to(device)

    images_ = images.detach().requires_grad_()
    logits_ = logits.detach().requires_grad_()
    mixed, sparsity = supermix_ext.mix(images_, logits_, backend=backend)
    torch.autograd.backward([mixed, sparsity], [grad_mixed.to(mixed.dtype), grad_sparsity])

    images64 = images.detach().double().requires_grad_()
    logits64 = logits.detach().double().requires_grad_()
    mixed64, sparsity64 = mix_ref(images64, logits64)
    torch.autograd.backward([mixed64, sparsity64], [grad_mixed.to(mixed.dtype).double(), grad_sparsity.double()])

    assert logits_.grad.dtype == torch.float32 and images_.grad.dtype == image_dtype
    scale = logits64.grad.abs().max().item()
    if image_dtype == torch.float32:
        assert_close(logits_.grad, logits64.grad, atol=1e-5 * max(1.0, scale), rtol=1e-4, what="grad logits")
        assert_close(images_.grad, images64.grad, what="grad images", **FP32_TOL)
    else:
        assert_close(logits_.grad, logits64.grad, atol=1e-5 * max(1.0, scale), rtol=1e-4, what="grad logits")
        assert_close(images_.grad, images64.grad, atol=2e-2, rtol=1e-2, what="grad images")


@pytest.mark.parametrize("device,backend", FAST_PATHS)
def test_mix_gradient_of_logits_only(device, backend):
    """When images need no gradient, none is computed or returned."""
    images, logits = random_mix_inputs(MIX_SHAPES[1], device)
    logits.requires_grad_()
    _, sparsity = supermix_ext.mix(images, logits, backend=backend)
    (grad,) = torch.autograd.grad(sparsity.sum(), [logits])
    logits64 = logits.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(mix_ref(images.double(), logits64)[1].sum(), [logits64])
    assert_close(grad, expected, atol=1e-6, rtol=1e-4, what="grad logits (sparsity only)")


# (device, backend, dtype) for the fast paths against the reference; the Triton kernels are
# float32 only, so they get no float64 case (rather than one skipped on every machine).
FAST_PATH_DTYPES = [
    pytest.param(*p.values, dtype, id=f"{p.id}-{str(dtype).removeprefix('torch.')}")
    for p in FAST_PATHS
    for dtype in (torch.float32, torch.float64)
    if not (p.values[1] == "triton" and dtype == torch.float64)
]


def _float64_paths():
    return [p for p in ALL_PATHS if p.values[1] != "triton"]


def _nondet_tol(device: str) -> float:
    """gradcheck's tolerance between two backward passes of the same input. On CUDA the grid
    reductions (ATen's upsample and convolution backwards, the default float-atomic kernels) add
    in a run-dependent order, so two passes differ in the last bits (seen on an H200 with the
    reference mix, 2026-12-04); 1e-12 is far under any wrong gradient at these O(1) values."""
    return 1e-12 if device == "cuda" else 0.0


@pytest.mark.parametrize("device,backend", _float64_paths())
@pytest.mark.parametrize("shape", SMALL_MIX_SHAPES, ids=str)
def test_mix_gradcheck_float64(device, backend, shape):
    images, logits = random_mix_inputs(shape, device, torch.float64, torch.float64, seed=3)
    images.requires_grad_()
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda i, l: supermix_ext.mix(i, l, backend=backend), (images, logits), nondet_tol=_nondet_tol(device)
    )


def _compiled_ops(device):
    """(name, op) of the registered custom ops usable on ``device``."""
    found = []
    if "cpp" in backends_for(device):
        found.append(("cpp", torch.ops.supermix.mix.default, torch.ops.supermix.gaussian_smooth.default,
                      torch.ops.supermix.newton_step.default))
    if "triton" in backends_for(device):
        found.append(("triton", torch.ops.supermix.mix_triton.default,
                      torch.ops.supermix.gaussian_smooth_triton.default,
                      torch.ops.supermix.newton_step_triton.default))
    return found


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    paths = _compiled_ops(device)
    if not paths:
        pytest.skip(f"no compiled or Triton op usable on {device} here")
    shape = MixShape(2, 3, 2, 9, 7, 4, 3)
    for name, mix_op, smooth_op, newton_op in paths:
        images, logits = random_mix_inputs(shape, device, seed=5)
        torch.library.opcheck(mix_op, (images, logits.requires_grad_()))
        torch.library.opcheck(mix_op, (images.requires_grad_(), logits))
        grad = torch.randn(6, 4, 3, device=device)
        torch.library.opcheck(smooth_op, (grad, 1.0))
        torch.library.opcheck(smooth_op, (grad.requires_grad_(), 0.7))
        lg = torch.randn(2, 3, 4, 3, device=device)
        torch.library.opcheck(
            newton_op,
            (lg, torch.randn_like(lg), torch.rand(2, device=device), torch.tensor([True, False], device=device), 1.0),
        )


@pytest.mark.parametrize("device,backend", FAST_PATHS)
def test_mix_compiles_fullgraph(device, backend):
    torch._dynamo.reset()

    def step(images, logits):
        mixed, sparsity = supermix_ext.mix(images, logits, backend=backend)
        return mixed.square().mean() + sparsity.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    images, logits = random_mix_inputs(MIX_SHAPES[1], device)
    logits.requires_grad_()
    loss = compiled(images, logits)
    (grad,) = torch.autograd.grad(loss, [logits])
    logits_ref = logits.detach().requires_grad_()
    expected_loss = step(images, logits_ref)
    (expected,) = torch.autograd.grad(expected_loss, [logits_ref])
    assert_close(loss, expected_loss, what="compiled loss", **FP32_TOL)
    assert_close(grad, expected, what="compiled grad", atol=1e-6, rtol=1e-4)


def test_mix_compiles_with_inductor():
    """The default torch.compile backend (Inductor) also traces the compiled op."""
    if "cpp" not in backends_for("cpu"):
        pytest.skip("the compiled library is not built here")
    torch._dynamo.reset()
    images, logits = random_mix_inputs(MIX_SHAPES[0], "cpu")
    compiled = torch.compile(lambda i, l: supermix_ext.mix(i, l, backend="cpp")[0] * 2, fullgraph=True)
    assert_close(compiled(images, logits), 2 * mix_ref(images, logits)[0], what="inductor", **FP32_TOL)


def test_mix_masks_are_convex_and_uniform_at_zero():
    """Zero logits give the plain average of the sources (Algorithm 1, line 6)."""
    for device in DEVICES:
        for backend in backends_for(device):
            images, logits = random_mix_inputs(MIX_SHAPES[3], device)
            mixed, sparsity = supermix_ext.mix(images, torch.zeros_like(logits), backend=backend)
            k = images.shape[1]
            assert_close(mixed, images.mean(dim=1), what=f"{backend} average", **FP32_TOL)
            expected_sparsity = torch.full_like(sparsity, (1 / k) * (1 - 1 / k))
            assert_close(sparsity, expected_sparsity, what=f"{backend} sparsity at 0", **FP32_TOL)


def test_mix_empty_batch():
    for device in DEVICES:
        for backend in backends_for(device):
            images, logits = random_mix_inputs(MixShape(0, 2, 3, 8, 8, 4, 4), device)
            mixed, sparsity = supermix_ext.mix(images, logits, backend=backend)
            assert mixed.shape == (0, 3, 8, 8) and sparsity.shape == (0,)


# ------------------------------------------------------------------------ gaussian_smooth ----
@pytest.mark.parametrize("device,backend,dtype", FAST_PATH_DTYPES)
@pytest.mark.parametrize("grid", GRID_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("sigma", SIGMAS)
def test_gaussian_smooth_matches_reference(device, backend, dtype, grid, sigma):
    B, k, h, w = grid
    g = torch.Generator().manual_seed(int(sigma * 10) + h)
    grad = torch.randn(B * k, w, h, generator=g, dtype=torch.float64).transpose(1, 2).to(device, dtype)
    out = supermix_ext.gaussian_smooth(grad, sigma, backend=backend)
    assert out.dtype == dtype
    tol = FP32_TOL if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    assert_close(out, gaussian_smooth_ref(grad.double(), sigma), what="gaussian_smooth", **tol)


@pytest.mark.parametrize("device,backend", ALL_PATHS)
def test_gaussian_smooth_sigma1_is_the_five_tap_kernel(device, backend):
    t = torch.arange(-2, 3, dtype=torch.float64)
    taps = torch.exp(-t * t / 2)
    taps = taps / taps.sum()
    assert_close(gaussian_taps(1.0, torch.float64), taps, atol=0, rtol=1e-15, what="taps")
    # An impulse in the middle of a 9x9 plane comes out as the outer product of the taps.
    impulse = torch.zeros(1, 9, 9, device=device)
    impulse[0, 4, 4] = 1.0
    out = supermix_ext.gaussian_smooth(impulse, 1.0, backend=backend)
    expected = torch.zeros(1, 9, 9, dtype=torch.float64)
    expected[0, 2:7, 2:7] = torch.outer(taps, taps)
    assert_close(out, expected, what="impulse response", **FP32_TOL)
    # sigma=0 is the identity.
    x = torch.randn(2, 5, 3, device=device)
    assert torch.equal(supermix_ext.gaussian_smooth(x, 0.0, backend=backend), x)


@pytest.mark.parametrize("device,backend", _float64_paths())
def test_gaussian_smooth_gradcheck(device, backend):
    grad = torch.randn(3, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: supermix_ext.gaussian_smooth(x, 1.3, backend=backend), (grad,), nondet_tol=_nondet_tol(device)
    )


# ---------------------------------------------------------------------------- newton_step ----
def _newton_inputs(grid, device, dtype, seed=0):
    B, k, h, w = grid
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, k, h, w, generator=g, dtype=torch.float64)
    grad = 1e-2 * torch.randn(B, k, h, w, generator=g, dtype=torch.float64)
    loss = torch.rand(B, generator=g, dtype=torch.float64) + 0.1
    active = torch.arange(B) % 3 != 1  # some inactive samples whenever B > 1
    grad[0] *= 1e-6  # a tiny gradient: the step hits the upper clamp
    return (logits.to(device, dtype), grad.to(device, dtype), loss.to(device, dtype), active.to(device))


@pytest.mark.parametrize("device,backend,dtype", FAST_PATH_DTYPES)
@pytest.mark.parametrize("grid", GRID_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("sigma", SIGMAS)
def test_newton_step_matches_reference(device, backend, dtype, grid, sigma):
    logits, grad, loss, active = _newton_inputs(grid, device, dtype, seed=grid[3])
    out = supermix_ext.newton_step(logits, grad, loss, active, sigma, backend=backend)
    expected = newton_step_ref(logits.double(), grad.double(), loss.double(), active, sigma)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-9, rtol=1e-9)
    assert_close(out, expected, what="newton_step", **tol)
    assert torch.equal(out[~active], logits[~active]), "inactive samples changed"


@pytest.mark.parametrize("device,backend", ALL_PATHS)
def test_newton_step_leaves_inactive_bit_identical_and_inputs_untouched(device, backend):
    logits, grad, loss, active = _newton_inputs((6, 3, 5, 7), device, torch.float32, seed=1)
    logits[~active] = torch.tensor(float("nan"))  # NaN compares unequal; bit-equality must hold
    before = logits.clone()
    out = supermix_ext.newton_step(logits, grad, loss, active, 1.0, backend=backend)
    assert out.data_ptr() != logits.data_ptr()
    assert torch.equal(logits.isnan(), before.isnan()) and torch.equal(logits.nan_to_num(), before.nan_to_num())
    inactive_out, inactive_in = out[~active], logits[~active]
    assert torch.equal(inactive_out.view(torch.int32), inactive_in.view(torch.int32))
    assert not torch.equal(out[active], logits[active])


@pytest.mark.parametrize("device,backend", ALL_PATHS)
def test_newton_step_size_is_clamped(device, backend):
    """The step size stays in [1e-4, 2000] (the authors' clamp)."""
    B, k, h, w = 2, 2, 4, 4
    logits = torch.zeros(B, k, h, w, device=device)
    grad = torch.zeros_like(logits)
    grad[:, :, 1, 2] = 1.0
    loss = torch.tensor([1e12, 1e-12], device=device)
    out = supermix_ext.newton_step(logits, grad, loss, torch.ones(B, dtype=torch.bool, device=device), 0.0,
                                   backend=backend)
    assert_close(out[0, :, 1, 2], torch.full((k,), -2000.0), what="upper clamp", atol=1e-3, rtol=1e-6)
    assert_close(out[1, :, 1, 2], torch.full((k,), -1e-4), what="lower clamp", atol=1e-9, rtol=1e-5)


# ------------------------------------------------------------------------- bad input ----
def _good_mix_inputs():
    return random_mix_inputs(MixShape(2, 3, 3, 10, 10, 4, 4), "cpu")


@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda i, l: (i[0], l), r"images must have shape \[B,k,C,H,W\], got \[3, 3, 10, 10\]"),
        (lambda i, l: (i, l[0]), r"logits must have shape \[B,k,h,w\], got \[3, 4, 4\]"),
        (lambda i, l: (i[:, :1], l[:, :1]), r"k >= 2 sources per sample, got k=1"),
        (lambda i, l: (i, torch.zeros(2, 3, 11, 4)), r"1 <= h <= H=10"),
        (lambda i, l: (i, l[:1]), r"logits must have shape \[B=2,k=3,h,w\]"),
        (lambda i, l: ((i * 255).to(torch.uint8), l), r"images must be float32, float16, bfloat16 or float64, got torch.uint8"),
        (lambda i, l: (i, l.to(torch.int64)), r"logits must be float32 or float64, got torch.int64"),
        (lambda i, l: (i, l.to("meta")), r"logits must be on the same device as images \(cpu\), got meta"),
        (lambda i, l: (i.numpy(), l), r"images must be a torch.Tensor, got ndarray"),
    ],
)
def test_mix_bad_input_names_the_argument(backend, make, message):
    images, logits = make(*_good_mix_inputs())
    with pytest.raises((ValueError, TypeError), match=message):
        supermix_ext.mix(images, logits, backend=backend)


@pytest.mark.parametrize("backend", backends_for("cpu"))
@pytest.mark.parametrize("sigma", [-0.5, float("nan"), float("inf")])
def test_bad_sigma_is_rejected(backend, sigma):
    grad = torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match=r"sigma must be finite and >= 0, got"):
        supermix_ext.gaussian_smooth(grad, sigma, backend=backend)
    logits = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"sigma must be finite and >= 0, got"):
        supermix_ext.newton_step(logits, logits, torch.ones(1), torch.ones(1, dtype=torch.bool), sigma,
                                 backend=backend)


@pytest.mark.parametrize("backend", backends_for("cpu"))
def test_newton_step_bad_input_names_the_argument(backend):
    logits = torch.randn(2, 2, 4, 4)
    ok = dict(logits=logits, grad=torch.randn_like(logits), loss=torch.ones(2),
              active=torch.ones(2, dtype=torch.bool), sigma=1.0)
    cases = [
        (dict(grad=torch.randn(2, 2, 4, 5)), r"grad must match logits"),
        (dict(loss=torch.ones(3)), r"loss must be a float tensor of shape \[B=2\], got \[3\]"),
        (dict(active=torch.ones(2)), r"active must be a bool tensor of shape \[B=2\]"),
        (dict(logits=logits[0], grad=logits[0]), r"logits must have shape \[B,k,h,w\]"),
        (dict(active=torch.ones(2, dtype=torch.bool, device="meta")), r"active must be on the same device"),
    ]
    for change, message in cases:
        args = {**ok, **change}
        with pytest.raises((ValueError, TypeError), match=message):
            supermix_ext.newton_step(args["logits"], args["grad"], args["loss"], args["active"], args["sigma"],
                                     backend=backend)


def test_compiled_kernels_check_their_inputs_too():
    """The C++ schema ops reject bad shapes themselves, naming the argument."""
    if "cpp" not in backends_for("cpu"):
        pytest.skip("the compiled library is not built here")
    images, logits = _good_mix_inputs()
    with pytest.raises(RuntimeError, match="logits"):
        torch.ops.supermix.mix(images, logits[:, :2])
    with pytest.raises(RuntimeError, match="sigma"):
        torch.ops.supermix.gaussian_smooth(torch.randn(2, 4, 4), -1.0)


# ----------------------------------------------------------------------- backend switch ----
def test_backend_switch_and_environment_variable(monkeypatch):
    images, logits = _good_mix_inputs()
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        supermix_ext.mix(images, logits, backend="fast")
    monkeypatch.setenv("SUPERMIX_BACKEND", "reference")
    assert ops.resolve_backend("cpu") == "reference"
    monkeypatch.setenv("SUPERMIX_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        ops.resolve_backend("cpu")
    monkeypatch.delenv("SUPERMIX_BACKEND")
    expected = "cpp" if "cpu" in ops._COMPILED_DEVICES else "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ops.resolve_backend("cpu") == expected
    assert supermix_ext.backend_info()["auto"]["cpu"] == expected


def test_auto_never_falls_back_silently(monkeypatch):
    monkeypatch.setattr(ops, "_COMPILED_DEVICES", frozenset())
    monkeypatch.setattr(ops, "_warned_fallback", set())
    with pytest.warns(UserWarning, match="uses the pure-PyTorch reference"):
        assert ops.resolve_backend("cpu", "auto") == "reference"
    with pytest.raises(RuntimeError, match="backend 'cpp' has no kernels for device 'cpu'"):
        ops.resolve_backend("cpu", "cpp")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(ops, "_TRITON_DEVICES", frozenset({"cuda"}))
    with pytest.raises(RuntimeError, match="backend 'triton' is not usable on device 'cpu'"):
        ops.resolve_backend("cpu", "triton")


def test_compiled_library_was_built_when_required():
    """CI sets SUPERMIX_REQUIRE_COMPILED=1 so a build that silently lost its kernels fails."""
    info = supermix_ext.backend_info()
    if os.environ.get("SUPERMIX_REQUIRE_COMPILED") != "1":
        pytest.skip("SUPERMIX_REQUIRE_COMPILED is not set")
    assert info["library_error"] is None, info
    assert "cpu" in info["compiled_devices"], info
    if os.environ.get("SUPERMIX_REQUIRE_CUDA_BUILD") == "1":
        assert info["cuda_version"] > 0, f"library built without CUDA: {info}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert "cpu" in info["triton_devices"], info


def test_sparsity_matches_paper_definition():
    """Eq. 5 at full resolution: mean of |m (m - 1)| over masks and pixels."""
    images, logits = random_mix_inputs(MixShape(2, 3, 1, 12, 12, 6, 6), "cpu", torch.float64, torch.float64)
    masks = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(12, 12), mode="bilinear"))
    masks = masks / masks.sum(1, keepdim=True)
    expected = (masks * (masks - 1)).abs().sum(dim=(1, 2, 3)) / (3 * 12 * 12)
    for backend in backends_for("cpu"):
        if backend == "triton":
            continue
        _, sparsity = supermix_ext.mix(images, logits, backend=backend)
        assert_close(sparsity, expected, atol=1e-12, rtol=1e-10, what=backend)


# ------------------------------------------------------------------ deterministic mode ----
def _mix_grads(images, logits, grad_mixed, grad_sparsity, backend, deterministic):
    images_ = images.detach().requires_grad_()
    logits_ = logits.detach().requires_grad_()
    mixed, sparsity = supermix_ext.mix(images_, logits_, backend=backend, deterministic=deterministic)
    torch.autograd.backward([mixed, sparsity], [grad_mixed, grad_sparsity])
    return mixed.detach(), sparsity.detach(), images_.grad, logits_.grad


@pytest.mark.parametrize("device,backend", FAST_PATHS)
@pytest.mark.parametrize("shape", MIX_SHAPES, ids=str)
def test_mix_deterministic_backward_matches_reference_and_repeats_bit_for_bit(device, backend, shape):
    """deterministic=True: the ordered two-pass reduction onto the grid (GPUs) gives the
    reference's gradients, and the same bits on every run."""
    images, logits = random_mix_inputs(shape, device, seed=13)
    g = torch.Generator().manual_seed(17)
    grad_mixed = torch.randn(shape.B, shape.C, shape.H, shape.W, generator=g).to(device)
    grad_sparsity = torch.randn(shape.B, generator=g).to(device)
    first = _mix_grads(images, logits, grad_mixed, grad_sparsity, backend, True)
    second = _mix_grads(images, logits, grad_mixed, grad_sparsity, backend, True)
    for name, a, b in zip(("mixed", "sparsity", "grad images", "grad logits"), first, second):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), f"{name} differs between two runs"
    images64 = images.double().requires_grad_()
    logits64 = logits.double().requires_grad_()
    mixed64, sparsity64 = mix_ref(images64, logits64)
    torch.autograd.backward([mixed64, sparsity64], [grad_mixed.double(), grad_sparsity.double()])
    scale = logits64.grad.abs().max().item()
    assert_close(first[3], logits64.grad, atol=1e-5 * max(1.0, scale), rtol=1e-4, what="grad logits")
    assert_close(first[2], images64.grad, what="grad images", **FP32_TOL)
    # The default (atomic) backward computes the same function to rounding.
    default = _mix_grads(images, logits, grad_mixed, grad_sparsity, backend, False)
    assert_close(default[3], first[3], atol=1e-6 * max(1.0, scale), rtol=1e-5, what="atomic vs ordered")


def test_cpu_kernels_are_deterministic_in_either_mode():
    """The CPU kernels have a fixed reduction order whatever the mode and thread count."""
    if "cpp" not in backends_for("cpu"):
        pytest.skip("the compiled library is not built here")
    shape = MIX_SHAPES[1]
    images, logits = random_mix_inputs(shape, "cpu", seed=21)
    grad_mixed = torch.randn(shape.B, shape.C, shape.H, shape.W)
    grad_sparsity = torch.randn(shape.B)
    results = []
    threads = torch.get_num_threads()
    try:
        for deterministic, num_threads in ((False, 1), (True, 2), (False, 2)):
            torch.set_num_threads(num_threads)
            results.append(_mix_grads(images, logits, grad_mixed, grad_sparsity, "cpp", deterministic))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_deterministic_switches():
    """set_deterministic / deterministic_mode / torch.use_deterministic_algorithms turn the mode on."""
    supermix_ext.set_deterministic(False)
    try:
        assert not supermix_ext.deterministic_enabled()
        with supermix_ext.deterministic_mode():
            assert supermix_ext.deterministic_enabled()
            with supermix_ext.deterministic_mode(False):
                assert not supermix_ext.deterministic_enabled()
            assert supermix_ext.deterministic_enabled()
        assert not supermix_ext.deterministic_enabled()
        supermix_ext.set_deterministic(True)
        assert supermix_ext.deterministic_enabled()
        supermix_ext.set_deterministic(False)
        with pytest.raises(TypeError, match="mode must be a bool or None"):
            supermix_ext.set_deterministic(1)
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            assert supermix_ext.deterministic_enabled()  # torch's flag wins over False
        finally:
            torch.use_deterministic_algorithms(before)
    finally:
        supermix_ext.set_deterministic(None)


@pytest.mark.parametrize("device,backend", FAST_PATHS)
def test_deterministic_mode_reaches_the_backward_op(device, backend):
    from torch.utils._python_dispatch import TorchDispatchMode

    backward_name = "mix_backward" if backend == "cpp" else "mix_backward_triton"
    seen = []

    class RecordBackward(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.name().startswith(f"supermix::{backward_name}"):
                seen.append(bool(args[5]) if len(args) > 5 else bool((kwargs or {}).get("deterministic", False)))
            return func(*args, **(kwargs or {}))

    images, logits = random_mix_inputs(SMALL_MIX_SHAPES[0], device)
    for mode in (False, True):
        with supermix_ext.deterministic_mode(mode):
            logits_ = logits.clone().requires_grad_()
            _, sparsity = supermix_ext.mix(images, logits_, backend=backend)
        with RecordBackward():  # the backward runs after the block: the forward's mode holds
            sparsity.sum().backward()
    assert seen == [False, True]


# ------------------------------------------------------------------- NaN propagation ----
@pytest.mark.parametrize("device,backend", ALL_PATHS)
def test_newton_step_nan_loss_gives_nan_step(device, backend):
    """A NaN loss stays NaN through the step clamp (torch.clamp, the reference), never 1e-4."""
    logits, grad, loss, active = _newton_inputs((3, 2, 4, 5), device, torch.float32, seed=4)
    active[:] = True
    loss[0] = float("nan")
    out = supermix_ext.newton_step(logits, grad, loss, active, 1.0, backend=backend)
    assert out[0].isnan().all(), f"{backend}: a NaN loss gave a finite step"
    assert out[1:].isfinite().all()


# --------------------------------------------------------------- Triton launch plumbing ----
def _triton_modules():
    info = supermix_ext.backend_info()
    if not info["triton_devices"]:
        pytest.skip(f"Triton kernels not usable here: {info['triton_error']}")
    from supermix_ext.triton import _common, gaussian_smooth, mix, newton_step

    return _common, mix, gaussian_smooth, newton_step


def test_triton_device_guard_selects_the_tensors_device():
    """Triton launches on the current CUDA device: the guard makes it the tensors' (cuda:1 too)."""
    _common = _triton_modules()[0]
    guard = _common.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(_common.device_guard(torch.device("cpu")), torch.cuda.device)


def test_every_triton_launch_runs_under_the_inputs_device_guard(monkeypatch):
    _common, *modules = _triton_modules()
    if "cpu" not in supermix_ext.backend_info()["triton_devices"]:
        pytest.skip("the Triton kernels run on CUDA tensors here; this checks the CPU interpreter path")
    guarded: list[torch.device] = []
    launches: list[tuple[str, torch.device | None]] = []
    real_launcher = _common.triton_launcher

    class RecordingGuard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            guarded.append(self.device)

        def __exit__(self, *exc):
            guarded.pop()

    def recording_launcher(kernel, interpreted):
        launches.append((kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), guarded[-1] if guarded else None))
        return real_launcher(kernel, interpreted)

    monkeypatch.setattr(_common, "device_guard", RecordingGuard)
    monkeypatch.setattr(_common, "triton_launcher", recording_launcher)
    images, logits = random_mix_inputs(SMALL_MIX_SHAPES[0], "cpu")
    for deterministic in (False, True):
        logits_ = logits.clone().requires_grad_()
        mixed, sparsity = supermix_ext.mix(images, logits_, backend="triton", deterministic=deterministic)
        (mixed.sum() + sparsity.sum()).backward()
    supermix_ext.gaussian_smooth(torch.randn(2, 4, 4), 1.0, backend="triton")
    supermix_ext.newton_step(logits, logits, torch.ones(2), torch.ones(2, dtype=torch.bool), 1.0, backend="triton")
    names = {name for name, _ in launches}
    assert names == {"_mix_fwd_kernel", "_mix_bwd_kernel", "_bilinear_adjoint_kernel", "_gaussian_smooth_kernel",
                     "_newton_step_kernel"}, names
    unguarded = [name for name, device in launches if device != torch.device("cpu")]
    assert not unguarded, f"launched outside a guard for the inputs' device: {unguarded}"
    # Launch sites cannot bypass the guard: only _common.launch launches kernels.
    for module in modules:
        source = open(module.__file__).read()
        assert "wrap_triton(" not in source and "triton_launcher(" not in source, module.__name__
        assert "](" not in source.replace("[(", ""), module.__name__


def test_triton_launch_plans_fit_cuda_grid_limits_and_switch_to_int64():
    """Pixel blocks no longer go on grid axis 1 (65535 programs at most): grids are 1-D with up to
    2^31 - 1 programs, and offsets are int64 once a tensor has 2^31 elements or more."""
    _common, mix, gaussian_smooth, _ = _triton_modules()
    big_image = mix.mix_launch_plan(B=1, k=2, C=3, H=32768, W=32768, h=16, w=16)
    assert big_image.num_blocks > 65535 and len(big_image.grid) == 1
    assert big_image.grid[0] == big_image.num_blocks <= _common.MAX_GRID[0]
    assert big_image.int64_index  # 2 * 3 * 32768^2 > 2^31 - 1
    big_batch = mix.mix_launch_plan(B=100000, k=2, C=3, H=32, W=32, h=8, w=8)
    assert big_batch.grid == (100000 * big_batch.num_blocks,) and not big_batch.int64_index
    assert big_batch.gather_grid == (100000 * 2 * big_batch.gather_blocks,)
    for shape in MIX_SHAPES:
        plan = mix.mix_launch_plan(shape.B, shape.k, shape.C, shape.H, shape.W, shape.h, shape.w)
        assert not plan.int64_index and plan.num_blocks * plan.block_p >= shape.H * shape.W
    edge = 2**31 - 1  # the largest element count int32 offsets still reach
    assert not _common.needs_int64_index(edge) and _common.needs_int64_index(edge + 1)
    smooth = gaussian_smooth.smooth_launch_plan(N=200000, h=512, w=512, sigma=2.0)
    assert len(smooth.grid) == 1 and smooth.grid[0] <= _common.MAX_GRID[0] and smooth.int64_index
    with pytest.raises(ValueError, match="exceed CUDA's limit"):
        _common.check_grid((2**31,), "mix_triton")
    with pytest.raises(ValueError, match="grid axis 1"):
        _common.check_grid((1, 65536), "mix_triton")


# ------------------------------------------------------------------ release compatibility ----
def test_interpreter_problem_names_the_numpy_to_install():
    from supermix_ext._compat import interpreter_problem

    message = interpreter_problem("3.6.0", "2.4.6")
    assert message is not None and "pip install 'numpy<2.4'" in message and "Triton 3.6.0" in message
    assert interpreter_problem("3.6.0", "2.3.5") is None
    assert interpreter_problem("3.7.1", "2.4.6") is None
    assert interpreter_problem("3.8.0", "2.5.2") is None


def test_interpreted_kernels_are_launched_as_they_are():
    """torch 2.11's wrap_triton refuses the interpreter's kernels; under the interpreter the
    launcher hands them over untouched on every release (the ops are opaque custom ops there)."""
    from supermix_ext._compat import triton_launcher

    def kernel():
        return None

    assert triton_launcher(kernel, interpreted=True) is kernel


def test_cuda_minor_versions_may_differ_majors_may_not():
    from supermix_ext.ops import cuda_mismatch_message

    assert cuda_mismatch_message(13000, "13.2") is None       # torch 2.15's cu132 wheels, nvcc 13.0
    assert cuda_mismatch_message(13000, "13.0") is None
    assert cuda_mismatch_message(0, "13.0") is None           # built without CUDA
    assert cuda_mismatch_message(13000, None) is None         # a CPU-only torch
    assert cuda_mismatch_message(12080, "13.0") == (
        "supermix_ext._C was compiled with CUDA 12.8 but PyTorch uses CUDA 13.0 (the major versions "
        "must match); rebuild with `pip install --no-build-isolation .` against this PyTorch")
