"""``wadi personalize --config run.yaml [--section.key value ...]``: a DreamBooth-style LoRaD fine-tune."""

from __future__ import annotations

import argparse


def user_errors() -> tuple[type[Exception], ...]:
    from ..lorad.io import LoRaDFileError
    from .cmd_distill import user_errors as common
    from .imagefolder import ImageFolderError

    return common() + (ImageFolderError, LoRaDFileError)


def run(args: argparse.Namespace) -> int:
    from .cmd_distill import config_command
    from .personalize import PersonalizeConfig, from_dict

    def train(cfg):
        from .personalize_train import Personalizer

        return Personalizer(cfg).run()

    return config_command(args, PersonalizeConfig, from_dict, train, user_errors())


def add_parser(sub) -> argparse.ArgumentParser:
    from .cmd_distill import add_config_arguments

    p = sub.add_parser(
        "personalize",
        help="DreamBooth-style LoRaD fine-tune of a base model or a WaDi student on a folder of captioned images",
        description="Personalize a base model (eps objective) or a WaDi student (--model.student file.lorad."
        "safetensors; one-step objective) with a new LoRaD adapter. Any config field can be overridden: "
        "--data.images my_dog --data.instance_prompt 'a photo of sks dog' --train.max_steps 400.",
    )
    add_config_arguments(p, "PersonalizeConfig")
    p.set_defaults(func=run, accepts_overrides=True)
    return p
