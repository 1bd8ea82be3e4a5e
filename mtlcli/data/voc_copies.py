"""VOC2012's re-shipped VOC2007 images (`2007_<name>`): which are copies, and one copy per training split.

`mtlcli.data.voc` calls these while it lays out the splits: `voc2007_copies` matches the files (by
bytes, else by the name mapping with a pixel-size check), `one_copy_each` picks the entry of a split that
stays for each image, `report_copies` prints the counts under the prepare summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def voc2007_copies(v12: Path, v07: Path, names: set[str], image_of) -> dict[str, tuple[Path, str]]:
    """VOC2012 names `2007_<n>` that are VOC2007's `<n>.jpg` -> (that VOC2007 file, how it was matched).

    VOC2012 re-ships some VOC2007 images under the `2007_` prefix; by file name they would look like
    two images. Only the few hundred `2007_*` names are compared: "bytes" where the two files are
    byte-identical; else "name" where VOC2007 has `<n>.jpg` and both decode to the same pixel size
    (a re-encoded copy: the devkit's name mapping `2007_NNNNNN` <-> `NNNNNN`, checked by size so that a
    stray file of another picture is not taken for it); a pair of other sizes is no copy."""
    import filecmp

    from mtlcli.data.integrity import check_image

    copies: dict[str, tuple[Path, str]] = {}
    for name in sorted(n for n in names if n.startswith("2007_")):
        old = v07 / "JPEGImages" / f"{name[5:]}.jpg"
        new = image_of(name)
        if not (old.is_file() and new.is_file()):
            continue
        if filecmp.cmp(old, new, shallow=False):
            copies[name] = (old, "bytes")
            continue
        try:
            same_size = check_image(old, False) == check_image(new, False)  # (width, height) from the headers
        except (OSError, ValueError, SyntaxError):  # a damaged file: the per-image step names it
            continue
        if same_size:
            copies[name] = (old, "name")
    return copies


def copy_counts(copies: dict[str, tuple[Path, str]], names: set[str]) -> dict[str, int]:
    """{"bytes": matched by bytes, "name": matched by name + size, "unmatched": other `2007_*` names}."""
    how = [h for _, h in copies.values()]
    candidates = sum(1 for n in names if n.startswith("2007_"))
    return {"bytes": how.count("bytes"), "name": how.count("name"), "unmatched": candidates - len(copies)}


def one_copy_each(entries: list[tuple[Path, str, dict[str, Any]]], identity) -> dict[str, tuple[Path, str]]:
    """identity -> the (year folder, name) of the entry of a split that stays for that image: the first
    with a pixel label (a VOC2012 `2007_*` copy in SegmentationClass/SBD carries one, its VOC2007
    original none), else the first listed (VOC2007's, whose lists come first)."""
    keeper: dict[str, tuple[Path, str]] = {}
    labelled: set[str] = set()
    for year_dir, name, payload in entries:
        key = identity(year_dir, name)
        has_label = bool(payload.get("png") or payload.get("mat"))
        if key not in keeper or (has_label and key not in labelled):
            keeper[key] = (year_dir, name)
            if has_label:
                labelled.add(key)
    return keeper


def report_copies(counts: dict[str, int]) -> None:
    """The copies line under the summary, and a warning on stderr when a VOC07 + VOC12 prepare removed no
    image from a training split (on the real datasets VOC2012 seg val holds VOC2007 images, so none
    removed means the copies went unrecognised)."""
    from rich.console import Console

    Console().print(
        f"VOC2012 2007_* images recognised as VOC2007's: {counts['bytes']} by bytes, {counts['name']} by name "
        f"and pixel size ({counts['unmatched']} not matched); {counts['removed']} image(s) kept out of training splits"
    )
    if not counts["removed"]:
        Console(stderr=True).print(
            "[yellow]warning:[/] no image was removed from a training split as a VOC2007/VOC2012 duplicate — check "
            "that --voc2007 is the VOC2007 of the same VOCdevkit (training splits may hold evaluation images)",
            soft_wrap=True,
        )
