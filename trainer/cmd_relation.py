"""``wadi relation --config run.yaml [--section.key value ...]``: ReVersion-style relation inversion."""

from __future__ import annotations

import argparse


def user_errors() -> tuple[type[Exception], ...]:
    from ..lorad.io import LoRaDFileError
    from .cmd_distill import user_errors as common
    from .imagefolder import ImageFolderError
    from .textinv import EmbeddingFileError

    return common() + (ImageFolderError, LoRaDFileError, EmbeddingFileError)


def add_parser(sub) -> argparse.ArgumentParser:
    from .cmd_distill import add_config_command

    return add_config_command(
        sub, "relation",
        help="learn a relation token <R> from exemplar images (ReVersion) as a ComfyUI embedding",
        description="Relation inversion on an SD-style base: captions put the placeholder where the relation "
        "goes ('a cat <R> a wall'); only the new token's embedding trains. Any config field can be overridden: "
        "--data.images exemplars --train.max_steps 500 --output.name painted_on.",
        config=(".relation", "RelationConfig"), runner=(".relation_train", "RelationTrainer"), errors=user_errors,
    )
