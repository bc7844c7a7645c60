"""Parameters of the ``init`` stage (Stage II's coarse mesh), one field group per backend.

A backend reads only its own fields (:data:`READ_BY_INIT`); a manifest key names the field
itself (``lrm_path``, ``sphere_radius``), and a row may only set fields its ``init`` reads. To
give a new backend parameters, add fields named after it and list them in :data:`READ_BY_INIT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from models.param_fields import Range, checked_params


@dataclass(frozen=True)
class InitParams:
    """Where refinement starts from."""

    lrm_path: Path | None = None
    """``lrm``: the LRM checkpoint file (default ``FOUNDRY_LRM_PATH``)."""
    lrm_variant: str = "prm"
    """``lrm``: the LRM architecture name of the checkpoint (default ``FOUNDRY_LRM_VARIANT``)."""
    sphere_radius: float = 0.85
    """``sphere``: radius of the starting icosphere, bundle-frame units (the object spans
    [-0.9, 0.9]); 0.1..1.0 so the sphere stays inside refinement's unit box."""
    hull_resolution: int = 96
    """``hull``: voxels per side of the visual hull carved from the 4 masks; 16..512 (a 512^3
    grid of float32 is 512 MiB, larger would not fit a worker's memory)."""

    RANGES: ClassVar[dict[str, Range]] = {
        "sphere_radius": Range(0.1, 1.0),
        "hull_resolution": Range(16, 512),
    }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> InitParams:
        """Params from a mapping over ``defaults`` (the LRM settings); unknown keys, wrong types
        and out-of-range values raise :class:`models.param_fields.ParameterError`."""
        return checked_params(cls, data, what="init", ranges=cls.RANGES, defaults=defaults)


READ_BY_INIT: dict[str, tuple[str, ...]] = {
    "sphere": ("sphere_radius",),
    "library": (),
    "lrm": ("lrm_path", "lrm_variant"),
    "hull": ("hull_resolution",),
}
"""Init backend -> the :class:`InitParams` fields it reads (a backend not listed reads none)."""


#: Refinement schedule per init, over :class:`RefineParams`' defaults (the sphere's schedule).
#: A visual hull already has the silhouettes and holes right, so both phases end once the loss
#: stops improving (a 4-view hull is still loose at the corners between views, e.g. a can's hull
#: is a rounded square prism: the coarse phase keeps room to pull those in). Unseen regions are
#: relaxed flat as from a sphere: that costs a ball's poles about 0.02 of F@0.05 but gains cans
#: and fruit more (``hidden_relax`` 0 measured worse on 3 of 4 such objects). A depth-carved
#: hull's loss falls in steps between remeshings, so its phases wait 25 steps, not 15, before
#: calling a plateau (a banana stopped at 0.93 with 15, reached 0.975 with 25). A hull's fine
#: phase aims at 10,000 faces at least (``fine_faces``): at the 0.04 fine edge a wrench had
#: 1,372 and ended 0.034 below its hull, its thin handle too coarse to keep its sides; with
#: the budget it ends 0.009 above (over the 78 YCB objects 66 within 0.004, 5 up, 7 down,
#: median 0.949 -> 0.951, objects below the hull 5 -> 3).
#:
#: Thin shapes' coarse phases ran all 80 steps still improving; with 100 the toy airplane
#: 072-b (+0.030) and the banana's web (+0.009) get further while the mug's still ends by
#: plateau after 38 (78 YCB objects, 100 against 80: 5 up, 4 down by more than 0.004, median
#: 0.951 -> 0.960; 120 gave 0.960 too, 140 0.955, 160 lost the flat screwdriver 0.03). The
#: fine phase steps 0.3 edge lengths, not 0.2: most hull fine phases reach the step cap still
#: improving, and the larger step gets further in the same steps (14 up, 6 down, 37 objects at
#: 0.96 instead of 35). Doubling the fine cap instead gained less per second (median 0.956 for
#: 37 % more CPU time) and lost the mug 0.04.
#:
#: A hull's coarse edge is at most its mean thickness (``coarse_thickness``, twice volume over
#: area): of the 78 YCB hulls only 7 are thinner than the 0.08 edge (spatula, skillet lid,
#: knife, wrench, fork, spoon, chain). At 0.08 the wrench's 0.04-thick handle became a lens
#: that the normal loss squeezed to half its width; at its 0.053 it keeps it (F@0.05 over 4-5
#: runs with the step size moved by 0.1 %: 0.979 -> 0.994, every run above its hull's 0.971,
#: where 0.970-0.984 straddled it). The skillet lid lost 0.018 (0.907 -> 0.889), the spatula
#: 0.003, the other four moved within their spread.
INIT_SCHEDULES: dict[str, dict] = {
    "hull": {"coarse_steps": 100, "fine_steps": 100, "plateau_steps": 25, "fine_faces": 10000,
             "fine_lr": 0.3, "coarse_thickness": 1.0},
    "sphere": {},
    "library": {"coarse_steps": 40, "fine_steps": 100, "plateau_steps": 15},
    "lrm": {"coarse_steps": 60, "fine_steps": 100, "plateau_steps": 15},
    "mesh": {"coarse_steps": 60, "fine_steps": 100, "plateau_steps": 15},
}
