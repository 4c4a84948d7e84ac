"""Export a `World` to a Hugging Face `datasets.DatasetDict`, write it to disk, and rebuild a world from it.

One dataset split per world split and one row per image. The columns ``image_id``,
``file_name``, ``image`` (the original file bytes in a ``datasets.Image`` feature), ``width``,
``height``, ``objects`` (category names in annotation order, repeats kept), ``bboxes``
(``[x, y, width, height]`` per object) and ``captions`` (reference captions) are for users.
The columns ``image_json``, ``annotations_json`` and ``captions_json`` contain the image's
COCO records as JSON text and are what a rebuilt world is made from, so every annotation
field survives (segmentation, color, position, caption metadata).

World-level facts that belong to no row (the category table, the header of each COCO file
and a toy world's manifest) are written beside the data as ``halluc_bench_world.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import datasets
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from tqdm.auto import tqdm

from ._io import read_json, write_bytes_atomic, write_json_atomic
from .coco import MANIFEST_NAME, World, _split_sort_key

logger = logging.getLogger(__name__)

METADATA_NAME = "halluc_bench_world.json"
METADATA_FORMAT = "halluc-bench world export"
METADATA_VERSION = 1
ExportFormat = Literal["disk", "parquet"]

WORLD_FEATURES = Features({
    "image_id": Value("int64"),
    "file_name": Value("string"),
    "image": datasets.Image(),
    "width": Value("int32"),
    "height": Value("int32"),
    "objects": Sequence(Value("string")),
    "bboxes": Sequence(Sequence(Value("float64"))),
    "captions": Sequence(Value("string")),
    "image_json": Value("string"),
    "annotations_json": Sequence(Value("string")),
    "captions_json": Sequence(Value("string")),
})
REBUILD_COLUMNS = ("file_name", "image", "image_json", "annotations_json", "captions_json")


def _to_json(value: Any) -> str:
    # The same separators as the world's own COCO files, so a rebuilt toy world has the same bytes.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _split_columns(world: World, split: str) -> dict[str, list[Any]]:
    has_captions = world.captions_path(split).is_file()
    captions_index = world.captions_coco(split).imgToAnns if has_captions else {}
    columns: dict[str, list[Any]] = {name: [] for name in WORLD_FEATURES}
    for image_id in tqdm(world.image_ids(split), desc=f"export {split}", unit="image", leave=False, disable=None):
        info = world.image_info(split, image_id)
        path = world.image_path(split, image_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found for image id {image_id} of split {split!r}; "
                                    "a dataset export needs every image of the exported splits")
        annotations = world.annotations(split, image_id)
        captions = list(captions_index.get(image_id, []))
        columns["image_id"].append(image_id)
        columns["file_name"].append(info["file_name"])
        columns["image"].append({"bytes": path.read_bytes(), "path": info["file_name"]})
        columns["width"].append(info.get("width"))
        columns["height"].append(info.get("height"))
        columns["objects"].append(world.objects(split, image_id))
        columns["bboxes"].append([[float(value) for value in annotation["bbox"]] for annotation in annotations])
        columns["captions"].append([caption["caption"] for caption in captions])
        columns["image_json"].append(_to_json(info))
        columns["annotations_json"].append([_to_json(annotation) for annotation in annotations])
        columns["captions_json"].append([_to_json(caption) for caption in captions])
    return columns


def world_to_dataset_dict(world: World, splits: list[str] | None = None) -> DatasetDict:
    """Return the world's splits (all when None) as a DatasetDict, one row per image in file order.

    NOTE: a split's image bytes are held in memory while its dataset is built, and captions of
    image ids that the instances file does not list are not exported.
    """
    chosen = list(splits) if splits is not None else list(world.splits)
    for split in chosen:
        world.instances_path(split)  # an unknown split raises UnknownNameError with the valid splits
    return DatasetDict({split: Dataset.from_dict(_split_columns(world, split), features=WORLD_FEATURES) for split in chosen})


def _header(data: dict[str, Any], lists: tuple[str, ...]) -> dict[str, Any]:
    """Return a COCO file's top-level entries in file order, with the per-row lists replaced by None."""
    return {key: None if key in lists else value for key, value in data.items()}


def world_metadata(world: World, splits: list[str] | None = None) -> dict[str, Any]:
    """Return the facts a rebuilt world needs beyond the rows: COCO file headers, categories, manifest."""
    chosen = list(splits) if splits is not None else list(world.splits)
    split_entries = {}
    for split in chosen:
        captions = world.captions_coco(split).dataset if world.captions_path(split).is_file() else None
        split_entries[split] = {
            "instances": _header(world.coco(split).dataset, ("images", "annotations")),
            "captions": None if captions is None else _header(captions, ("images", "annotations")),
        }
    return {"format": METADATA_FORMAT, "format_version": METADATA_VERSION, "manifest": world.manifest,
            "splits": split_entries}


def _fresh_target(path: Path, overwrite: bool) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path}: already exists and is not empty; pass overwrite=True or choose another folder")


def _replace_folder(built: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(built, target)


def write_world_dataset(
    world: World,
    folder: str | Path,
    format: ExportFormat = "parquet",
    splits: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the world as a dataset folder and return it.

    ``"disk"`` writes ``DatasetDict.save_to_disk``; ``"parquet"`` writes FOLDER/{split}.parquet.
    Both add FOLDER/halluc_bench_world.json. The folder is built beside FOLDER and moved into
    place when complete.
    """
    if format not in ("disk", "parquet"):
        raise ValueError(f"unknown export format {format!r}; valid formats: disk, parquet")
    folder = Path(folder).expanduser().resolve()
    _fresh_target(folder, overwrite)
    dataset_dict = world_to_dataset_dict(world, splits)
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        if format == "disk":
            dataset_dict.save_to_disk(str(building))
        else:
            for split, dataset in dataset_dict.items():
                dataset.to_parquet(str(building / f"{split}.parquet"))
        write_json_atomic(building / METADATA_NAME, world_metadata(world, list(dataset_dict)))
        building.chmod(0o755)  # mkdtemp creates the folder private to its owner
        _replace_folder(building, folder)
    finally:
        if building.exists():
            shutil.rmtree(building)
    logger.info("wrote %s dataset of splits %s to %s", format, ", ".join(dataset_dict), folder)
    return folder


def read_world_dataset(folder: str | Path, cache_dir: str | Path | None = None) -> tuple[DatasetDict, dict[str, Any] | None]:
    """Read a folder written by ``write_world_dataset`` (either format) and its metadata (None when absent).

    Parquet files are read through ``datasets``, which prepares them in ``cache_dir``
    (the ``datasets`` cache when None).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: dataset folder not found; pass a folder written by write_world_dataset")
    if (folder / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
    else:
        files = sorted(folder.glob("*.parquet"), key=lambda path: _split_sort_key(path.stem))
        if not files:
            found = ", ".join(sorted(path.name for path in folder.iterdir())[:10]) or "nothing"
            raise FileNotFoundError(f"{folder}: contains neither dataset_dict.json (save_to_disk) nor *.parquet "
                                    f"files (found {found}); pass a folder written by write_world_dataset")
        cache = None if cache_dir is None else str(cache_dir)
        loaded = DatasetDict({path.stem: Dataset.from_parquet(str(path), cache_dir=cache) for path in files})
    metadata_path = folder / METADATA_NAME
    metadata = read_json(metadata_path, "a halluc-bench world export's metadata") if metadata_path.is_file() else None
    return loaded, metadata


def _safe_relative(file_name: str, split: str) -> PurePosixPath:
    relative = PurePosixPath(file_name)
    if not file_name or relative.is_absolute() or ".." in relative.parts or "\\" in file_name:
        raise ValueError(f"split {split!r}: file_name {file_name!r} is not a plain relative path; "
                         "a rebuilt world writes each image under its split folder")
    return relative


def _check_columns(dataset: Dataset, split: str) -> None:
    missing = [column for column in REBUILD_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset split {split!r} lacks the column(s) {', '.join(missing)} that rebuilding a world "
                         f"needs; found {', '.join(dataset.column_names)}; export the world with world_to_dataset_dict")


def _categories_from_rows(dataset: Dataset) -> list[dict[str, Any]]:
    found: dict[int, str] = {}
    for row in dataset.select_columns(["objects", "annotations_json"]):
        for name, text in zip(row["objects"], row["annotations_json"]):
            found[json.loads(text)["category_id"]] = name
    return [{"id": category_id, "name": found[category_id]} for category_id in sorted(found)]


def _coco_file(header: dict[str, Any], images: list[Any], annotations: list[Any]) -> dict[str, Any]:
    lists = {"images": images, "annotations": annotations}
    data = {key: lists.get(key, value) for key, value in header.items()}
    data.update({key: value for key, value in lists.items() if key not in data})
    return data


def _write_split(dataset: Dataset, split: str, entry: dict[str, Any] | None, root: Path) -> None:
    _check_columns(dataset, split)
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    images, annotations, captions = [], [], []
    for row in tqdm(dataset.select_columns(list(REBUILD_COLUMNS)), desc=f"rebuild {split}", unit="image",
                    leave=False, disable=None):
        image_bytes = row["image"]["bytes"]
        if image_bytes is None:
            raise ValueError(f"split {split!r}: image {row['file_name']!r} has no embedded bytes; export it with its image")
        write_bytes_atomic(root / split / _safe_relative(row["file_name"], split), image_bytes)
        images.append(json.loads(row["image_json"]))
        annotations.extend(json.loads(text) for text in row["annotations_json"])
        captions.extend(json.loads(text) for text in row["captions_json"])
    if entry is None:
        logger.warning("no export metadata for split %r: categories are rebuilt from the annotated ones only", split)
        entry = {"instances": {"categories": _categories_from_rows(dataset)},
                 "captions": {} if captions else None}
    write_json_atomic(root / "annotations" / f"instances_{split}.json", _coco_file(entry["instances"], images, annotations))
    if entry["captions"] is not None:
        write_json_atomic(root / "annotations" / f"captions_{split}.json", _coco_file(entry["captions"], images, captions))


def dataset_dict_to_world(
    dataset_dict: DatasetDict,
    root: str | Path,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> World:
    """Write a COCO-format world folder from an exported DatasetDict and open it.

    With the export's ``metadata`` the COCO files keep their headers, every category and the
    toy-world manifest. Without it, categories come from the annotations and no manifest is written.
    """
    if metadata is not None and metadata.get("format") != METADATA_FORMAT:
        raise ValueError(f"metadata is not a {METADATA_FORMAT!r} (format {metadata.get('format')!r}); "
                         f"pass the {METADATA_NAME} written with the dataset")
    root = Path(root).expanduser().resolve()
    _fresh_target(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        for split, dataset in dataset_dict.items():
            entry = None if metadata is None else metadata["splits"].get(split)
            _write_split(dataset, split, entry, building)
        if metadata is not None and metadata.get("manifest") is not None:
            write_json_atomic(building / MANIFEST_NAME, metadata["manifest"])
        building.chmod(0o755)
        _replace_folder(building, root)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return World.from_dir(root)


def world_from_dataset(folder: str | Path, root: str | Path, cache_dir: str | Path | None = None,
                       overwrite: bool = False) -> World:
    """Rebuild the world of an export folder (save_to_disk or Parquet) under ROOT and open it."""
    dataset_dict, metadata = read_world_dataset(folder, cache_dir)
    return dataset_dict_to_world(dataset_dict, root, metadata, overwrite)
