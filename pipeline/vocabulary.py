"""The vocabulary: prompt classes, the prompts that draw them and the evaluation class each counts as.

`vocabulary:` in params.yaml maps a prompt class name to a `VocabularyClassConfig`. Several
prompt classes may count as one evaluation class (building, pole -> manmade); the check that
every label is an evaluation class of the dataset spans sections and lives in `pipeline.config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class VocabularyClassConfig:
    """One entry of the `vocabulary:` params section, a prompt class: the text prompts that draw it and the evaluation label it counts as.

    Prompts are templates: "{}" is replaced by the class name ("a photo of a {} in a street").
    """

    label: str
    prompts: tuple[str, ...] = ("a photo of a {}",)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("prompts must list at least one prompt template")


# A class name names a folder (cache/prototypes/<name>) and is one word of a `dvc repro` command
# line (dvc.yaml's foreach), so it is a plain word: a space would split the command, a slash
# would nest folders. Prompts carry the readable text ("a photo of a traffic cone").
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def class_name_problem(name: object) -> str | None:
    """Why `name` cannot be a vocabulary class name, or None when it can."""
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
        return (f"{name!r} is not a valid class name: use letters, digits, '_' and '-' only, starting with a "
                "letter or digit (it names a folder and a word of the dvc command line; write 'traffic_cone' and "
                "put the readable words in its prompts)")
    return None
