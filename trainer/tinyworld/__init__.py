"""The tiny world: a procedural captioned image domain and a miniature Stable Diffusion 1.5 for it.

Public API (names other modules rely on):

* domain: :func:`sample_captions`, :func:`render`, :func:`parse_caption`, :class:`Scene`,
  :class:`CaptionedImages` (a torch Dataset);
* models: :func:`build_tiny_sd` (random-init diffusers SD1.5 folder for tests), :func:`load_pipeline`;
* metrics: :func:`fixed_eval_prompts`, :func:`eval_noise`, :func:`evaluate_images`, :func:`summarize`
  (see :mod:`.metrics`);
* the shipped teacher folder :data:`DEFAULT_TEACHER` (``assets/tinyworld/teacher``).
"""

from .data import CaptionedImages, render_prompts
from .domain import Scene, Spec, caption_scene, parse_caption, render, sample_captions, sample_scene, spec_matches
from .metrics import DEFAULT_CLASSIFIER, DEFAULT_TEACHER, eval_noise, evaluate_images, fixed_eval_prompts, summarize
from .models import build_tiny_sd, load_pipeline

__all__ = [
    "CaptionedImages",
    "render_prompts",
    "Scene",
    "Spec",
    "caption_scene",
    "parse_caption",
    "render",
    "sample_captions",
    "sample_scene",
    "spec_matches",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_TEACHER",
    "eval_noise",
    "evaluate_images",
    "fixed_eval_prompts",
    "summarize",
    "build_tiny_sd",
    "load_pipeline",
]
