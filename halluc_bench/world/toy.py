"""Configuration and scene sampling of the synthetic toy world.

A scene is a 2x2 grid of cells (reading order: 0 top left, 1 top right, 2 bottom left,
3 bottom right) with one glyph per occupied cell, so an image contains 1 to 4 objects. Objects are
drawn one category at a time. When a category that belongs to a co-occurrence pair is drawn, a
coin with probability `cooccurrence_rate` decides whether its partner is placed right after it.
If the coin says no, the partner is barred from that image. So among images that contain either
member of a pair, the share that contains both is `cooccurrence_rate` in expectation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .captions import PHRASINGS, Mention, render_caption
from .categories import coco_category

POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

# Named palette (RGB). "orange" is left out because it is also a COCO category.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (60, 100, 240),
    "yellow": (235, 215, 40),
    "purple": (160, 70, 210),
    "white": (240, 240, 240),
    "pink": (250, 130, 190),
    "cyan": (40, 210, 220),
}

SPLITS: tuple[str, ...] = ("train", "val", "test")

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "fork", "knife", "cup", "bowl", "dog", "frisbee", "tennis racket", "sports ball",
    "keyboard", "mouse", "chair", "dining table", "person", "car", "cat", "bottle",
)
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("fork", "knife"),
    ("cup", "bowl"),
    ("dog", "frisbee"),
    ("tennis racket", "sports ball"),
    ("keyboard", "mouse"),
    ("chair", "dining table"),
)
DEFAULT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")


@dataclass(frozen=True)
class ToyWorldConfig:
    """Every setting of the toy-world generator; the same config always yields the same bytes."""

    seed: int = 0
    # 4,000 training scenes x 3-5 captions give about 16,000 captions, enough for a ~2M-parameter
    # captioner to reach high object recall within about 1,300 steps at batch 48.
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    image_size: int = 64  # pixels per side; each 2x2 grid cell is image_size / 2
    glyph_size: int = 16  # pixels per glyph side, i.e. 2x2 patches at patch size 8
    position_jitter: int = 4  # max shift in pixels of a glyph from its cell centre, per axis
    background_noise: float = 6.0  # std of Gaussian noise added to the grey background
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    # None draws categories uniformly; otherwise one positive weight per category.
    category_weights: tuple[float, ...] | None = None
    # 0.75 makes the partner a strong prior while leaving a quarter of the images with one
    # member alone, which is where co-occurrence hallucination can be observed.
    cooccurrence_rate: float = 0.75
    # Share of all training captions that also mention an absent partner of a present object.
    caption_hallucination_rate: float = 0.1
    duplicate_rate: float = 0.15  # chance that a drawn object gets a second instance, for counting
    min_objects: int = 1
    max_objects: int = 4
    colors: tuple[str, ...] = DEFAULT_COLORS
    min_captions: int = 3
    max_captions: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "pairs", tuple(tuple(pair) for pair in self.pairs))
        object.__setattr__(self, "colors", tuple(self.colors))
        if self.category_weights is not None:
            object.__setattr__(self, "category_weights", tuple(float(w) for w in self.category_weights))
        self._validate_sizes()
        self._validate_categories()
        self._validate_rates()

    def _validate_sizes(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ToyWorldConfig.seed must be a non-negative integer, got {self.seed!r}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"ToyWorldConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size < 16 or self.image_size % 2:
            raise ValueError(f"ToyWorldConfig.image_size must be an even number >= 16, got {self.image_size}")
        cell = self.image_size // 2
        if self.glyph_size < 4 or self.glyph_size + 2 * self.position_jitter > cell:
            raise ValueError(
                f"ToyWorldConfig: glyph_size {self.glyph_size} plus twice position_jitter "
                f"{self.position_jitter} must fit in a grid cell of {cell} pixels"
            )
        if self.position_jitter < 0 or self.background_noise < 0:
            raise ValueError("ToyWorldConfig.position_jitter and background_noise must be non-negative")
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ValueError(
                f"ToyWorldConfig needs 1 <= min_objects <= max_objects <= {len(POSITIONS)} (grid cells), "
                f"got {self.min_objects} and {self.max_objects}"
            )
        if not 1 <= self.min_captions <= self.max_captions <= len(PHRASINGS):
            raise ValueError(
                f"ToyWorldConfig needs 1 <= min_captions <= max_captions <= {len(PHRASINGS)} "
                f"(one caption per phrasing), got {self.min_captions} and {self.max_captions}"
            )

    def _validate_categories(self) -> None:
        if len(self.categories) < 2 or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"ToyWorldConfig.categories must list at least 2 distinct names, got {self.categories}")
        for name in self.categories:
            coco_category(name)
        members: list[str] = []
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"ToyWorldConfig.pairs entry {pair} must hold two different category names")
            for name in pair:
                if name not in self.categories:
                    raise ValueError(
                        f"ToyWorldConfig.pairs names {name!r}, which is not in categories {self.categories}"
                    )
            members.extend(pair)
        repeated = sorted({name for name in members if members.count(name) > 1})
        if repeated:
            raise ValueError(
                f"ToyWorldConfig.pairs must be disjoint (each category has at most one partner), "
                f"but {repeated} appear in more than one pair"
            )
        if self.category_weights is not None and (
            len(self.category_weights) != len(self.categories)
            or not all(math.isfinite(w) and w > 0 for w in self.category_weights)
        ):
            raise ValueError("ToyWorldConfig.category_weights needs one positive finite weight per category")
        if len(self.colors) < 2 or len(set(self.colors)) != len(self.colors):
            raise ValueError(f"ToyWorldConfig.colors must list at least 2 distinct colours, got {self.colors}")
        unknown = [c for c in self.colors if c not in PALETTE]
        if unknown:
            raise ValueError(f"ToyWorldConfig.colors {unknown} are unknown; valid colours: {', '.join(PALETTE)}")

    def _validate_rates(self) -> None:
        for name in ("cooccurrence_rate", "caption_hallucination_rate", "duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ToyWorldConfig.{name} must be in [0, 1], got {value}")

    def partner_of(self) -> dict[str, str]:
        """Return each paired category's co-occurrence partner (both directions)."""
        partners: dict[str, str] = {}
        for first, second in self.pairs:
            partners[first] = second
            partners[second] = first
        return partners

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["categories"] = list(self.categories)
        data["pairs"] = [list(pair) for pair in self.pairs]
        data["colors"] = list(self.colors)
        if self.category_weights is not None:
            data["category_weights"] = list(self.category_weights)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToyWorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ToyWorldConfig fields {unknown}; valid fields: {sorted(known)}")
        values = dict(data)
        for key in ("categories", "colors", "category_weights"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if "pairs" in values:
            values["pairs"] = tuple(tuple(pair) for pair in values["pairs"])
        return cls(**values)


@dataclass(frozen=True)
class PlacedObject:
    """One object of a scene: its category, colour, grid cell and glyph offset in pixels."""

    category: str
    color: str
    cell: int
    offset: tuple[int, int]  # (dx, dy) shift from the centred position in the cell

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Scene:
    """The objects of one image in annotation (placement) order."""

    image_id: int
    objects: tuple[PlacedObject, ...]

    def category_names(self) -> list[str]:
        return [obj.category for obj in self.objects]

    def free_cells(self) -> list[int]:
        used = {obj.cell for obj in self.objects}
        return [cell for cell in range(len(POSITIONS)) if cell not in used]


def _sample_categories(config: ToyWorldConfig, rng: np.random.Generator) -> list[str]:
    """Draw the category of each object in placement order (partners right after their anchor).

    With one free cell left only unpaired categories can be drawn, so the partner coin is never
    overruled for lack of room and the co-occurrence rate stays unbiased.
    """
    partners = config.partner_of()
    weights = np.ones(len(config.categories)) if config.category_weights is None else np.array(config.category_weights)
    target = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[str] = []
    barred: set[str] = set()
    while len(placed) < target:
        room = config.max_objects - len(placed)
        allowed = [
            i for i, name in enumerate(config.categories)
            if name not in placed and name not in barred and (room >= 2 or name not in partners)
        ]
        if not allowed:
            break
        probabilities = weights[allowed] / weights[allowed].sum()
        anchor = config.categories[int(rng.choice(allowed, p=probabilities))]
        placed.append(anchor)
        partner = partners.get(anchor)
        if partner is not None:
            # The partner cannot be placed or barred yet: either event would have placed or barred the anchor.
            if rng.random() < config.cooccurrence_rate:
                placed.append(partner)
            else:
                barred.add(partner)
        if rng.random() < config.duplicate_rate and len(placed) < config.max_objects:
            placed.append(anchor)
    return placed


def sample_scene(config: ToyWorldConfig, image_id: int, rng: np.random.Generator) -> Scene:
    """Draw one scene: categories, then a colour, a distinct grid cell and a jitter per object."""
    names = _sample_categories(config, rng)
    cells = rng.permutation(len(POSITIONS))[: len(names)]
    jitter = config.position_jitter
    objects = []
    for name, cell in zip(names, cells):
        color = config.colors[int(rng.integers(len(config.colors)))]
        dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        objects.append(PlacedObject(category=name, color=color, cell=int(cell), offset=(dx, dy)))
    return Scene(image_id=image_id, objects=tuple(objects))


def split_rng(seed: int, split: str, stream: int) -> np.random.Generator:
    """Return the generator of one split and purpose, independent of every other split and purpose."""
    return np.random.default_rng([seed, SPLITS.index(split), stream])


def sample_split_scenes(config: ToyWorldConfig, split: str, first_image_id: int) -> list[Scene]:
    count = {"train": config.n_train, "val": config.n_val, "test": config.n_test}[split]
    rng = split_rng(config.seed, split, stream=0)
    return [sample_scene(config, first_image_id + index, rng) for index in range(count)]


@dataclass(frozen=True)
class CaptionPlan:
    """One caption of an image before it is written: its phrasing and ordered mentions."""

    phrasing: str
    mentions: tuple[Mention, ...]

    @property
    def hallucinated(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.mentions if m.hallucinated)

    def text(self) -> str:
        return render_caption(self.phrasing, self.mentions)


def _hallucination_anchors(config: ToyWorldConfig, scene: Scene) -> list[int]:
    """Return the indices of objects whose partner is absent, when a free cell can host the partner."""
    if not scene.free_cells():
        return []
    partners = config.partner_of()
    present = set(scene.category_names())
    return [
        i for i, obj in enumerate(scene.objects)
        if obj.category in partners and partners[obj.category] not in present
    ]


def _insert_partner(
    config: ToyWorldConfig, scene: Scene, anchors: list[int], rng: np.random.Generator
) -> tuple[Mention, ...]:
    """Return the scene's mentions with an absent partner named right after one anchor."""
    mentions = [Mention(obj.category, obj.color, obj.position) for obj in scene.objects]
    anchor = anchors[int(rng.integers(len(anchors)))]
    partner = config.partner_of()[scene.objects[anchor].category]
    color = config.colors[int(rng.integers(len(config.colors)))]
    free = scene.free_cells()
    cell = free[int(rng.integers(len(free)))]
    mentions.insert(anchor + 1, Mention(partner, color, POSITIONS[cell], hallucinated=True))
    return tuple(mentions)


def plan_split_captions(config: ToyWorldConfig, split: str, scenes: list[Scene]) -> list[list[CaptionPlan]]:
    """Choose the captions of every image of a split.

    Each image gets min_captions to max_captions captions in distinct phrasings. On the train
    split, exactly round(caption_hallucination_rate x all captions) captions, drawn uniformly among
    the captions of images that have an object with an absent partner and a free cell, also name
    that partner. Val and test captions are always faithful.
    """
    rng = split_rng(config.seed, split, stream=1)
    names = list(PHRASINGS)
    plans: list[list[CaptionPlan]] = []
    eligible: list[tuple[int, int]] = []
    for image_index, scene in enumerate(scenes):
        count = int(rng.integers(config.min_captions, config.max_captions + 1))
        chosen = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
        faithful = tuple(Mention(obj.category, obj.color, obj.position) for obj in scene.objects)
        plans.append([CaptionPlan(phrasing, faithful) for phrasing in chosen])
        if split == "train" and _hallucination_anchors(config, scene):
            eligible.extend((image_index, caption_index) for caption_index in range(count))
    if split != "train":
        return plans
    total = sum(len(image_plans) for image_plans in plans)
    requested = round(config.caption_hallucination_rate * total)
    if requested > len(eligible):
        raise ValueError(
            f"ToyWorldConfig.caption_hallucination_rate {config.caption_hallucination_rate} requests {requested} "
            f"hallucinated training captions, but only {len(eligible)} of {total} captions belong to an image "
            f"with an object whose partner is absent and a free cell, so the rate can be at most "
            f"{len(eligible) / total:.3f} here; lower caption_hallucination_rate or cooccurrence_rate"
        )
    for slot in sorted(rng.choice(len(eligible), size=requested, replace=False).tolist()):
        image_index, caption_index = eligible[slot]
        scene = scenes[image_index]
        mentions = _insert_partner(config, scene, _hallucination_anchors(config, scene), rng)
        plans[image_index][caption_index] = CaptionPlan(plans[image_index][caption_index].phrasing, mentions)
    return plans
