"""GPU timings of the three ops: reference vs cpp (CUDA) vs triton, with triton.testing.do_bench.

The mix backward is timed in both modes: float atomics (default) and deterministic ("det").

Run on a GPU machine (benchmarks/gpu_check.sh calls it):  python benchmarks/gpu_bench.py [--out FILE]
Every case is checked against the float64 reference before it is timed. Times are medians
(quantiles 0.5/0.2/0.8) in ms; for mix forward the achieved memory bandwidth counts the bytes
that must move: the k source images read, the logits read, the mixed image written.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import supermix_ext
from supermix_ext.reference import gaussian_smooth_ref, mix_ref, newton_step_ref

SIZES = {
    "cifar": dict(B=128, k=2, C=3, H=32, W=32, h=8, w=8, sigma=1.0),
    "imagenet": dict(B=32, k=3, C=3, H=224, W=224, h=16, w=16, sigma=2.0),
    "imagenet-b128-bf16": dict(B=128, k=3, C=3, H=224, W=224, h=16, w=16, sigma=2.0, dtype=torch.bfloat16),
}


def _rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def bench_size(name, cfg, providers, rows):
    from triton.testing import do_bench

    dtype = cfg.get("dtype", torch.float32)
    B, k, C, H, W, h, w = (cfg[x] for x in "B k C H W h w".split())
    images = torch.rand(B, k, C, H, W, device="cuda").to(dtype)
    logits = torch.randn(B, k, h, w, device="cuda", requires_grad=True)
    grad_mixed = torch.randn(B, C, H, W, device="cuda", dtype=dtype)
    ref_mixed, ref_sparsity = mix_ref(images.double(), logits.detach().double())
    lg = torch.randn(B, k, h, w, device="cuda")
    gr = torch.randn_like(lg)
    loss = torch.rand(B, device="cuda")
    active = torch.arange(B, device="cuda") % 4 != 0
    ref_newton = newton_step_ref(lg.double(), gr.double(), loss.double(), active, cfg["sigma"])
    planes = gr.view(B * k, h, w)
    ref_smooth = gaussian_smooth_ref(planes.double(), cfg["sigma"])
    nbytes = images.numel() * images.element_size() + logits.numel() * 4 + B * C * H * W * images.element_size()

    for provider in providers:
        mixed, _ = supermix_ext.mix(images, logits.detach(), backend=provider)
        err = _rel_err(mixed, ref_mixed)
        fwd = lambda: supermix_ext.mix(images, logits.detach(), backend=provider)

        def full():
            m, s = supermix_ext.mix(images, logits, backend=provider)
            torch.autograd.grad([m, s], [logits], [grad_mixed, torch.ones_like(s)])

        q = [0.5, 0.2, 0.8]
        t_fwd = do_bench(fwd, quantiles=q)
        t_full = do_bench(full, quantiles=q)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        full()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(dict(size=name, op="mix fwd", provider=provider, ms=t_fwd[0], p20=t_fwd[1], p80=t_fwd[2],
                         gbps=nbytes / (t_fwd[0] * 1e-3) / 1e9, rel_err=err))
        rows.append(dict(size=name, op="mix fwd+bwd", provider=provider, ms=t_full[0], p20=t_full[1], p80=t_full[2],
                         peak_mb=peak_mb))
        if provider != "reference":
            # Deterministic mode: the ordered two-pass backward instead of float atomics.
            def full_deterministic():
                m, s = supermix_ext.mix(images, logits, backend=provider, deterministic=True)
                torch.autograd.grad([m, s], [logits], [grad_mixed, torch.ones_like(s)])

            t_det = do_bench(full_deterministic, quantiles=q)
            rows.append(dict(size=name, op="mix fwd+bwd det", provider=provider, ms=t_det[0], p20=t_det[1],
                             p80=t_det[2]))
        if dtype == torch.float32:
            out = supermix_ext.newton_step(lg, gr, loss, active, cfg["sigma"], backend=provider)
            t = do_bench(lambda: supermix_ext.newton_step(lg, gr, loss, active, cfg["sigma"], backend=provider),
                         quantiles=q)
            rows.append(dict(size=name, op="newton_step", provider=provider, ms=t[0], p20=t[1], p80=t[2],
                             rel_err=_rel_err(out, ref_newton)))
            out = supermix_ext.gaussian_smooth(planes, cfg["sigma"], backend=provider)
            t = do_bench(lambda: supermix_ext.gaussian_smooth(planes, cfg["sigma"], backend=provider), quantiles=q)
            rows.append(dict(size=name, op="gaussian_smooth", provider=provider, ms=t[0], p20=t[1], p80=t[2],
                             rel_err=_rel_err(out, ref_smooth)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    info = supermix_ext.backend_info()
    providers = ["reference"] + (["cpp"] if "cuda" in info["compiled_devices"] else []) + (
        ["triton"] if "cuda" in info["triton_devices"] else [])
    rows: list[dict] = []
    for name, cfg in SIZES.items():
        bench_size(name, cfg, providers, rows)
    device = torch.cuda.get_device_name()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\n{device}, torch {torch.__version__}; median ms (p20-p80); GB/s for mix fwd")
    print(f"{'size':<20}{'op':<17}{'provider':<11}{'ms':>9}{'p20-p80':>17}{'GB/s':>8}{'peak MB':>9}{'rel err':>10}")
    for r in rows:
        band = f"{r['p20']:.3f}-{r['p80']:.3f}"
        gbps = f"{r['gbps']:8.0f}" if "gbps" in r else " " * 8
        peak = f"{r['peak_mb']:9.1f}" if "peak_mb" in r else " " * 9
        err = f"{r['rel_err']:10.1e}" if "rel_err" in r else " " * 10
        print(f"{r['size']:<20}{r['op']:<17}{r['provider']:<11}{r['ms']:9.3f}{band:>17}{gbps}{peak}{err}")
    for name in SIZES:
        ref = {r["op"]: r["ms"] for r in rows if r["size"] == name and r["provider"] == "reference"}
        for provider in providers[1:]:
            ours = {r["op"]: r["ms"] for r in rows if r["size"] == name and r["provider"] == provider}
            ratios = ", ".join(f"{op} {ref[op] / ours[op]:.1f}x" for op in ours if op in ref)
            print(f"speed-up over reference, {name}, {provider}: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
