"""``wadi personalize --config run.yaml [--section.key value ...]``: a DreamBooth-style LoRaD fine-tune."""

from __future__ import annotations

import argparse


def user_errors() -> tuple[type[Exception], ...]:
    from ..lorad.io import LoRaDFileError
    from .cmd_distill import user_errors as common
    from .imagefolder import ImageFolderError

    return common() + (ImageFolderError, LoRaDFileError)


def add_parser(sub) -> argparse.ArgumentParser:
    from .cmd_distill import add_config_command

    return add_config_command(
        sub, "personalize",
        help="DreamBooth-style LoRaD fine-tune of a base model or a WaDi student on a folder of captioned images",
        description="Personalize a base model (eps objective) or a WaDi student (--model.student file.lorad."
        "safetensors; one-step objective) with a new LoRaD adapter. Any config field can be overridden: "
        "--data.images my_dog --data.instance_prompt 'a photo of sks dog' --train.max_steps 400.",
        config=(".personalize", "PersonalizeConfig"), runner=(".personalize_train", "Personalizer"),
        errors=user_errors,
    )
