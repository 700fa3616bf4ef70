"""Point labels placed without collisions, measured with the renderer's text extents.

`place_labels` puts each label next to its point at the first of a ring of candidate offsets (right, above,
left, below, the diagonals; then farther out, with a thin leader line) whose drawn box stays inside the axes and
overlaps neither a label already placed nor any point's marker. A label that finds no free place is not drawn
(the caller keeps a legend, so nothing is lost). The figure's layout is fixed first (one draw), so the boxes
measured here are the boxes saved.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

# direction -> (unit dx, unit dy, ha, va)
_DIRS = [(1, 0.35, "left", "bottom"), (0, 1, "center", "bottom"), (-1, 0.35, "right", "bottom"),
         (0, -1, "center", "top"), (1, -0.35, "left", "top"), (-1, -0.35, "right", "top"),
         (0.8, 0.8, "left", "bottom"), (-0.8, 0.8, "right", "bottom"), (0.8, -0.8, "left", "top"),
         (-0.8, -0.8, "right", "top")]
_RADII = (4.0, 9.0, 15.0, 23.0, 33.0, 45.0)  # points


def fix_layout(fig: Figure):
    """Draw once and freeze the layout engine's result; returns the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib: loaded only when drawing

    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    fig.set_layout_engine("none")
    return fig.canvas.get_renderer()


def place_labels(fig: Figure, ax, points, texts, renderer, fontsize: float = 7.5, marker_pt: float = 4.5,
                 taken: list | None = None) -> list[str]:
    """Annotate `points` (data coordinates) of `ax` with `texts` without overlaps; returns the texts left out.
    `taken`: boxes (display units) already occupied, extended with the boxes placed here."""
    taken = taken if taken is not None else []
    px = fig.dpi / 72.0
    disp = ax.transData.transform(np.asarray(points, dtype="float64").reshape(-1, 2))
    marks = [Bbox.from_extents(x - marker_pt * px, y - marker_pt * px, x + marker_pt * px, y + marker_pt * px)
             for x, y in disp if np.isfinite(x) and np.isfinite(y)]
    frame = ax.get_window_extent(renderer)
    left_out = []
    for (x, y), (dx0, dy0), text in zip(disp, points, texts):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        placed = False
        for r in _RADII:
            for ux, uy, ha, va in _DIRS:
                off = (ux * r, uy * r)
                kw = {"arrowprops": {"arrowstyle": "-", "color": "#888888", "lw": 0.6, "shrinkA": 0, "shrinkB": 3}} \
                    if r > 10 else {}
                a = ax.annotate(text, (dx0, dy0), xytext=off, textcoords="offset points", fontsize=fontsize, ha=ha,
                                va=va, annotation_clip=False, **kw)
                a.set_in_layout(False)
                box = a.get_window_extent(renderer).padded(1.0)
                inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
                if inside and not any(box.overlaps(b) for b in taken) and not any(box.overlaps(m) for m in marks):
                    taken.append(box)
                    placed = True
                    break
                a.remove()
            if placed:
                break
        if not placed:
            left_out.append(text)
    return left_out
