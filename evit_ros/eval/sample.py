"""A short synthetic driving sequence, drawn procedurally, with its exact ground truth.

The demo needs camera frames that the repository may ship: these are generated, not taken
from any data set. A pinhole camera 1.5 m above a straight street moves forward; the street
has lanes with dashed marks, kerbs and sidewalks, building blocks with windows, poles with
signs, trees, parked and moving cars, and a sky gradient. Every pixel's class is known
while drawing, so each frame comes with a label image in Cityscapes train ids.

Everything is deterministic for a given seed.
"""

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np

# Cityscapes train ids of the classes drawn.
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, CAR = 0, 1, 2, 5, 7, 8, 10, 13
LABEL_FORMAT = 'trainid'

CAMERA_HEIGHT = 1.5     # m above the road
NEAR, FAR = 1.0, 250.0  # m, drawing range
SPEED = 1.2             # m per frame (about 12 m/s at 10 Hz)
ROAD_LEFT, ROAD_RIGHT = -8.75, 5.25     # road edges, camera in the right-hand lane
LANES = (-5.25, -1.75, 1.75)            # lane-mark positions
KERB_RIGHT, KERB_LEFT = 9.5, -13.0      # outer sidewalk edges = building fronts


@dataclass
class _Camera:
    width: int
    height: int
    focal: float
    horizon: float

    def project(self, x, y, z) -> Tuple[float, float]:
        """World (x right, y up from the road, z forward) -> pixel (u, v)."""
        return (self.width / 2 + self.focal * x / z,
                self.horizon + self.focal * (CAMERA_HEIGHT - y) / z)


class _Canvas:
    """An image and its label map, painted together (painter's algorithm)."""

    def __init__(self, camera: _Camera):
        self.camera = camera
        self.image = np.zeros((camera.height, camera.width, 3), np.uint8)
        self.label = np.zeros((camera.height, camera.width), np.uint8)

    def polygon(self, points, colour, label: Optional[int]) -> None:
        pts = np.round(np.asarray(points, np.float64) * 16).astype(np.int32)[None]
        cv2.fillPoly(self.image, pts, colour, cv2.LINE_8, 4)
        if label is not None:
            cv2.fillPoly(self.label, pts, int(label), cv2.LINE_8, 4)

    def quad(self, corners3d, colour, label: Optional[int]) -> None:
        """Fill a planar world quad, clipped at the near plane."""
        pts = _clip_near(corners3d)
        if len(pts) >= 3:
            self.polygon([self.camera.project(*p) for p in pts], colour, label)

    def ellipse(self, centre3d, radii_m, colour, label) -> None:
        u, v = self.camera.project(*centre3d)
        z = centre3d[2]
        axes = (max(1, int(self.camera.focal * radii_m[0] / z)),
                max(1, int(self.camera.focal * radii_m[1] / z)))
        cv2.ellipse(self.image, (int(u), int(v)), axes, 0, 0, 360, colour, -1)
        cv2.ellipse(self.label, (int(u), int(v)), axes, 0, 0, 360, int(label), -1)


def _clip_near(points):
    """Sutherland-Hodgman clip of a 3D polygon against z >= NEAR."""
    out = []
    count = len(points)
    for i in range(count):
        a, b = np.asarray(points[i], float), np.asarray(points[(i + 1) % count], float)
        a_in, b_in = a[2] >= NEAR, b[2] >= NEAR
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return out


def _shade(colour, factor):
    return tuple(int(max(0, min(255, c * factor))) for c in colour)


class _Street:
    """The world: fixed objects along the street and cars with their own speeds."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.blocks = []  # (side x, z0, z1, height, colour, window colour)
        for side in (KERB_RIGHT, KERB_LEFT):
            z = -10.0
            while z < FAR + 60 * SPEED + 40:
                length = rng.uniform(12, 30)
                colour = tuple(int(c) for c in rng.integers(70, 190, 3))
                window = _shade(colour, 0.45)
                self.blocks.append((side, z, z + length, rng.uniform(10, 26), colour, window))
                z += length + (rng.uniform(4, 10) if rng.random() < 0.3 else 0.0)
        self.poles = [(KERB_RIGHT - 3.7, z, rng.random() < 0.5) for z in np.arange(6, 320, 17)]
        self.trees = [(KERB_LEFT + 2.0, z, rng.uniform(1.8, 2.8))
                      for z in np.arange(10, 320, 13.0)]
        self.parked = [(ROAD_RIGHT - 1.1, z, tuple(int(c) for c in rng.integers(30, 220, 3)))
                       for z in np.arange(14, 320, 23.0)]
        # moving cars: lane x, z at frame 0, speed (m/frame), colour
        self.traffic = [(-3.5, 18.0, 0.9, (40, 40, 160)), (0.0, 30.0, 1.0, (180, 180, 185)),
                        (-7.0, 60.0, -1.2, (30, 90, 30)), (0.0, 70.0, 1.3, (20, 20, 20)),
                        (-3.5, 95.0, 1.1, (150, 40, 30))]


def _draw_ground(canvas: _Canvas, travelled: float) -> None:
    far = FAR
    grey, kerb, walk = (95, 92, 90), (150, 150, 150), (155, 135, 140)
    canvas.quad([(ROAD_LEFT, 0, NEAR), (ROAD_RIGHT, 0, NEAR), (ROAD_RIGHT, 0, far),
                 (ROAD_LEFT, 0, far)], grey, ROAD)
    for x0, x1 in ((ROAD_RIGHT, KERB_RIGHT), (KERB_LEFT, ROAD_LEFT)):
        canvas.quad([(x0, 0.12, NEAR), (x1, 0.12, NEAR), (x1, 0.12, far), (x0, 0.12, far)],
                    walk, SIDEWALK)
        edge = x0 if x0 == ROAD_RIGHT else x1
        canvas.quad([(edge, 0, NEAR), (edge, 0.12, NEAR), (edge, 0.12, far), (edge, 0, far)],
                    kerb, SIDEWALK)
    # Dashed lane marks (3 m of paint every 9 m) scroll towards the camera.
    phase = travelled % 9.0
    for x in LANES:
        for z in np.arange(-phase, far, 9.0):
            if z + 3.0 < NEAR:
                continue
            canvas.quad([(x - 0.08, 0, z), (x + 0.08, 0, z), (x + 0.08, 0, z + 3),
                         (x - 0.08, 0, z + 3)], (225, 225, 225), ROAD)


def _draw_block(canvas, block, travelled):
    side, z0, z1, height, colour, window = block
    z0, z1 = z0 - travelled, z1 - travelled
    if z1 < NEAR or z0 > FAR:
        return
    front = 1.0 if side > 0 else 1.15  # the left side faces the sun
    canvas.quad([(side, 0, z0), (side, 0, z1), (side, height, z1), (side, height, z0)],
                _shade(colour, front), BUILDING)
    # Building end walls facing the camera make the blocks read as solid.
    depth = 8.0 if side > 0 else -8.0
    canvas.quad([(side, 0, z0), (side + depth, 0, z0), (side + depth, height, z0),
                 (side, height, z0)], _shade(colour, 0.8), BUILDING)
    for floor in np.arange(2.0, height - 1.5, 3.2):
        for z in np.arange(z0 + 1.0, z1 - 1.2, 2.6):
            if z < NEAR + 0.5:
                continue
            canvas.quad([(side, floor, z), (side, floor, z + 1.2), (side, floor + 1.6, z + 1.2),
                         (side, floor + 1.6, z)], window, BUILDING)


def _draw_pole(canvas, pole, travelled):
    x, z, has_sign = pole
    z -= travelled
    if z < NEAR or z > FAR:
        return
    canvas.quad([(x - 0.12, 0, z), (x + 0.12, 0, z), (x + 0.12, 7.5, z), (x - 0.12, 7.5, z)],
                (70, 70, 75), POLE)
    canvas.quad([(x - 2.2, 7.3, z), (x + 0.1, 7.3, z), (x + 0.1, 7.5, z), (x - 2.2, 7.5, z)],
                (70, 70, 75), POLE)
    if has_sign:
        canvas.quad([(x - 0.45, 2.6, z - 0.01), (x + 0.45, 2.6, z - 0.01),
                     (x + 0.45, 3.5, z - 0.01), (x - 0.45, 3.5, z - 0.01)],
                    (180, 90, 20), SIGN)


def _draw_tree(canvas, tree, travelled):
    x, z, radius = tree
    z -= travelled
    if z < NEAR + 1 or z > FAR:
        return
    canvas.quad([(x - 0.18, 0, z), (x + 0.18, 0, z), (x + 0.18, 3.2, z), (x - 0.18, 3.2, z)],
                (40, 60, 80), VEGETATION)
    canvas.ellipse((x, 3.2 + radius, z), (radius, radius * 1.1), (40, 110, 50), VEGETATION)
    # Foliage texture: clusters of leaves in several greens (fixed per tree).
    rng = np.random.default_rng(int(tree[1] * 10))
    for _ in range(40):
        angle, dist = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0, 0.8))
        green = (int(rng.integers(20, 60)), int(rng.integers(80, 160)), int(rng.integers(30, 70)))
        canvas.ellipse((x + dist * np.cos(angle), 3.2 + radius + 1.1 * dist * np.sin(angle),
                        z - 0.01), (radius * 0.18, radius * 0.15), green, VEGETATION)


def _draw_car(canvas, x, z, colour):
    if z < NEAR + 2 or z > FAR:
        return
    half, body, roof = 0.9, 0.9, 1.45
    # Shadow on the road beneath the car (still road in the labels).
    canvas.quad([(x - 1.0, 0.01, z - 0.1), (x + 1.0, 0.01, z - 0.1), (x + 1.0, 0.01, z + 4.0),
                 (x - 1.0, 0.01, z + 4.0)], (35, 35, 38), None)
    canvas.quad([(x - half, 0.25, z + 0.01), (x + half, 0.25, z + 0.01),
                 (x + half, 0.6, z + 0.01), (x - half, 0.6, z + 0.01)], _shade(colour, 0.6), CAR)
    canvas.quad([(x - half, 0.6, z), (x + half, 0.6, z), (x + half, body, z),
                 (x - half, body, z)], colour, CAR)
    canvas.quad([(x - 0.7, body, z + 0.6), (x + 0.7, body, z + 0.6), (x + 0.6, roof, z + 1.0),
                 (x - 0.6, roof, z + 1.0)], _shade(colour, 0.8), CAR)
    canvas.quad([(x - 0.55, body + 0.05, z + 0.58), (x + 0.55, body + 0.05, z + 0.58),
                 (x + 0.48, roof - 0.08, z + 0.95), (x - 0.48, roof - 0.08, z + 0.95)],
                (40, 50, 60), CAR)
    for wheel in (-0.7, 0.5):
        canvas.quad([(x + wheel, 0, z), (x + wheel + 0.2, 0, z), (x + wheel + 0.2, 0.3, z),
                     (x + wheel, 0.3, z)], (15, 15, 15), CAR)
    canvas.quad([(x - 0.85, 0.65, z - 0.01), (x - 0.6, 0.65, z - 0.01),
                 (x - 0.6, 0.75, z - 0.01), (x - 0.85, 0.75, z - 0.01)], (30, 30, 200), CAR)
    canvas.quad([(x + 0.6, 0.65, z - 0.01), (x + 0.85, 0.65, z - 0.01),
                 (x + 0.85, 0.75, z - 0.01), (x + 0.6, 0.75, z - 0.01)], (30, 30, 200), CAR)


def render_frame(index: int, size: Tuple[int, int] = (512, 1024),
                 seed: int = 7) -> Tuple[np.ndarray, np.ndarray]:
    """Return frame ``index`` of the sequence as (BGR ``HxWx3`` uint8, trainId ``HxW``).

    :param size: ``(height, width)``; the field of view stays the same at any size.
    """
    height, width = size
    camera = _Camera(width, height, focal=width * 0.55, horizon=height * 0.45)
    canvas = _Canvas(camera)
    # Sky: a vertical gradient from deep blue to a pale horizon.
    rows = np.linspace(0.0, 1.0, height)[:, None]
    top, bottom = np.array([200, 140, 90.0]), np.array([235, 215, 200.0])
    canvas.image[:] = (top * (1 - rows) + bottom * rows)[:, None, :].astype(np.uint8)
    canvas.label[:] = SKY
    street = _Street(seed)
    travelled = index * SPEED
    _draw_ground(canvas, travelled)
    # A continuous row of buildings further back shows through the gaps between blocks.
    for x in (KERB_RIGHT + 14, KERB_LEFT - 14):
        canvas.quad([(x, 0, NEAR), (x, 0, FAR), (x, 16, FAR), (x, 16, NEAR)],
                    (120, 125, 135), BUILDING)
    objects = []  # (depth, draw function)
    for block in street.blocks:
        objects.append((block[2] - travelled, lambda b=block: _draw_block(canvas, b, travelled)))
    for pole in street.poles:
        objects.append((pole[1] - travelled, lambda p=pole: _draw_pole(canvas, p, travelled)))
    for tree in street.trees:
        objects.append((tree[1] - travelled, lambda t=tree: _draw_tree(canvas, t, travelled)))
    for x, z, colour in street.parked:
        objects.append((z - travelled, lambda x=x, z=z - travelled, c=colour:
                        _draw_car(canvas, x, z, c)))
    for x, z, speed, colour in street.traffic:
        z = z + index * (speed - SPEED)
        objects.append((z, lambda x=x, z=z, c=colour: _draw_car(canvas, x, z, c)))
    for _, draw in sorted(objects, key=lambda item: -item[0]):
        draw()
    # Camera look: slight blur and sensor noise on the image only (labels stay exact).
    rng = np.random.default_rng(seed * 1000 + index)
    image = cv2.GaussianBlur(canvas.image, (3, 3), 0).astype(np.int16)
    image += rng.normal(0, 4, image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), canvas.label


def sequence(frames: int = 24, size: Tuple[int, int] = (512, 1024),
             seed: int = 7) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(name, bgr, trainid_label)`` for ``frames`` consecutive frames."""
    for index in range(frames):
        image, label = render_frame(index, size, seed)
        yield f'sample_{index:04d}', image, label


def class_ids() -> List[int]:
    """Return the train ids that appear in the sequence."""
    return [ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, CAR]
