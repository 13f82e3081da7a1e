"""One re-noise rule for few-step sampling, shared by `wadi sample --steps N` and the WaDi Sampler node
(lorad.onestep.renoise_noise): image j's fresh noise before step i+1 comes from a CPU generator seeded
``seed_j + 10000 * i``.  The node side is checked in the live ComfyUI test (test_few_steps_equal_diffusers_reference,
whose reference writes this rule out by hand)."""

from __future__ import annotations

import torch
from distill_helpers import small_cfg, tiny_bases_fixture, write_prompts  # noqa: F401  (fixture)
from wadi_lorad.lorad import onestep
from wadi_lorad.trainer.distill import Distiller


def written_out(seeds, shape, steps):
    out = []
    for i in range(1, steps):
        per_image = []
        for s in seeds:
            g = torch.Generator()
            g.manual_seed(s + 10_000 * i)
            per_image.append(torch.randn(*shape, generator=g))
        out.append(torch.stack(per_image))
    return out


def test_renoise_noise_is_the_written_out_rule():
    got = onestep.renoise_noise([7, 8], (4, 5, 5), 4)
    want = written_out([7, 8], (4, 5, 5), 4)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))
    assert onestep.renoise_noise([7], (4, 5, 5), 1) == []  # one step: nothing to re-noise
    assert not torch.equal(got[0][0], got[1][0]) and not torch.equal(got[0][0], got[0][1])


def test_wadi_sample_steps_use_the_shared_rule(tiny_bases, tmp_path, monkeypatch):
    from wadi_lorad.trainer.cli import main

    base = tiny_bases("sd")
    out = Distiller(small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=1),
                    progress=False).run()
    seen = []
    real = onestep.generate

    def spy(fn, noise, *args, **kw):
        seen.append((noise.shape, kw.get("renoise")))
        return real(fn, noise, *args, **kw)

    monkeypatch.setattr(onestep, "generate", spy)
    rc = main(["sample", "--base", str(base), "--lorad", str(out["student"]), "--prompt", "a red circle",
               "--prompt", "blue square", "--steps", "3", "--seed", "5", "--out", str(tmp_path / "s.png")])
    assert rc == 0 and len(seen) == 1
    shape, renoise = seen[0]
    want = written_out([5, 6], shape[1:], 3)
    assert len(renoise) >= 2 and all(torch.equal(a, b) for a, b in zip(renoise[:2], want))
