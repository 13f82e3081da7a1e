"""Files written for sharing carry no local paths: provenance keeps file names and hashes only."""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import pytest
from distill_helpers import small_cfg, tiny_bases_fixture, write_prompts  # noqa: F401  (fixture)
from wadi_lorad.lorad.metadata import PROVENANCE_PREFIX, build_metadata, shareable


@pytest.mark.parametrize("value,want", [
    ("/home/me/models/stable-diffusion-v1-5/", "stable-diffusion-v1-5"),
    ("./sd15", "sd15"), ("~/data/captions.txt", "captions.txt"), ("runs/a/prompts.txt", "prompts.txt"),
    ("C:\\Users\\me\\sd15", "sd15"), (Path("/srv/x/base"), "base"), (PureWindowsPath("D:/m/base"), "base"),
    # not paths: kept as they are
    ("a cat / a dog", "a cat / a dog"), ("https://example.org/a/b", "https://example.org/a/b"), ("sd15", "sd15"),
    ("paper-student", "paper-student"), (3, 3), (0.5, 0.5),
])
def test_shareable(value, want):
    assert shareable(value) == want


def test_build_metadata_strips_folders_from_provenance():
    md = build_metadata(arch="sd15", rank=4, target_preset="paper-student", title="t",
                        provenance={"base_model": "/home/me/sd15", "prompts": Path("/data/p.txt"), "seed": 3,
                                    "base_fingerprint": "ab12", "instance_prompt": "a photo of sks dog / cat"})
    prov = {k[len(PROVENANCE_PREFIX):]: v for k, v in md.items() if k.startswith(PROVENANCE_PREFIX)}
    assert prov == {"base_model": "sd15", "prompts": "p.txt", "seed": "3", "base_fingerprint": "ab12",
                    "instance_prompt": "a photo of sks dog / cat"}


def test_distilled_student_file_has_no_local_path(tiny_bases, tmp_path):
    from wadi_lorad.lorad.io import load_lorad
    from wadi_lorad.trainer.distill import Distiller

    base = tiny_bases("sd")
    out = Distiller(small_cfg(base, write_prompts(tmp_path / "p.txt"), tmp_path / "run", train__max_steps=1),
                    progress=False).run()
    md = load_lorad(out["student"]).metadata
    leaks = {k: v for k, v in md.items() if str(tmp_path) in v or str(base) in v or str(Path.home()) + "/" in v}
    assert leaks == {}
    assert md[PROVENANCE_PREFIX + "base_model"] == base.name and md[PROVENANCE_PREFIX + "prompts"] == "p.txt"
    assert md[PROVENANCE_PREFIX + "base_fingerprint"]  # the base is identified by its hash instead


def test_committed_json_carries_no_local_paths():
    """Shipped and shared JSON (docs/perf, workflows, assets) must not name this machine's folders."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "*.json"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files, "git ls-files found no JSON: the check would pass vacuously"
    local = re.compile(r'"(/(?:work|root|home|tmp|Users)/[^"]*|[A-Za-z]:\\\\[^"]*)"')
    hits = [f"{name}: {m.group(1)}" for name in files
            for m in local.finditer((root / name).read_text(errors="replace"))]
    assert not hits, "absolute local paths in committed JSON:\n" + "\n".join(hits[:20])
