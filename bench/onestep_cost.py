"""One-step generation cost: ``lorad.onestep.generate`` + VAE decode vs its floor (one UNet forward + decode).

Candidates, timed interleaved on the same latents and text embeddings:

* ``floor``          - one bare UNet forward at t=999 plus the VAE decode (the least any
                       one-step generator can cost);
* ``onestep-merged`` - ``lorad.onestep.generate`` with the student rotation merged into
                       the weights (what a saved merged UNet or ComfyUI's patch gives);
* ``onestep-live``   - the same with the student LoRaD active on the fly (every adapted
                       weight is rotated inside each forward);
* ``teacher-25cfg``  - the teacher's 25-step DDIM with CFG (cond/uncond batched) + decode;
* ``unet-fwd``       - the UNet forward alone (shows how the floor splits into UNet and decode).

Models: the tiny-world teacher (``assets/tinyworld/teacher``, when shipped) and an
SD1.5-width UNet (random init) with an SD-shaped VAE decoder::

    python bench/onestep_cost.py
    python bench/onestep_cost.py --models sd15 --latent 64 --repeats 3 --json onestep.json

Goal (issue 6): one-step / floor <= 1.05.
"""

from __future__ import annotations

import sys

import harness
import torch

harness.load_package()
import models  # noqa: E402

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, scaling_factor=0.18215)


def parse(argv=None):
    p = harness.base_parser(__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "sd15-lite"], help="tiny | sd15-lite | sd15")
    p.add_argument("--latent", type=int, default=32, help="latent side for the SD-width UNets (tiny: its own)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=256, help="student LoRaD rank (paper-student)")
    p.add_argument("--student", default=None, help="a .lorad file to use as the student (default: random r-256)")
    p.add_argument("--teacher-steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--no-teacher", action="store_true", help="skip the multi-step teacher")
    p.add_argument("--device", default="cpu")
    p.set_defaults(no_mem=True)
    return p.parse_args(argv)


def load_models(kind: str, device: str):
    from diffusers import AutoencoderKL

    unet = models.build_unet(kind, device=device)
    if kind == "tiny":
        vae = AutoencoderKL.from_pretrained(models.TINY_TEACHER / "vae")
    else:
        torch.manual_seed(0)
        vae = AutoencoderKL(**SD_VAE)
    return unet, vae.to(device).eval().requires_grad_(False)


def add_student(unet, args) -> None:
    from wadi_lorad.lorad import inject

    if args.student:
        from wadi_lorad.lorad import io as lorad_io

        loaded = lorad_io.load_lorad(args.student)
        state = getattr(loaded, "state", loaded)
        inject.load_adapter_state(unet, "student", state)
    else:
        inject.inject(unet, "student", "paper-student", rank=args.rank)
        models._randomize([la.lorad["student"].A for _, la in inject.lorad_layers(unet)], 1e-2, 0)
    inject.set_active(unet, "student")


def build_merged(base, args):
    """A copy of ``base`` whose student layers hold their own rotated (merged) weights."""
    from wadi_lorad.lorad import inject

    merged = models.share_base_copy(base)
    add_student(merged, args)
    rotated = {n: layer.rotated_weight() for n, layer in inject.lorad_layers(merged)}
    inject.remove(merged)
    for n, w in rotated.items():
        merged.get_submodule(n).weight = torch.nn.Parameter(w, requires_grad=False)
    return merged


def candidates(args, base, vae, merged, live, noise, cond, uncond):
    from diffusers import DDIMScheduler
    from wadi_lorad.lorad.onestep import generate, scaled_linear_alphas_cumprod

    ac = scaled_linear_alphas_cumprod()
    sf = vae.config.scaling_factor
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)

    def eps_of(unet):
        return lambda x, t: unet(x, torch.full((x.shape[0],), t, device=x.device), encoder_hidden_states=cond).sample

    def decode(z):
        return vae.decode(z / sf).sample

    @torch.no_grad()
    def floor():
        t = torch.full((noise.shape[0],), 999, device=noise.device)
        eps = merged(noise, t, encoder_hidden_states=cond).sample
        return decode(noise - eps)  # latent arithmetic is negligible; the real formula is in generate

    @torch.no_grad()
    def unet_only():
        t = torch.full((noise.shape[0],), 999, device=noise.device)
        return merged(noise, t, encoder_hidden_states=cond).sample

    @torch.no_grad()
    def onestep(unet):
        return decode(generate(eps_of(unet), noise, ac))

    @torch.no_grad()
    def teacher():
        sched.set_timesteps(args.teacher_steps)
        x = noise
        both = torch.cat([uncond, cond])
        for t in sched.timesteps:
            tt = torch.full((2 * x.shape[0],), int(t), device=x.device)
            e_u, e_c = base(torch.cat([x, x]), tt, encoder_hidden_states=both).sample.chunk(2)
            x = sched.step(e_u + args.cfg * (e_c - e_u), t, x).prev_sample
        return decode(x)

    cands = {"floor": floor, "onestep-merged": lambda: onestep(merged), "onestep-live": lambda: onestep(live),
             "unet-fwd": unet_only}
    if not args.no_teacher:
        cands["teacher-25cfg"] = teacher
    return cands


def run_model(args, kind: str) -> list[dict] | None:
    try:
        base, vae = load_models(kind, args.device)
    except FileNotFoundError as e:
        print(f"\n== {kind}: skipped ({e}) ==")
        return None
    side = int(base.config.sample_size) if kind == "tiny" else args.latent
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(args.batch, base.config.in_channels, side, side, generator=g).to(args.device)
    dim = base.config.cross_attention_dim
    cond = torch.randn(args.batch, 77, dim, generator=g).to(args.device)
    uncond = torch.randn(args.batch, 77, dim, generator=g).to(args.device)
    merged = build_merged(base, args)
    live = models.share_base_copy(base)
    add_student(live, args)
    cands = candidates(args, base, vae, merged, live, noise, cond, uncond)
    load = harness.wait_for_quiet(args.max_load, args.wait)
    print(f"\n== {kind}: latent {side}x{side}, batch {args.batch}, student r{args.rank}"
          f"{' from ' + args.student if args.student else ' (random)'}, teacher {args.teacher_steps} steps "
          f"CFG {args.cfg}, load {load:.2f} ==", flush=True)
    times = harness.interleaved(cands, args.repeats, args.warmup, args.device)
    rows = harness.paired_rows(times, "floor")
    table = [rows[k] for k in cands]
    print(harness.fmt_table(table, "floor"))
    if "teacher-25cfg" in rows:
        for k in ("onestep-merged", "onestep-live"):
            sp = [a / b for a, b in zip(times["teacher-25cfg"], times[k])]
            print(f"speedup of {k} over the teacher's {args.teacher_steps}-step CFG: "
                  f"median {harness.Stat.of(sp).median:.1f}x (range {min(sp):.1f}-{max(sp):.1f})")
    return harness.rows_json(table)


def main(argv=None) -> int:
    args = parse(argv)
    info = harness.begin(args)
    results = {}
    for kind in args.models:
        table = run_model(args, kind)
        if table is not None:
            results[kind] = table
    harness.write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
