"""Deliverables besides GLB: OBJ (zipped with its MTL and PNGs) and USDZ (usd-core, ARKit rules).

Each writer takes LOD 0 (bundle frame) with the placement of :func:`models.export.asset.placement`
(``(bundle_xyz - anchor) * scale`` metres, +Y up) and returns ``{file name: path}``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from models.export.lod import LodMesh


def write_obj_zip(lod: LodMesh, anchor: np.ndarray, scale: float, out_dir: Path) -> dict[str, Path]:
    """``asset_obj.zip``: ``asset.obj`` (positions, UVs with OBJ's bottom-left origin, normals),
    ``asset.mtl`` (``map_Kd`` sRGB base colour, ``norm`` tangent-space normal map) and the PNGs.
    A vertex-coloured LOD writes ``v x y z r g b`` (sRGB) and no texture."""
    from models.export.gltf import png_bytes

    positions = (lod.vertices - anchor) * scale
    lines = ["# foundry3d asset", "mtllib asset.mtl", "o asset"]
    if lod.colours is not None:
        lines += [
            f"v {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {c[0]:.4f} {c[1]:.4f} {c[2]:.4f}"
            for p, c in zip(positions, lod.colours, strict=True)
        ]
    else:
        lines += [f"v {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for p in positions]
    has_uv = lod.uv is not None
    if has_uv:
        lines += [f"vt {u:.6f} {1.0 - v:.6f}" for u, v in lod.uv]
    lines += [f"vn {n[0]:.5f} {n[1]:.5f} {n[2]:.5f}" for n in lod.normals]
    lines.append("usemtl asset")
    for a, b, c in lod.faces + 1:
        if has_uv:
            lines.append(f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}")
        else:
            lines.append(f"f {a}//{a} {b}//{b} {c}//{c}")
    mtl = ["newmtl asset", "Kd 1.000 1.000 1.000", "Ks 0.000 0.000 0.000", "d 1.0", "illum 1"]
    members = {}
    if lod.base_colour is not None:
        mtl.append("map_Kd base_colour.png")
        members["base_colour.png"] = png_bytes(lod.base_colour)
    if lod.normal_map is not None:
        mtl.append("norm normal.png")
        members["normal.png"] = png_bytes(lod.normal_map)
    members["asset.obj"] = ("\n".join(lines) + "\n").encode()
    members["asset.mtl"] = ("\n".join(mtl) + "\n").encode()
    path = out_dir / "asset_obj.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return {"asset_obj.zip": path}


def write_usdz(lod: LodMesh, anchor: np.ndarray, scale: float, out_dir: Path) -> dict[str, Path]:
    """``asset.usdz``: one ``UsdGeom.Mesh`` (metres, +Y up) with a ``UsdPreviewSurface``
    (diffuse texture or display colours, tangent-space normal map, metallic 0, roughness 1),
    packaged with ``UsdUtils.CreateNewARKitUsdzPackage``."""
    try:
        from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt
    except ImportError as exc:
        raise ImportError("usdz export needs usd-core: pip install usd-core") from exc
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        layer = tmp_dir / "asset.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, "/asset")
        stage.SetDefaultPrim(root.GetPrim())
        Usd.ModelAPI(root.GetPrim()).SetKind("component")

        geom = UsdGeom.Mesh.Define(stage, "/asset/mesh")
        positions = (lod.vertices - anchor) * scale
        geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(positions.astype(np.float32)))
        geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(lod.faces), 3, np.int32)))
        geom.CreateFaceVertexIndicesAttr(
            Vt.IntArray.FromNumpy(lod.faces.reshape(-1).astype(np.int32))
        )
        geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        geom.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
        normals = geom.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(lod.normals.astype(np.float32)))
        geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        del normals
        lo, hi = positions.min(0), positions.max(0)
        geom.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]))

        material = UsdShade.Material.Define(stage, "/asset/material")
        surface = UsdShade.Shader.Define(stage, "/asset/material/surface")
        surface.CreateIdAttr("UsdPreviewSurface")
        surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
        surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
        material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        if lod.uv is not None:
            primvars = UsdGeom.PrimvarsAPI(geom)
            st = primvars.CreatePrimvar(
                "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex
            )
            flipped = np.stack([lod.uv[:, 0], 1.0 - lod.uv[:, 1]], 1).astype(np.float32)
            st.Set(Vt.Vec2fArray.FromNumpy(flipped))
            reader = UsdShade.Shader.Define(stage, "/asset/material/st_reader")
            reader.CreateIdAttr("UsdPrimvarReader_float2")
            reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
            st_out = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
            textures = [("base_colour", lod.base_colour, "diffuseColor", "sRGB")]
            if lod.normal_map is not None:
                textures.append(("normal", lod.normal_map, "normal", "raw"))
            for name, image, target, colour_space in textures:
                Image.fromarray(image, "RGB").save(tmp_dir / f"{name}.png")
                shader = UsdShade.Shader.Define(stage, f"/asset/material/{name}")
                shader.CreateIdAttr("UsdUVTexture")
                shader.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"{name}.png")
                shader.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st_out)
                shader.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(colour_space)
                shader.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
                shader.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
                if target == "normal":
                    # tangent-space [0, 1] -> [-1, 1]
                    shader.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2, 2, 2, 1))
                    shader.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(
                        Gf.Vec4f(-1, -1, -1, 0)
                    )
                    out = shader.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
                    surface.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(out)
                else:
                    out = shader.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
                    surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
                        out
                    )
        elif lod.colours is not None:
            display = geom.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex)
            display.Set(Vt.Vec3fArray.FromNumpy(lod.colours.astype(np.float32)))
        UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()
        path = out_dir / "asset.usdz"
        if path.exists():
            path.unlink()
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(path)):
            raise RuntimeError(f"usd-core could not package {path}")
    return {"asset.usdz": path}


#: Extra formats by name (``ExportParams.formats``).
WRITERS = {"obj": write_obj_zip, "usdz": write_usdz}
