"""Reading a training folder (one sub-folder per class), and saying what is wrong with it.

What cannot be used is reported and left out, and the rest goes on: an empty class folder, an
unreadable image (named, with the reason), a class left with fewer than two images (no positive
pair to learn from). Training stops only when fewer than two classes remain.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.images import class_tree
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.trainset import ImageSet, load_image_set
from kshot.errors import KshotError

log = logging.getLogger("kshot")


def class_image_lists(data: Path) -> list[tuple[str, list[Path]]]:
    """``(class name, image files)`` of each non-empty class folder of ``data``: one level
    (``class/``) or two (``group/class/``, named ``group/class``), as a library enrolls them."""
    data = Path(data)
    if not data.is_dir():
        raise KshotError(f"{data}: " + ("is not a folder" if data.exists() else "does not exist"))
    classes, left_out = class_tree(data)
    for error in left_out:
        log.warning("skipping %s", error)
    found = []
    for folder in classes:
        if folder.images:
            found.append((folder.name, folder.images))
        else:
            log.warning("skipping class %r: %s holds no images", folder.name, folder.folder)
    return found


def read_training_folder(data: Path, preprocess: PreprocessConfig) -> tuple[list[str], ImageSet]:
    """The usable classes' names and their decoded images (labels index the names)."""
    found = class_image_lists(data)
    paths = [path for _, images in found for path in images]
    codes = [code for code, (_, images) in enumerate(found) for _ in images]
    images, failed = load_image_set(preprocess, paths, codes)
    for _, error in failed:
        log.warning("skipping %s", error)
    counts = np.bincount(images.labels.numpy(), minlength=len(found))
    for code, (name, _) in enumerate(found):
        if counts[code] == 1:
            log.warning(
                "skipping class %r: it has one usable image, and training needs two per class",
                name,
            )
        elif counts[code] == 0 and found[code][1]:
            log.warning("skipping class %r: none of its images could be read", name)
    usable = np.flatnonzero(counts >= 2)
    if len(usable) < 2:
        raise KshotError(
            f"{data} needs at least two sub-folders (one per class) with two or more usable "
            f"images each; it has {len(usable)}"
        )
    keep = np.flatnonzero(np.isin(images.labels.numpy(), usable))
    recode = {int(old): new for new, old in enumerate(usable)}
    labels = torch.as_tensor([recode[int(c)] for c in images.labels[keep]], dtype=torch.int64)
    names = [found[c][0] for c in usable]
    return names, ImageSet(images.pixels[torch.as_tensor(keep)], labels)


def read_validation_folder(
    folder: Path, classes: list[str], preprocess: PreprocessConfig
) -> ImageSet:
    """The images of ``folder``'s sub-folders named as training classes, labelled as those."""
    code = {name: i for i, name in enumerate(classes)}
    found = []
    for name, images in class_image_lists(folder):
        if name in code:
            found.append((name, images))
        else:
            log.warning("validation: ignoring %r, which is not a training class", name)
    paths = [path for _, images in found for path in images]
    images, failed = load_image_set(preprocess, paths, [code[n] for n, ims in found for _ in ims])
    for _, error in failed:
        log.warning("validation: skipping %s", error)
    if not len(images):
        raise KshotError(f"{folder}: no usable validation images of the training classes")
    return images
