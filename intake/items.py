"""The item model: one manifest row's fields, checked (pydantic), with defaults merged."""

from __future__ import annotations

import functools
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from intake.limits import (
    ID_RE,
    MAX_PARAM_STR_CHARS,
    MAX_PARAMS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_VARIANTS,
    PARAM_KEY_RE,
    Kind,
)
from intake.meshes import MeshRejected, mesh_suffix
from models.parameters import ParameterError, check_manifest_params


def _check_text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long, more than the limit of {limit}")
    if value.isprintable():  # the common case, checked in C; the loop below finds the culprit
        return value
    for i, ch in enumerate(value):
        if not (ch.isprintable() or ch in " \n\t" or is_emoji_joiner(ch)):
            raise ValueError(
                f"{what} contains a non-printable character (U+{ord(ch):04X}) at position {i}"
            )
    return value


#: Format characters that are part of ordinary emoji: the zero-width joiner (family, flags of
#: professions) and the variation selectors (text vs emoji style). Every other control or
#: format character stays refused.
EMOJI_JOINERS = frozenset({"\u200d", *map(chr, range(0xFE00, 0xFE10))})


def is_emoji_joiner(ch: str) -> bool:
    """Whether ``ch`` is a zero-width joiner or variation selector (allowed in text)."""
    return ch in EMOJI_JOINERS


def nfc(value: str) -> str:
    """``value`` in Unicode normal form C, so that "café" typed composed or decomposed is one
    prompt (and one asset id)."""
    return unicodedata.normalize("NFC", value)


def _check_tags(value: Any) -> Any:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"tags must be a list of strings, got {type(value).__name__}")
    if len(value) > MAX_TAGS:
        raise ValueError(f"{len(value)} tags, more than the limit of {MAX_TAGS}")
    for tag in value:
        if not isinstance(tag, str) or not tag.strip():
            raise ValueError(f"each tag must be a non-empty string, got {tag!r}")
        if len(tag) > MAX_TAG_CHARS or ";" in tag or not tag.isprintable():
            raise ValueError(
                f"tag {tag[:80]!r} must be printable, without ';', "
                f"at most {MAX_TAG_CHARS} characters"
            )
    return [t.strip() for t in value]


def _check_params(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"params must be a mapping of name -> value, got {type(value).__name__}")
    if len(value) > MAX_PARAMS:
        raise ValueError(f"{len(value)} params, more than the limit of {MAX_PARAMS}")
    for key, item in value.items():
        if not isinstance(key, str) or not PARAM_KEY_RE.match(key):
            raise ValueError(f"param name {key!r} must be an identifier (letters, digits, _ .)")
        if isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            raise ValueError(f"param {key!r} must be a finite number, got {item}")
        if isinstance(item, str):
            _check_text(item, f"param {key!r}", MAX_PARAM_STR_CHARS)
        elif not isinstance(item, bool | int | float):
            raise ValueError(
                f"param {key!r} must be a string, number or boolean, got {type(item).__name__}"
            )
    return value


Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Variants = Annotated[StrictInt, Field(ge=1, le=MAX_VARIANTS)]
GeneratorName = Literal["library", "kiss3dgen", "file", "kiss3dgen-mesh", "kiss3dgen-image"]
InitName = Literal["hull", "sphere", "library", "lrm", "mesh"]


class _ManifestFields(BaseModel):
    """Checks shared by the defaults block and the items: no unknown keys, tags, params."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("tags", mode="before", check_fields=False)
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return _check_tags(value)

    @field_validator("params", mode="before", check_fields=False)
    @classmethod
    def _params(cls, value: Any) -> Any:
        return _check_params(value)


class ManifestDefaults(_ManifestFields):
    """The YAML ``defaults:`` block: values every item inherits unless it sets its own."""

    seed: Seed | None = None
    variants: Variants | None = None
    tags: list[str] | None = None
    generator: GeneratorName | None = None
    init: InitName | None = None
    params: dict[str, Any] | None = None


class ManifestItem(_ManifestFields):
    """One manifest row, as written (before defaults are resolved into requests)."""

    prompt: str | None = None
    """Text prompt (printable, at most MAX_PROMPT_CHARS)."""
    image: str | None = None
    """Reference image: local path, s3://bucket/key or https:// URL."""
    bundle: str | None = None
    """A ready bundle PNG (2 x 4 tiles) for the ``file`` generator."""
    mesh: str | None = None
    """An input mesh (.glb .gltf .obj .ply .stl .off) for the ``kiss3dgen-mesh`` generator to
    enhance, edit or retexture; the row's ``prompt`` says how (an enhance without one is
    captioned by the captioning model)."""
    id: str | None = None
    """Optional name, unique within the manifest."""
    seed: Seed = 0
    """Base seed; 0 is a real seed. Variant k uses seed + k."""
    variants: Variants = 1
    """How many assets (seeds) to make from this row."""
    tags: list[str] = Field(default_factory=list)
    generator: GeneratorName | None = None
    """Stage-I backend; ``library`` by default, always ``file`` for a bundle, always
    ``kiss3dgen-mesh`` for a mesh."""
    init: InitName | None = None
    """Coarse-mesh backend; ``hull`` (the visual hull) by default, ``mesh`` (the input mesh)
    for a mesh."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Stage parameters, flat scalars (``tile``, generator and init fields, ``refine_<field>``,
    ...): see :mod:`models.parameters`."""

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `id: 7` in YAML means the name "7"
        if isinstance(value, str) and not ID_RE.match(value):
            raise ValueError(
                f"id {value[:80]!r} must be 1-128 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = nfc(value).strip()
        if not value:
            raise ValueError("prompt is empty")
        return _check_text(value, "prompt", MAX_PROMPT_CHARS)

    @field_validator("image", "bundle", "mesh")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("path is empty")
        return value.strip() if value is not None else None

    @field_validator("mesh")
    @classmethod
    def _mesh_type(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                mesh_suffix(value)
            except MeshRejected as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ManifestItem:
        if self.mesh is not None:
            return self._mesh_source()
        given = [name for name in ("prompt", "image", "bundle") if getattr(self, name) is not None]
        if self.generator == "kiss3dgen-image" and given == ["prompt", "image"]:
            given = ["image"]  # the prompt is the caption of the picture's object
        if not given:
            raise ValueError("item needs one of 'prompt', 'image', 'bundle' or 'mesh'")
        if len(given) > 1:
            raise ValueError(f"item has both {given[0]!r} and {given[1]!r}; give exactly one")
        if self.init == "mesh":
            raise ValueError("init 'mesh' starts from an input mesh: it needs a 'mesh' item")
        self.init = self.init or "hull"
        if self.generator == "kiss3dgen-mesh":
            raise ValueError("generator 'kiss3dgen-mesh' needs a 'mesh' item (an input mesh)")
        if self.generator == "kiss3dgen-image" and self.image is None:
            raise ValueError("generator 'kiss3dgen-image' needs an 'image' item")
        if self.bundle is not None:
            if self.generator not in (None, "file"):
                raise ValueError(
                    f"a 'bundle' item uses the 'file' generator, got generator {self.generator!r}"
                )
            self.generator = "file"
        elif self.generator == "file":
            raise ValueError("generator 'file' needs a 'bundle' (a ready bundle PNG)")
        elif self.generator is None:
            self.generator = "library"
        return self._check_seeds()

    def _mesh_source(self) -> ManifestItem:
        """A mesh row: the mesh plus a prompt saying what to make of it."""
        others = [name for name in ("image", "bundle") if getattr(self, name) is not None]
        if others:
            raise ValueError(f"item has both 'mesh' and {others[0]!r}; give one input")
        if self.prompt is None and self.params.get("mode", "enhance") != "enhance":
            # An enhance may leave its caption to the captioning model (FOUNDRY_CAPTION_PATH).
            raise ValueError(
                "a 'mesh' item needs a 'prompt' to edit (the change) or retexture (the new "
                "look); only an enhance may be captioned by the captioning model"
            )
        if self.generator not in (None, "kiss3dgen-mesh"):
            raise ValueError(
                f"a 'mesh' item uses the 'kiss3dgen-mesh' generator, got generator "
                f"{self.generator!r}"
            )
        self.generator = "kiss3dgen-mesh"
        self.init = self.init or "mesh"
        return self._check_seeds()

    def _check_seeds(self) -> ManifestItem:
        if self.seed + self.variants - 1 > MAX_SEED:
            raise ValueError(f"seed + variants - 1 must be at most {MAX_SEED}")
        return self

    @model_validator(mode="after")
    def _params_read_by_stages(self) -> ManifestItem:
        """Every ``params`` key must be a parameter that a stage of this row reads, with a
        value of its type and range (:mod:`models.parameters`)."""
        typed = tuple((key, type(value), value) for key, value in sorted(self.params.items()))
        problem = _params_problem(str(self.generator), str(self.init), typed)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def kind(self) -> Kind:
        if self.mesh is not None:
            return "mesh"
        if self.image is not None:
            return "image"
        return "prompt" if self.prompt is not None else "bundle"


@functools.lru_cache(maxsize=4096)
def _params_problem(
    generator: str, init: str, typed: tuple[tuple[str, type, Any], ...]
) -> str | None:
    """Why these params do not fit the row's stages, or None; remembered, since the rows of a
    big manifest mostly share their params. ``typed`` holds ``(key, type, value)``: the type
    keeps ``1``, ``1.0`` and ``true`` apart, which compare (and hash) equal."""
    try:
        check_manifest_params(
            {key: value for key, _, value in typed}, generator=generator, init=init
        )
    except ParameterError as exc:
        return str(exc)
    return None


def validation_reason(exc: ValidationError) -> str:
    """One line naming each problem: ``unknown key 'x'``, ``seed: ... (got -1)``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "value_error" or not loc:
            parts.append(msg)
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            parts.append(f"{loc}: {msg} (got {got})")
    return "; ".join(parts)
