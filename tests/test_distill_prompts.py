"""Prompt files: txt / jsonl / COCO captions, and a clear error for each kind of bad file."""

from __future__ import annotations

import json

import pytest
from wadi_lorad.trainer.prompts import PromptFileError, load_prompts


def test_txt_strips_blank_lines_and_duplicates(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a red circle\n\n  a blue square  \na red circle\n")
    assert load_prompts(p) == ["a red circle", "a blue square"]
    assert load_prompts(p, max_prompts=1) == ["a red circle"]


def test_jsonl_by_key_or_string(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "one"}\n"two"\n\n{"prompt": "three", "x": 1}\n')
    assert load_prompts(p) == ["one", "two", "three"]
    q = tmp_path / "q.jsonl"
    q.write_text('{"caption": "c1"}\n')
    assert load_prompts(q, jsonl_key="caption") == ["c1"]


def test_coco_captions(tmp_path):
    p = tmp_path / "captions_train2014.json"
    p.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "caption": "A cat. "},
                                                            {"image_id": 1, "caption": "A cat."},
                                                            {"image_id": 2, "caption": "Two dogs"}]}))
    assert load_prompts(p) == ["A cat.", "Two dogs"]


@pytest.mark.parametrize(("name", "text", "fmt", "needle"), [
    ("missing.txt", None, "auto", "does not exist"),
    ("empty.txt", "\n \n", "auto", "no prompts found"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "auto", "bad.jsonl:2: not valid JSON"),
    ("key.jsonl", '{"text": "ok"}\n', "auto", "key.jsonl:1: expected a string field 'prompt'"),
    ("c.json", '{"images": []}', "auto", "needs a top-level 'annotations' list"),
    ("c2.json", '{"annotations": [{"id": 3}]}', "auto", "annotations[0] has no string 'caption'"),
    ("broken.json", '{"annotations": [', "auto", "broken.json: not valid JSON"),
    ("p.csv", "a,b", "auto", "cannot tell the prompt format"),
    ("p.txt", "a", "xml", "unknown prompt format"),
])
def test_bad_prompt_files(tmp_path, name, text, fmt, needle):
    p = tmp_path / name
    if text is not None:
        p.write_text(text)
    with pytest.raises(PromptFileError) as e:
        load_prompts(p, fmt)
    assert needle in str(e.value)
    assert name in str(e.value) or fmt == "xml"
