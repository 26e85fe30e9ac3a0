"""What measures.py finds for one label: a Structure (the whole label, its body, its pieces).

A leaf module: the sequence (enumeration.py) and the LSTV findings (lstv.py) read these
records, and measures.py makes them. Voxel coordinates are (i, j, k) indices of the NIfTI
array; world coordinates are RAS+ millimetres through the NIfTI affine.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Piece:
    """One 26-connected component of a label."""

    centroid_voxel: tuple[float, float, float]
    centroid_world: tuple[float, float, float]
    volume_voxels: int
    body_centroid_voxel: tuple[float, float, float] | None = None
    body_centroid_world: tuple[float, float, float] | None = None


@dataclass
class Structure:
    instance_id: int
    kind: str                     # vertebra | sacrum | disc | endplate | other
    anatomical_label: str
    centroid_voxel: tuple[float, float, float]     # whole label, voxel indices (i, j, k)
    centroid_world: tuple[float, float, float]     # whole label, RAS+ mm
    volume_voxels: int
    volume_mm3: float
    components: int = 1
    body_centroid_voxel: tuple[float, float, float] | None = None   # vertebral body, voxel indices
    body_centroid_world: tuple[float, float, float] | None = None   # vertebral body, RAS+ mm
    pieces: list[Piece] = field(default_factory=list)               # when components > 1, largest first

    @property
    def key(self) -> str:
        return f"{self.kind}_{self.instance_id}"
