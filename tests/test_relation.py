"""Relation inversion (``wadi relation``): the steering loss and t sampling by formula, the new token,
the embedding file ComfyUI reads, a short run that trains only the token, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from finetune_helpers import relation_cfg, tiny_world_fixture  # noqa: F401  (fixture)
from safetensors import safe_open
from wadi_lorad.trainer.backbones import load_backbone
from wadi_lorad.trainer.config import ConfigError
from wadi_lorad.trainer.events import read_events
from wadi_lorad.trainer.imagefolder import ImageFolderError
from wadi_lorad.trainer.relation_train import RelationTrainer
from wadi_lorad.trainer.textinv import (
    EmbeddingFileError,
    add_tokens,
    expand_embedding_refs,
    importance_weights,
    install_embedding,
    load_embedding,
    save_embedding,
    steer_loss,
)


def test_steer_loss_equals_the_infonce_formula():
    rng = np.random.default_rng(0)
    r, pos, neg = rng.normal(size=6), rng.normal(size=(3, 6)), rng.normal(size=(5, 6))
    tau = 0.07

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    num = sum(math.exp(cos(r, p) / tau) for p in pos)
    den = num + sum(math.exp(cos(r, n) / tau) for n in neg)
    want = -math.log(num / den)
    got = steer_loss(torch.tensor(r), torch.tensor(pos), torch.tensor(neg), tau)
    assert abs(float(got) - want) < 1e-5
    # Only r gets a gradient, and it lowers the loss.
    rv = torch.tensor(r, dtype=torch.float32, requires_grad=True)
    pt, nt = torch.tensor(pos, dtype=torch.float32, requires_grad=True), torch.tensor(neg, dtype=torch.float32)
    steer_loss(rv, pt, nt, tau).backward()
    assert pt.grad is None and rv.grad is not None
    assert float(steer_loss(rv.detach() - 1e-3 * rv.grad, pt.detach(), nt, tau)) < float(got)


def test_importance_sampling_distribution():
    w = importance_weights(1000, 0.5).numpy()
    t = np.arange(1000)
    ref = 1 - 0.5 * np.cos(np.pi * t / 1000)
    assert np.allclose(w, ref / ref.sum(), rtol=1e-12) and abs(w.sum() - 1) < 1e-12
    assert w[999] / w[0] == pytest.approx((1 + 0.5 * math.cos(math.pi / 1000 * 1)) / 0.5, rel=1e-2)
    assert np.allclose(importance_weights(1000, 0.0).numpy(), 1e-3)  # alpha 0 = uniform


def test_added_token_leaves_the_table_alone(tiny_world):
    bb = load_backbone(tiny_world["base"], vae=False)
    tok, enc = bb.text[0]
    before = bb.encode_prompts(["a red circle left of a blue square"]).embeds
    table = enc.get_input_embeddings().weight.detach().clone()
    vec = torch.randn(2, table.shape[1])
    mod = add_tokens(tok, enc, ["<R>", "<R>_1"], vec, trainable=True)
    assert tok.convert_tokens_to_ids(["<R>", "<R>_1"]) == [table.shape[0], table.shape[0] + 1]
    assert torch.equal(bb.encode_prompts(["a red circle left of a blue square"]).embeds, before)
    out = enc.get_input_embeddings()(torch.tensor([[5, table.shape[0] + 1, table.shape[0]]]))
    assert torch.equal(out[0, 0], table[5]) and torch.equal(out[0, 1], vec[1]) and torch.equal(out[0, 2], vec[0])
    bb.encode_prompts(["a red circle <R> <R>_1 a blue square"], grad=True).embeds.sum().backward()
    assert mod.vectors.grad is not None and mod.vectors.grad.abs().sum() > 0
    assert not any(p.requires_grad for n, p in enc.named_parameters() if not n.endswith("vectors"))
    with pytest.raises(ValueError, match="already exist"):
        add_tokens(tok, enc, ["<R>"], vec[:1])


def test_embedding_file_has_the_keys_comfyui_reads(tmp_path):
    vec = torch.randn(2, 128)
    p = save_embedding(tmp_path / "rel.safetensors", vec, {"wadi.placeholder": "<R>"})
    with safe_open(str(p), "pt") as f:
        assert list(f.keys()) == ["emb_params"] and f.get_tensor("emb_params").shape == (2, 128)
        assert f.metadata()["wadi.placeholder"] == "<R>"
    assert torch.equal(load_embedding(p, 128), vec)
    with pytest.raises(FileExistsError):
        save_embedding(p, vec)
    # The other layouts ComfyUI's load_embed accepts.
    from safetensors.torch import save_file

    save_file({"clip_g": torch.zeros(1, 1280), "clip_l": vec[:1].contiguous()}, str(tmp_path / "xl.safetensors"))
    assert torch.equal(load_embedding(tmp_path / "xl.safetensors", 128), vec[:1])
    torch.save({"string_to_param": {"*": vec}, "name": "x"}, tmp_path / "a1111.pt")
    assert torch.equal(load_embedding(tmp_path / "a1111.pt"), vec)
    with pytest.raises(EmbeddingFileError, match="width 128, this text encoder needs 768"):
        load_embedding(p, 768)
    with pytest.raises(EmbeddingFileError, match="does not exist"):
        load_embedding(tmp_path / "missing.safetensors")


def test_short_relation_run_trains_only_the_token(tiny_world, tmp_path):
    """CI run: a few steps; UNet and text encoder untouched; the file reloads to the same conditioning."""
    tr = RelationTrainer(relation_cfg(tiny_world, tmp_path / "run", output__sample_every=3), progress=False)
    out = tr.run()
    bb = tr.bb
    tok, enc = bb.text[0]
    fresh = load_backbone(tiny_world["base"], vae=False)
    for k, v in fresh.denoiser.state_dict().items():
        assert torch.equal(bb.denoiser.state_dict()[k], v), k
    ftok, fenc = fresh.text[0]
    init_table = fenc.get_input_embeddings().weight
    assert torch.equal(enc.get_input_embeddings().base.weight, init_table)
    for k, v in fenc.state_dict().items():
        assert torch.equal(enc.state_dict()[k if "token_embedding" not in k else
                                            k.replace("token_embedding.", "token_embedding.base.")], v), k
    and_id = ftok.encode("and", add_special_tokens=False)[0]
    learned = tr.tokens.vectors.detach()
    assert not torch.equal(learned[0], init_table[and_id])  # it moved from the initializer
    vec = load_embedding(out["embedding"], 128)
    assert torch.equal(vec, learned)
    # Installed in a fresh text encoder, "embedding:relation" conditions exactly like training's <R>.
    text = install_embedding(ftok, fenc, out["embedding"])
    prompt = expand_embedding_refs("a red circle embedding:relation a blue square", {"relation": text})
    assert torch.equal(fresh.encode_prompts([prompt]).embeds, bb.encode_prompts(["a red circle <R> a blue square"]).embeds)
    # The one-step sampler takes the token: wadi sample --lorad student --embedding relation.safetensors.
    from wadi_lorad.trainer.cli import main

    args = ["sample", "--base", str(tiny_world["base"]), "--lorad", str(tiny_world["student"]),
            "--embedding", str(out["embedding"]), "--out", str(tmp_path / "s.png")]
    assert main([*args, "--prompt", "a red circle embedding:relation a blue square"]) == 0
    assert (tmp_path / "s.png").is_file()
    assert main([*args, "--prompt", "a embedding:nope b", "--force"]) == 2
    ev = read_events(tmp_path / "run" / "events.jsonl")
    steps = [e for e in ev if e["event"] == "step"]
    assert len(steps) == 3 and all({"loss", "loss_denoise", "loss_steer"} <= set(e) for e in steps)
    assert ev[-1]["event"] == "done" and ev[0]["positives_basis"] >= 4


def test_relation_bad_input(tiny_world, tmp_path):
    no_token = tmp_path / "plain"
    no_token.mkdir()
    for f in sorted(tiny_world["relation"].iterdir()):
        (no_token / f.name).write_bytes(f.read_bytes())
    (no_token / "001.txt").write_text("a red circle left of a blue square\n")
    with pytest.raises(ImageFolderError, match=r"001.png: caption .* does not contain the placeholder '<R>'"):
        RelationTrainer(relation_cfg(tiny_world, tmp_path / "o1", data__images=no_token))
    with pytest.raises(ConfigError, match="token.initializer: 'zzqx' is 4 tokens"):
        RelationTrainer(relation_cfg(tiny_world, tmp_path / "o2", token__initializer="zzqx"))
    with pytest.raises(ConfigError, match="token.placeholder: 'red' is already a token"):
        RelationTrainer(relation_cfg(tiny_world, tmp_path / "o2", token__placeholder="red"))
    with pytest.raises(ConfigError, match="data.captions: must be 'files' or 'auto'"):
        RelationTrainer(relation_cfg(tiny_world, tmp_path / "o3", data__captions="instance"))
    with pytest.raises(EmbeddingFileError, match="only \\['relation'\\] are loaded"):
        expand_embedding_refs("a embedding:other b", {"relation": "<relation>"})
