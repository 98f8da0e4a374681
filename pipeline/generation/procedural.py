"""The `procedural` prototype source: demo-world exemplars instead of a text-to-image model.

It renders isolated exemplars of one demo-world class (its colour, texture and shape) on a
neutral background. It knows only the demo world's classes; any other class name fails
with a message pointing at the diffusers backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pipeline.demo_world.exemplars import render_exemplar

GENERATOR_ID = "procedural-demo-world"


@dataclass(frozen=True)
class ProceduralGenerator:
    """Implements the generator protocol of `generate_class_images` for one demo class.

    The prompt text is recorded in the manifest but does not change the pixels: the
    renderer draws the class by its name.
    """

    class_name: str
    size: int
    max_blank_retries: int = 0
    generator_id: str = GENERATOR_ID

    def __post_init__(self) -> None:
        render_exemplar(self.class_name, seed=0, size=8)  # fails early for a non-demo class

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return [render_exemplar(self.class_name, seed=seed, size=self.size) for seed in seeds]
