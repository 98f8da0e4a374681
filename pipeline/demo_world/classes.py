"""The demo world's class table: one row per kind of surface the generator builds.

Every row ties together everything that is known about a class:

* its raw label in each real format it is written in (nuScenes lidarseg index and
  SemanticKITTI raw id), so the same world can be read through both real readers;
* its appearance in the cameras (a base colour, a second colour and a procedural
  texture of the hit point's world coordinates, see `appearance.py`);
* its lidar intensity (0..255, nuScenes style; SemanticKITTI remission is intensity/255).

Colours are chosen to be far apart from each other so that even a randomly initialised
vision transformer separates the classes (see the note above DEMO_CLASSES). The table is
the single source of truth that the procedural prototype generator and the project
vocabulary reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The 32 nuScenes-lidarseg categories, in `index` order (category.json of nuScenes-lidarseg).
NUSCENES_LIDARSEG_CATEGORIES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)

# Labels of the spurious lidar returns (dust, multi-path) the simulator adds.
NUSCENES_NOISE_INDEX = 0
KITTI_OUTLIER_ID = 1
# "Nothing was hit" in the truth images.
NUSCENES_TRUTH_NOTHING = 255
KITTI_TRUTH_NOTHING = 0

# SemanticKITTI raw ids used by the demo world, with their official names.
KITTI_RAW_NAMES: dict[int, str] = {
    0: "unlabeled",
    1: "outlier",
    10: "car",
    11: "bicycle",
    13: "bus",
    18: "truck",
    30: "person",
    40: "road",
    48: "sidewalk",
    50: "building",
    51: "fence",
    70: "vegetation",
    71: "trunk",
    72: "terrain",
    80: "pole",
    99: "other-object",
}


@dataclass(frozen=True)
class DemoClass:
    """One class of the demo world.

    name: the demo vocabulary name (also the prototype folder name).
    description: a short phrase a text prompt can use.
    nuscenes_index: raw nuScenes-lidarseg index (0..31).
    kitti_id: raw SemanticKITTI id (the low 16 bits of a .label entry).
    color, color2: RGB base colour and second texture colour.
    texture: name of the procedural pattern (see appearance.TEXTURES).
    texture_scale: the pattern's period in metres.
    intensity: lidar intensity 0..255 (noise is added per point).
    is_thing: countable objects get an instance id in SemanticKITTI labels.
    """

    name: str
    description: str
    nuscenes_index: int
    kitti_id: int
    color: tuple[int, int, int]
    color2: tuple[int, int, int]
    texture: str
    texture_scale: float
    intensity: float
    is_thing: bool


# Colours. The demo teacher is a randomly initialised ViT whose patch feature is close to a
# random linear map of the patch's ImageNet-normalised pixels, and features are compared
# after L2 normalisation, so what tells classes apart is the direction of their colour
# from the ImageNet mean grey. The evaluation classes sit near the vertices of an
# icosahedron in that space (55 degrees or more apart): road at the dark pole, building at
# the light pole, the classes that stand on the road (vehicles, cones) and the sidewalk on
# the dark ring around it, the rest on the light ring. Classes that often share a border in
# the images are neighbours (or opposites) there, so a patch straddling their border reads
# as one of the two rather than as a third class. Classes counted as one evaluation class
# (building/pole, trunk/vegetation) are close. The second colour is only 8% darker, so a
# texture never outweighs the base colour within a 14 x 14 patch.
DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("road", "asphalt road", 24, 40, (50, 50, 55), (46, 46, 51), "asphalt", 0.35, 12.0, False),
    DemoClass("sidewalk", "paved sidewalk", 26, 48, (148, 115, 0), (136, 106, 0), "tiles", 0.6, 28.0, False),
    DemoClass("terrain", "grass terrain", 27, 72, (162, 220, 56), (149, 202, 52), "grass", 0.25, 18.0, False),
    DemoClass("building", "building facade", 28, 50, (218, 209, 196), (201, 192, 180), "windows", 3.0, 45.0, False),
    DemoClass("pole", "metal pole", 28, 80, (223, 201, 166), (205, 185, 153), "rings", 0.7, 95.0, False),
    DemoClass("trunk", "tree trunk", 30, 71, (70, 190, 130), (64, 175, 120), "bark", 0.12, 22.0, False),
    DemoClass("vegetation", "tree foliage", 30, 70, (75, 212, 145), (69, 195, 133), "leaves", 0.45, 6.0, False),
    DemoClass("car", "car", 17, 10, (11, 110, 132), (10, 101, 121), "panels", 1.2, 70.0, True),
    DemoClass("truck", "truck", 23, 18, (48, 170, 35), (44, 156, 32), "ribs", 0.45, 60.0, True),
    DemoClass("bus", "bus", 16, 13, (88, 18, 149), (81, 17, 137), "window_band", 1.0, 82.0, True),
    DemoClass("pedestrian", "pedestrian", 2, 30, (97, 117, 227), (89, 108, 209), "checker", 0.18, 34.0, True),
    DemoClass("barrier", "road barrier", 9, 51, (248, 123, 72), (228, 113, 66), "diagonal", 0.5, 120.0, True),
    DemoClass("traffic_cone", "traffic cone", 12, 99, (175, 16, 60), (161, 15, 55), "rings", 0.25, 200.0, True),
    DemoClass("bicycle", "bicycle", 14, 11, (207, 57, 179), (190, 52, 165), "checker", 0.25, 52.0, True),
)

DEMO_CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in DEMO_CLASSES)
CLASS_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(DEMO_CLASSES)}

# Lookup tables indexed by the demo class index (used to turn hit class arrays into labels).
NUSCENES_INDEX_OF_CLASS = np.array([c.nuscenes_index for c in DEMO_CLASSES], dtype=np.uint8)
KITTI_ID_OF_CLASS = np.array([c.kitti_id for c in DEMO_CLASSES], dtype=np.uint32)
INTENSITY_OF_CLASS = np.array([c.intensity for c in DEMO_CLASSES], dtype=np.float64)
IS_THING_CLASS = np.array([c.is_thing for c in DEMO_CLASSES], dtype=bool)


def demo_class(name: str) -> DemoClass:
    """The row of a demo class by name; ValueError names the known classes."""
    try:
        return DEMO_CLASSES[CLASS_INDEX[name]]
    except KeyError:
        raise ValueError(f"unknown demo class {name!r}; the demo classes are {', '.join(DEMO_CLASS_NAMES)}") from None


def _check_table() -> None:
    assert len(NUSCENES_LIDARSEG_CATEGORIES) == 32
    for c in DEMO_CLASSES:
        assert 0 < c.nuscenes_index < 32 and c.kitti_id in KITTI_RAW_NAMES, c
        assert 0.0 <= c.intensity <= 255.0, c


_check_table()
