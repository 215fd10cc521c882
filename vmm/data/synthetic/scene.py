"""What a clip is: its shapes and colours, the spec dataclasses, the frames drawn from a spec, the spec of the
same clip played backwards, and random specs.

Frames are a function of the spec alone, drawn with float operations arranged so that a clip and its time reversal
give the same bits, which the corpus's order-sensitive test pairs rely on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from vmm.errors import VmmError

# ----------------------------------------------------------------------------
# Vocabulary. Object and background colour names never share a word, so a
# caption's colour words always name objects.
# ----------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 225, 40),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
    "purple": (155, 60, 205),
    "cyan": (40, 215, 225),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (105, 105, 105),
    "navy": (20, 28, 85),
    "olive": (60, 70, 20),
    "brown": (90, 55, 30),
}
SHAPES = ("square", "circle", "triangle", "diamond", "cross")
# Half-size of an object as a fraction of the frame side.
SIZE_FRACTION: dict[str, float] = {"small": 0.09, "large": 0.16}
# Speed in frame sides per second.
SPEED_FRACTION: dict[str, float] = {"slow": 0.15, "fast": 0.4}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE_DIRECTION = {"left": "right", "right": "left", "up": "down", "down": "up"}
EVENT_KINDS = ("move", "grow", "shrink", "appear", "disappear", "recolor")
INVERSE_EVENT = {"move": "move", "grow": "shrink", "shrink": "grow", "appear": "disappear",
                 "disappear": "appear", "recolor": "recolor"}

MIN_EVENT_FRAMES = 4  # each event gets a slot at least this long, so every change is visible
MAX_MOVE_FRACTION = 0.5  # of the frame side, per move
SHAPE_REACH = 1.3  # furthest point of any shape from its centre, in half-sizes

# ----------------------------------------------------------------------------
# Structured description of one clip.
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    """Vertical gradient from ``top`` to ``bottom`` (equal names: a plain colour)."""

    top: str
    bottom: str

    @property
    def plain(self) -> bool:
        return self.top == self.bottom


@dataclass(frozen=True)
class ObjectSpec:
    """One shape as it is at frame 0; events change it later."""

    shape: str
    color: str
    size: str  # "small" | "large"
    x: float  # centre in pixels, from the left
    y: float  # centre in pixels, from the top
    visible: bool = True


@dataclass(frozen=True)
class Event:
    """One change of one object between frames ``start`` and ``end``.

    The object is in its old state at ``start`` and in its new state from
    ``end`` on. ``origin``/``target`` (pixels) are set for ``move``;
    ``color_from``/``color_to`` for ``recolor``.
    """

    kind: str
    obj: int
    start: int
    end: int
    direction: str | None = None
    speed: str | None = None
    origin: tuple[float, float] | None = None
    target: tuple[float, float] | None = None
    color_from: str | None = None
    color_to: str | None = None


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to draw and describe one clip; events are in time order."""

    size: int
    num_frames: int
    fps: int
    background: Background
    objects: tuple[ObjectSpec, ...]
    events: tuple[Event, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (the ``spec`` entry of ``meta.json``)."""
        return {
            "size": self.size,
            "num_frames": self.num_frames,
            "fps": self.fps,
            "background": {"top": self.background.top, "bottom": self.background.bottom},
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "x": o.x, "y": o.y, "visible": o.visible}
                for o in self.objects
            ],
            "events": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(e).items() if v is not None}
                for e in self.events
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoSpec:
        """Inverse of :meth:`to_dict`."""
        events = []
        for e in data["events"]:
            e = dict(e)
            for key in ("origin", "target"):
                if key in e:
                    e[key] = tuple(e[key])
            events.append(Event(**e))
        return cls(
            size=data["size"],
            num_frames=data["num_frames"],
            fps=data["fps"],
            background=Background(**data["background"]),
            objects=tuple(ObjectSpec(**o) for o in data["objects"]),
            events=tuple(events),
        )

    def static_objects(self) -> list[int]:
        """Indices of objects that no event touches."""
        actors = {e.obj for e in self.events}
        return [i for i in range(len(self.objects)) if i not in actors]


# ----------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------


def _lerp(a: Any, b: Any, num: int, den: int) -> Any:
    # Written so that swapping (a, num) with (b, den - num) gives the same float
    # operations in another order of a commutative sum: a clip and its time
    # reversal then render bit-identical frames.
    return (a * (den - num) + b * num) / den


def _radius(size: str, frame_side: int) -> float:
    return _quantize(SIZE_FRACTION[size] * frame_side)


def _quantize(value: float) -> float:
    # Positions on a 1/8-pixel grid add and subtract exactly in floating point.
    return round(value * 8) / 8


def object_state(spec: VideoSpec, index: int, frame: int) -> tuple[float, float, float, np.ndarray, float]:
    """``(x, y, half_size, rgb, alpha)`` of object ``index`` at ``frame``.

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> x, y, half, rgb, alpha = object_state(spec, 0, 0)
    >>> rgb.shape
    (3,)
    """
    obj = spec.objects[index]
    x, y = obj.x, obj.y
    small, large = _radius("small", spec.size), _radius("large", spec.size)
    half = large if obj.size == "large" else small
    rgb = np.array(COLORS[obj.color], dtype=np.float64)
    alpha = 1.0 if obj.visible else 0.0
    for ev in spec.events:
        if ev.obj != index:
            continue
        if frame <= ev.start:
            break
        num, den = min(frame, ev.end) - ev.start, ev.end - ev.start
        if ev.kind == "move":
            x = _lerp(ev.origin[0], ev.target[0], num, den)
            y = _lerp(ev.origin[1], ev.target[1], num, den)
        elif ev.kind == "grow":
            half = _lerp(small, large, num, den)
        elif ev.kind == "shrink":
            half = _lerp(large, small, num, den)
        elif ev.kind == "appear":
            alpha = _lerp(0.0, 1.0, num, den)
        elif ev.kind == "disappear":
            alpha = _lerp(1.0, 0.0, num, den)
        elif ev.kind == "recolor":
            rgb = _lerp(np.array(COLORS[ev.color_from], np.float64), np.array(COLORS[ev.color_to], np.float64),
                        num, den)
    return x, y, half, rgb, alpha


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Signed distance in pixels to the shape's outline (negative inside)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.hypot(dx, dy) - half
    if shape == "square":
        return np.maximum(ax, ay) - 0.9 * half
    if shape == "diamond":
        return (ax + ay - 1.25 * half) / np.sqrt(2.0)
    if shape == "triangle":  # equilateral, pointing up, centroid at the centre
        inradius = 0.65 * half
        return np.maximum(np.maximum(dy, 0.866 * dx - 0.5 * dy), -0.866 * dx - 0.5 * dy) - inradius
    if shape == "cross":
        arm = 0.35 * half
        return np.minimum(np.maximum(ax - half, ay - arm), np.maximum(ax - arm, ay - half))
    raise ValueError(f"unknown shape {shape!r}")


def render_background(background: Background, size: int) -> np.ndarray:
    """The background alone as float RGB ``(size, size, 3)``.

    >>> render_background(Background("gray", "gray"), 8)[0, 0].tolist()
    [105.0, 105.0, 105.0]
    """
    top = np.array(BACKGROUND_COLORS[background.top], np.float64)
    bottom = np.array(BACKGROUND_COLORS[background.bottom], np.float64)
    weight = ((np.arange(size) + 0.5) / size)[:, None, None]
    column = top * (1 - weight) + bottom * weight
    return np.broadcast_to(column, (size, size, 3)).copy()


def render_frames(spec: VideoSpec, frames: Sequence[int] | None = None) -> np.ndarray:
    """Draw the clip (or only the listed frame indices) as ``(T, H, W, 3)`` uint8 RGB.

    Edges are anti-aliased from the signed distance; objects are drawn in spec
    order, later ones on top (sampled specs never overlap).

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> render_frames(spec).shape
    (30, 64, 64, 3)
    """
    indices = range(spec.num_frames) if frames is None else frames
    out = np.empty((len(indices), spec.size, spec.size, 3), np.uint8)
    for slot, image in enumerate(iter_frames(spec, indices)):
        out[slot] = image
    return out


def iter_frames(spec: VideoSpec, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """The frames at ``indices`` one at a time, so encoding a clip holds one frame, not the whole clip."""
    background = render_background(spec.background, spec.size)
    centres = np.arange(spec.size, dtype=np.float64) + 0.5
    for frame in indices:
        image = background.copy()
        for index, obj in enumerate(spec.objects):
            x, y, half, rgb, alpha = object_state(spec, index, frame)
            if alpha <= 0.0:
                continue
            # Only a box around the object can be covered (the signed distance is
            # below 0.5 px inside SHAPE_REACH * half + 1); outside it the blend is
            # an exact no-op, so the crop changes speed, not pixels.
            reach = SHAPE_REACH * half + 2.0
            x0, x1 = max(0, int(x - reach)), min(spec.size, int(x + reach) + 1)
            y0, y1 = max(0, int(y - reach)), min(spec.size, int(y + reach) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            dist = _signed_distance(obj.shape, centres[None, x0:x1] - x, centres[y0:y1, None] - y, half)
            cover = (np.clip(0.5 - dist, 0.0, 1.0) * alpha)[:, :, None]
            image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - cover) + rgb * cover
        yield np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Time reversal.
# ----------------------------------------------------------------------------


def _final_objects(spec: VideoSpec) -> tuple[ObjectSpec, ...]:
    """The objects as they are after the last event."""
    objects = list(spec.objects)
    for ev in spec.events:
        obj = objects[ev.obj]
        if ev.kind == "move":
            obj = replace(obj, x=ev.target[0], y=ev.target[1])
        elif ev.kind in ("grow", "shrink"):
            obj = replace(obj, size="large" if ev.kind == "grow" else "small")
        elif ev.kind in ("appear", "disappear"):
            obj = replace(obj, visible=ev.kind == "appear")
        elif ev.kind == "recolor":
            obj = replace(obj, color=ev.color_to)
        objects[ev.obj] = obj
    return tuple(objects)


def reverse_spec(spec: VideoSpec) -> VideoSpec:
    """The same clip played backwards, described as a clip in its own right.

    Frame ``t`` of the result equals frame ``T-1-t`` of ``spec`` bit for bit.
    Events run in reverse order and turn into their inverses: left <-> right,
    up <-> down, grow <-> shrink, appear <-> disappear, red->blue <-> blue->red.

    >>> spec = sample_spec(np.random.default_rng(3), size=64, fps=10, num_frames=30)
    >>> bool((render_frames(reverse_spec(spec)) == render_frames(spec)[::-1]).all())
    True
    """
    last = spec.num_frames - 1
    events = []
    for ev in reversed(spec.events):
        events.append(Event(
            kind=INVERSE_EVENT[ev.kind], obj=ev.obj, start=last - ev.end, end=last - ev.start,
            direction=OPPOSITE_DIRECTION[ev.direction] if ev.direction else None, speed=ev.speed,
            origin=ev.target, target=ev.origin, color_from=ev.color_to, color_to=ev.color_from,
        ))
    return replace(spec, objects=_final_objects(spec), events=tuple(events))


# ----------------------------------------------------------------------------
# Random specs.
# ----------------------------------------------------------------------------


class _Resample(Exception):
    """The drawn layout does not fit; draw again."""


def _choose(rng: np.random.Generator, options: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _event_kinds(rng: np.random.Generator, count: int) -> tuple[list[str], bool, str | None]:
    """One object's event kinds in order, its visibility at frame 0, and its size at frame 0 if an event forces it."""
    kinds: list[str] = []
    visible: bool | None = None  # None: no event has fixed it yet
    size: str | None = None
    for _ in range(count):
        if visible is False:
            options = ["appear"]
        else:
            options = ["move", "recolor", "disappear"]
            options += ["appear"] if visible is None else []
            options += ["grow"] if size in (None, "small") else []
            options += ["shrink"] if size in (None, "large") else []
        kind = _choose(rng, options, [3.0 if k == "move" else 1.0 for k in options])
        visible = kind != "disappear"
        if kind in ("grow", "shrink"):
            size = "large" if kind == "grow" else "small"
        kinds.append(kind)
    first_size = next((k for k in kinds if k in ("grow", "shrink")), None)
    initial_size = None if first_size is None else ("small" if first_size == "grow" else "large")
    return kinds, not kinds or kinds[0] != "appear", initial_size


def sample_spec(rng: np.random.Generator, size: int = 64, fps: int = 10, num_frames: int = 30, *,
                max_objects: int = 3, max_actors: int = 3) -> VideoSpec:
    """Draw a random clip: 1-3 objects, 1-3 events in sequence, a plain or gradient background.

    Objects get distinct colours (a recolour never takes a colour already in the
    clip) and non-overlapping paths, so each colour in a frame names one object.

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> 1 <= len(spec.objects) <= 3 and 1 <= len(spec.events) <= 3
    True
    """
    for _ in range(1000):
        try:
            return _sample_spec_once(rng, size, fps, num_frames, max_objects, max_actors)
        except _Resample:
            continue
    raise VmmError(f"size={size}, fps={fps}, {num_frames} frames leave no room for moving objects; use a larger --size")


def _sample_spec_once(rng: np.random.Generator, size: int, fps: int, num_frames: int,
                      max_objects: int, max_actors: int) -> VideoSpec:
    background_names = list(BACKGROUND_COLORS)
    if rng.random() < 0.75:
        name = _choose(rng, background_names)
        background = Background(name, name)
    else:
        top, bottom = rng.choice(len(background_names), size=2, replace=False)
        background = Background(background_names[int(top)], background_names[int(bottom)])

    num_objects = int(_choose(rng, [1, 2, 3][:max_objects], [0.45, 0.35, 0.2][:max_objects]))
    max_events = max(1, min(3, (num_frames - 1) // MIN_EVENT_FRAMES))
    num_events = int(_choose(rng, [1, 2, 3][:max_events], [0.45, 0.35, 0.2][:max_events]))
    num_actors = min(num_objects, num_events, max_actors)
    # Every actor gets at least one event; the rest go to random actors.
    actor_of_event = list(range(num_actors)) + [int(rng.integers(num_actors)) for _ in range(num_events - num_actors)]
    actor_of_event = [actor_of_event[i] for i in rng.permutation(num_events)]

    palette = list(COLORS)
    color_order = [palette[i] for i in rng.permutation(len(palette))]
    initial_colors, spare_colors = color_order[:num_objects], color_order[num_objects:]

    bounds = [round(i * (num_frames - 1) / num_events) for i in range(num_events + 1)]
    px_per_frame = {s: SPEED_FRACTION[s] * size / fps for s in SPEED_FRACTION}
    objects: list[ObjectSpec] = []
    events: list[Event | None] = [None] * num_events
    boxes: list[tuple[float, float, float, float]] = []
    for index in range(num_objects):
        slots = [i for i, a in enumerate(actor_of_event) if a == index]
        kinds, visible, forced_size = _event_kinds(rng, len(slots))
        obj_size = forced_size or _choose(rng, ["small", "large"])
        ever_large = obj_size == "large" or "grow" in kinds
        reach = SHAPE_REACH * _radius("large" if ever_large else "small", size) + 1.0
        room = size - 2 * reach
        # Path relative to the start point, with its extent.
        cx = cy = minx = maxx = miny = maxy = 0.0
        color = initial_colors[index]
        planned = []
        for slot, kind in zip(slots, kinds):
            start, end = bounds[slot], bounds[slot + 1]
            extra: dict[str, Any] = {}
            if kind == "move":
                speed = _choose(rng, ["slow", "fast"])
                step = px_per_frame[speed]
                # Room left along each direction before the path outgrows the frame.
                free_room = {"left": room - (maxx - cx), "right": room - (cx - minx),
                             "up": room - (maxy - cy), "down": room - (cy - miny)}
                fits = []
                for name, free in free_room.items():
                    frames = int(min(end - start, MAX_MOVE_FRACTION * size / step, free / step))
                    if frames >= 2 and frames * step >= 0.08 * size:
                        fits.append((name, frames))
                if not fits:
                    raise _Resample
                direction, frames = fits[int(rng.integers(len(fits)))]
                ux, uy = DIRECTIONS[direction]
                distance = _quantize(frames * step)
                end = start + frames
                before = (cx, cy)
                cx, cy = cx + ux * distance, cy + uy * distance
                minx, maxx, miny, maxy = min(minx, cx), max(maxx, cx), min(miny, cy), max(maxy, cy)
                extra = dict(direction=direction, speed=speed, origin=before, target=(cx, cy))
            elif kind == "recolor":
                if not spare_colors:
                    raise _Resample
                new_color = spare_colors.pop(0)
                extra = dict(color_from=color, color_to=new_color)
                color = new_color
            if kind in ("appear", "disappear", "recolor"):
                # A fade or a colour change is short; centre it in its slot.
                length = int(min(end - start, max(2, round(0.5 * fps))))
                start = start + (end - start - length) // 2
                end = start + length
            planned.append((slot, kind, start, end, extra))
        # Place the path so it stays inside the frame and clear of earlier objects.
        lo_x, hi_x = reach - minx, size - reach - maxx
        lo_y, hi_y = reach - miny, size - reach - maxy
        if lo_x > hi_x or lo_y > hi_y:
            raise _Resample
        for _ in range(30):
            x0 = _quantize(rng.uniform(lo_x, hi_x))
            y0 = _quantize(rng.uniform(lo_y, hi_y))
            box = (x0 + minx - reach, x0 + maxx + reach, y0 + miny - reach, y0 + maxy + reach)
            if all(box[1] <= b[0] or b[1] <= box[0] or box[3] <= b[2] or b[3] <= box[2] for b in boxes):
                break
        else:
            raise _Resample
        boxes.append(box)
        objects.append(ObjectSpec(
            shape=_choose(rng, SHAPES), color=initial_colors[index], size=obj_size, x=x0, y=y0,
            visible=visible,
        ))
        for slot, kind, start, end, extra in planned:
            if kind == "move":
                ox, oy = extra["origin"]
                tx, ty = extra["target"]
                extra = dict(extra, origin=(x0 + ox, y0 + oy), target=(x0 + tx, y0 + ty))
            events[slot] = Event(kind=kind, obj=index, start=start, end=end, **extra)
    return VideoSpec(size=size, num_frames=num_frames, fps=fps, background=background,
                     objects=tuple(objects), events=tuple(e for e in events if e is not None))
