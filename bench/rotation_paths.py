"""Faster paths for the LoRaD rotation: measured against the library's current op.

Two levels, each interleaved with the library as baseline:

1. weight build (``W_rot`` from ``W``, ``A``, ``B``; no grad), per weight shape:
   ``library`` (now: in-range fast wrap, pairs as complex numbers times cos + i sin),
   ``previous`` (the library before that change: ``torch.remainder`` wrap, six strided
   elementwise ops and a stack), ``polar`` (complex multiply by ``torch.polar``),
   ``buffer`` (rotate into a preallocated output with ``mul``/``addcmul`` ``out=``),
   ``compiled`` (``torch.compile`` of the previous function), ``hook`` (the official
   strided-halves assignment);
2. one Linear layer forward+backward with N tokens: ``fused`` (library op),
   ``previous-fused`` (the same op on the previous functions), ``naive`` (plain
   autograd), ``complex-fused`` (a fused op written with complex arithmetic throughout),
   ``save-theta`` (fused op that keeps theta for backward instead of recomputing A@B:
   half a weight of fp32 memory per layer), ``two-gemm`` (y = (C*W)x + (S*W)(Jx),
   never materialising W_rot), ``compiled`` (``torch.compile`` of the naive layer), and
   ``lora`` (a LoRA of the same rank on the same frozen W: the cost reference).

Every variant's output is compared with the library (max abs difference) so a win
that is not exact is visible::

    python bench/rotation_paths.py
    python bench/rotation_paths.py --compile --json paths.json   # adds torch.compile (slow first call)
"""

from __future__ import annotations

import contextlib
import math
import sys

import harness
import torch
import torch.nn.functional as F
from torch import Tensor

harness.load_package()
from wadi_lorad.lorad import functional  # noqa: E402
from wadi_lorad.lorad.autograd import AngleTerm, naive_forward, rotated_forward  # noqa: E402


def parse(argv=None):
    p = harness.base_parser(__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["1280x1280", "10240x1280"], help="out x in of the weight")
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 4096], help="N rows of x for the layer bench")
    p.add_argument("--compile", action="store_true", help="include torch.compile candidates")
    p.add_argument("--device", default="cpu")
    p.set_defaults(no_mem=True)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the previous library
def prev_wrap(theta: Tensor) -> Tensor:
    """lorad.functional.wrap_angles before the fast path: always torch.remainder."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def prev_rotate_pairs(w32: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """lorad.functional.rotate_pairs before the complex form: strided halves and a stack."""
    p = w32.reshape(w32.shape[0], -1, 2)
    a, b = p[..., 0], p[..., 1]
    return torch.stack((cos * a - sin * b, sin * a + cos * b), dim=-1).reshape(w32.shape)


@contextlib.contextmanager
def previous_library():
    """Run the library (rotate, the fused op, the naive op) with the previous implementations."""
    saved = functional.wrap_angles, functional.rotate_pairs
    functional.wrap_angles, functional.rotate_pairs = prev_wrap, prev_rotate_pairs
    try:
        yield
    finally:
        functional.wrap_angles, functional.rotate_pairs = saved


def as_previous(fn):
    def run(*a):
        with previous_library():
            return fn(*a)

    return run


# ----------------------------------------------------------------------------- rotation variants
def rot_library(w: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The whole weight build: theta = wrap(A @ B), cos, sin, rotation."""
    return functional.rotate(w, functional.angles(a, b))


def with_theta(rot):
    return lambda w, a, b: rot(w, functional.angles(a, b))


def rot_complex(w: Tensor, theta: Tensor) -> Tensor:
    """(a + ib) * (cos + i sin) = (a cos - b sin) + i (a sin + b cos): the LoRaD pair rotation."""
    wc = torch.view_as_complex(functional.up(w).reshape(w.shape[0], -1, 2).contiguous())
    e = torch.polar(torch.ones_like(theta), theta)
    return torch.view_as_real(wc * e).reshape(w.shape).to(w.dtype)


def make_rot_buffer(shape):
    buf = torch.empty(shape, dtype=torch.float32)
    tmp = torch.empty(shape[0], shape[1] // 2, dtype=torch.float32)

    def rot_buffer(w: Tensor, theta: Tensor) -> Tensor:
        c, s = torch.cos(theta), torch.sin(theta)
        p = functional.up(w).reshape(w.shape[0], -1, 2)
        a, b = p[..., 0], p[..., 1]
        o = buf.view(w.shape[0], -1, 2)
        torch.mul(c, a, out=tmp)
        torch.addcmul(tmp, s, b, value=-1, out=o[..., 0])
        torch.mul(s, a, out=tmp)
        torch.addcmul(tmp, c, b, out=o[..., 1])
        return buf if w.dtype == torch.float32 else buf.to(w.dtype)

    return rot_buffer


def rot_hook(w: Tensor, theta: Tensor) -> Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    odd, even = w[:, 0::2].float(), w[:, 1::2].float()
    out = torch.empty_like(w)
    out[:, 0::2] = c * odd - s * even
    out[:, 1::2] = s * odd + c * even
    return out


# ----------------------------------------------------------------------------- layer variants
class _ComplexFused(torch.autograd.Function):
    """The library's recompute-in-backward op with complex arithmetic (Linear, one factored term)."""

    @staticmethod
    def forward(ctx, x, w, a, b):
        ctx.save_for_backward(x, w, a, b)
        return F.linear(x, rot_complex(w, functional.angles(a, b)))

    @staticmethod
    def backward(ctx, g):
        x, w, a, b = ctx.saved_tensors
        theta = functional.angles(a, b)
        e = torch.polar(torch.ones_like(theta), theta)
        wc = torch.view_as_complex(w.reshape(w.shape[0], -1, 2).contiguous()) * e
        w_rot = torch.view_as_real(wc).reshape(w.shape)
        gx = g @ w_rot
        gw = g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        gc = torch.view_as_complex(gw.reshape(w.shape[0], -1, 2))
        d_theta = (gc * wc.conj()).imag  # = g_b a' - g_a b'
        return gx, None, d_theta @ b.t(), a.t() @ d_theta


class _SaveTheta(torch.autograd.Function):
    """Fused op that saves theta (o x in/2 fp32) to skip recomputing A @ B in backward."""

    @staticmethod
    def forward(ctx, x, w, a, b):
        theta = functional.angles(a, b)
        ctx.save_for_backward(x, w, a, b, theta)
        return F.linear(x, functional.rotate_pairs(w, torch.cos(theta), torch.sin(theta)))

    @staticmethod
    def backward(ctx, g):
        x, w, a, b, theta = ctx.saved_tensors
        w_rot = functional.rotate_pairs(w, torch.cos(theta), torch.sin(theta))
        gx = g @ w_rot
        gw = g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        d_theta = functional.angle_grad(w_rot, gw)
        return gx, None, d_theta @ b.t(), a.t() @ d_theta


def two_gemm(x, w, a, b):
    """y = (C*W) x + (S*W) (J x) with J x = (-x_odd, x_even) per pair: no W_rot, two GEMMs."""
    theta = functional.angles(a, b)
    c = torch.cos(theta).repeat_interleave(2, dim=1)
    s = torch.sin(theta).repeat_interleave(2, dim=1)
    xp = x.reshape(*x.shape[:-1], -1, 2)
    jx = torch.stack((xp[..., 1], -xp[..., 0]), -1).reshape(x.shape)
    # y_i = sum_k (c W_i,2k - s W_i,2k+1) x_2k + (s W_i,2k + c W_i,2k+1) x_2k+1
    #     = sum_j (C W)_ij x_j + sum_k s (W_i,2k x_2k+1 - W_i,2k+1 x_2k)
    return F.linear(x, c * w) + F.linear(jx, s * w)


def layer_candidates(w, a, b, compile_: bool, lora: tuple[Tensor, Tensor] | None = None):
    def fused(x):
        return rotated_forward(x, w, None, [AngleTerm(1.0, a, b)])

    def naive(x):
        return naive_forward(x, w, None, [AngleTerm(1.0, a, b)])

    c = {
        "fused": fused,
        "previous-fused": as_previous(fused),
        "naive": naive,
        "complex-fused": lambda x: _ComplexFused.apply(x, w, a, b),
        "save-theta": lambda x: _SaveTheta.apply(x, w, a, b),
        "two-gemm": lambda x: two_gemm(x, w, a, b),
    }
    if compile_:
        c["compiled"] = torch.compile(as_previous(naive), dynamic=False)
    if lora is not None:
        down, up = lora
        c["lora"] = lambda x: F.linear(x, w) + F.linear(F.linear(x, down), up)  # same rank, frozen W
    return c


# ----------------------------------------------------------------------------- main
def bench_rotation(args, o: int, i: int, w, a, b) -> list[dict]:
    rc = {"library": rot_library, "previous": as_previous(rot_library), "polar": with_theta(rot_complex),
          "buffer": with_theta(make_rot_buffer((o, i))), "hook": with_theta(rot_hook)}
    if args.compile:
        rc["compiled"] = torch.compile(as_previous(rot_library), dynamic=False)
    ref = rc["previous"](w, a, b)
    diffs = {k: float((f(w, a, b) - ref).abs().max()) for k, f in rc.items()}  # also the compile warm-up
    print(f"\n== weight build, W {o}x{i}, r {args.rank}: wrap(A@B), cos, sin, rotation; |diff| vs previous ==",
          flush=True)
    times = harness.interleaved({k: (lambda f=f: f(w, a, b)) for k, f in rc.items()}, args.repeats * 4, args.warmup,
                          args.device, progress=False)
    rows = harness.paired_rows(times, "library")
    for k in rows:
        rows[k].extra["max |diff|"] = f"{diffs[k]:.1e}"
    print(harness.fmt_table([rows[k] for k in rc], "library", extra_cols=["max |diff|"]))
    return harness.rows_json([rows[k] for k in rc])


def bench_layer(args, o: int, i: int, n: int, w, a, b, g) -> list[dict]:
    x = torch.randn(n, i, generator=g).requires_grad_(True)
    ar, br = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    down = (torch.randn(args.rank, i, generator=g) * 0.01).requires_grad_(True)
    up = (torch.randn(o, args.rank, generator=g) * 0.01).requires_grad_(True)
    cands = layer_candidates(w, ar, br, args.compile, (down, up))

    def run(f):
        y = f(x)
        y.square().mean().backward()
        grads = (x.grad, ar.grad, br.grad)
        x.grad = ar.grad = br.grad = down.grad = up.grad = None
        return y.detach(), grads

    y0, g0 = run(cands["fused"])
    diffs = {}
    for k, f in cands.items():
        if k == "lora":  # another adapter: a cost reference, not the same function
            run(f)
            diffs[k] = float("nan")
            continue
        y, gr = run(f)
        rel = [float((p - q).abs().max() / q.abs().max()) for p, q in zip(gr, g0)]
        diffs[k] = max(float((y - y0).abs().max()), *rel)
    print(f"\n== Linear {o}x{i}, r {args.rank}, N {n} tokens: forward+backward ==", flush=True)
    times = harness.interleaved({k: (lambda f=f: run(f)) for k, f in cands.items()}, args.repeats, args.warmup,
                          args.device, progress=False)
    rows = harness.paired_rows(times, "fused")
    col = "max diff (y abs, grads rel)"
    for k in rows:
        rows[k].extra[col] = f"{diffs[k]:.1e}"
    print(harness.fmt_table([rows[k] for k in cands], "fused", extra_cols=[col]))
    r = args.rank
    print(f"GEMM GFLOP: 3 x 2*N*o*i = {6 * n * o * i / 1e9:.2f} (fwd, grad x, weight grad); theta = A@B "
          f"{o * r * i / 1e9:.2f} per evaluation (fused: 2, naive: 1); dA + dB {2 * o * r * i / 1e9:.2f}; "
          f"two-gemm adds {2 * n * o * i / 1e9:.2f} per forward; LoRA: 2*2*N*o*i + 6*N*r*(o+i) = "
          f"{(4 * n * o * i + 6 * n * r * (o + i)) / 1e9:.2f}")
    return harness.rows_json([rows[k] for k in cands])


def main(argv=None) -> int:
    args = parse(argv)
    info = harness.begin(args)
    out = {"machine": info, "args": vars(args), "rotation": {}, "layer": {}}
    g = torch.Generator().manual_seed(0)
    for spec in args.shapes:
        o, i = (int(v) for v in spec.split("x"))
        w = torch.randn(o, i, generator=g) * 0.02
        a = torch.randn(o, args.rank, generator=g) * 0.05
        b = torch.randn(args.rank, i // 2, generator=g) * 0.05
        out["rotation"][spec] = bench_rotation(args, o, i, w, a, b)
        for n in args.tokens:
            out["layer"][f"{spec}/N{n}"] = bench_layer(args, o, i, n, w, a, b, g)
    harness.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
