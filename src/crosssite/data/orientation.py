"""The one orientation contract for every scan format (docs/ct_inputs.md, "Orientation").

Whatever the format and the acquisition plane, a scan reaches the model as (slices, rows, columns) with
slices from feet to head, rows from anterior to posterior and columns from the patient's right to left:
axial slices as a radiologist views them (DICOM's usual axial display, LPS). Each reader states where its
array axes point in the patient (DICOM: ImageOrientationPatient and the slice normal; NIfTI: its affine;
MetaImage: its direction matrix); `to_standard` turns and flips the array to the contract. An axis is
assigned the patient axis it is closest to (an oblique or tilted scan is not resampled). A one-slice scan
must be axial: a single coronal or sagittal slice cannot give axial slices.
"""

from __future__ import annotations

import numpy as np

from crosssite.errors import DataError

#: the contract: array axis -> (patient axis in LPS, direction): slices +z (head), rows +y (posterior),
#: columns +x (left)
STANDARD = ((2, 1.0), (1, 1.0), (0, 1.0))
PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # plane whose normal is patient axis x, y, z


def closest_axes(axes: np.ndarray) -> list[tuple[int, float]]:
    """Per array axis (columns of `axes`, LPS directions), its closest patient axis and sign; each patient
    axis used once (the most certain axis chooses first, as nibabel's io_orientation does)."""
    weights = np.abs(np.asarray(axes, dtype=np.float64))
    if not np.isfinite(weights).all():
        raise ValueError("non-finite direction")
    chosen: list[tuple[int, float] | None] = [None, None, None]
    free_rows, free_cols = [0, 1, 2], [0, 1, 2]
    for _ in range(3):
        sub = weights[np.ix_(free_rows, free_cols)]
        r, c = np.unravel_index(int(np.argmax(sub)), sub.shape)
        row, col = free_rows[r], free_cols[c]
        if weights[row, col] == 0:
            raise ValueError("degenerate direction")
        chosen[col] = (row, 1.0 if axes[row][col] > 0 else -1.0)
        free_rows.remove(row)
        free_cols.remove(col)
    return chosen  # type: ignore[return-value]


def _plan(shape: tuple[int, ...], axes, where) -> tuple[list[int], tuple[int, ...]] | None:
    """(transpose order, axes to flip afterwards) that bring an array of `shape` to the contract."""
    if len(shape) != 3:
        raise DataError(f"{where}: expected a 3D volume or a 2D slice, got {len(shape)} dimensions")
    if axes is None:
        return None
    try:
        patient = closest_axes(np.asarray(axes, dtype=np.float64).reshape(3, 3))
    except ValueError:
        raise DataError(f"{where}: its orientation (direction cosines) is degenerate; cannot tell its axes") from None
    order = [next(a for a, (p, _) in enumerate(patient) if p == want) for want, _ in STANDARD]
    if 1 in shape and shape[order[0]] != 1:
        raise DataError(f"{where}: one {PLANES[patient[shape.index(1)][0]]} slice; crosssite reads axial slices "
                        "(a coronal or sagittal scan needs its whole volume)")
    return order, tuple(k for k, a in enumerate(order) if patient[a][1] != STANDARD[k][1])


def standard_shape(shape: tuple[int, ...], axes, where) -> tuple[int, int, int]:
    """(slices, rows, columns) that an array of `shape` with these axes has in the contract."""
    plan = _plan(tuple(shape), axes, where)
    return tuple(shape) if plan is None else tuple(shape[a] for a in plan[0])  # type: ignore[return-value]


def slice_order(shape: tuple[int, ...], axes, where) -> int | None:
    """How the contract's slices run over the array's first axis: 1 (same order), -1 (reversed), or None
    where the contract's slices lie along another axis (a coronal or sagittal acquisition)."""
    plan = _plan(tuple(shape), axes, where)
    if plan is None:
        return 1
    order, flips = plan
    if order[0] != 0:
        return None
    return -1 if 0 in flips else 1


def to_standard(values: np.ndarray, axes, where) -> np.ndarray:
    """`values` (3 array axes whose LPS directions are the columns of `axes`; None: already standard)
    turned and flipped to the contract (STANDARD)."""
    plan = _plan(values.shape, axes, where)
    if plan is None:
        return values
    order, flips = plan
    out = values.transpose(order)
    return np.ascontiguousarray(np.flip(out, flips) if flips else out)
