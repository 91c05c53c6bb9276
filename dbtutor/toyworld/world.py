"""The toy world: a seeded procedural renderer of 64x64 "photos" of objects in scenes, with captions."""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64          # final image size
SS = 2             # supersampling factor for anti-aliased edges

OBJECTS = ["ball", "box", "cone", "star", "ring", "heart"]
COLORS = {
    "red": (215, 35, 35), "orange": (245, 135, 25), "yellow": (240, 215, 35), "green": (35, 165, 55),
    "blue": (35, 80, 220), "purple": (135, 50, 185), "pink": (245, 125, 190), "brown": (120, 72, 35),
}
PATTERNS = ["plain", "striped", "dotted", "checkered"]
SCENES = ["grass", "snow", "sky", "beach", "road", "night"]
SCENE_PHRASE = {"grass": "on the grass", "snow": "on the snow", "sky": "in the sky",
                "beach": "on the beach", "road": "on the road", "night": "at night"}
# Looks that never occur in the base world: each belongs to one DreamBooth subject (see subjects.py).
LOOKS = ["ordinary", "twotone", "bullseye"]


@dataclass
class Attrs:
    object: str
    color: str
    pattern: str
    scene: str
    look: str = "ordinary"
    cx: float = 0.5      # centre, as a fraction of the image
    cy: float = 0.55
    size: float = 0.30   # half-extent, as a fraction of the image
    angle: float = 0.0   # degrees
    light: float = 1.0   # global brightness factor
    hue: tuple = (0, 0, 0)  # per-channel colour jitter

    def to_dict(self):
        return asdict(self)


def sample_attrs(rng: np.random.Generator, **fixed) -> Attrs:
    """Draw a random object in a random scene; keyword arguments pin attributes."""
    a = dict(object=OBJECTS[rng.integers(len(OBJECTS))], color=list(COLORS)[rng.integers(len(COLORS))],
             pattern=PATTERNS[rng.integers(len(PATTERNS))], scene=SCENES[rng.integers(len(SCENES))],
             cx=float(rng.uniform(0.32, 0.68)), cy=float(rng.uniform(0.38, 0.66)),
             size=float(rng.uniform(0.21, 0.32)), angle=float(rng.uniform(-25, 25)),
             light=float(rng.uniform(0.85, 1.12)), hue=tuple(int(v) for v in rng.integers(-14, 15, 3)))
    a.update(fixed)
    return Attrs(**a)


def caption(a: Attrs, rng: np.random.Generator | None = None, p_color=0.2, p_pattern=0.3, p_scene=0.3) -> str:
    """'a photo of a red striped ball on the grass', each attribute left out at random (rng=None: keep all)."""
    keep = (lambda p: True) if rng is None else (lambda p: rng.random() >= p)
    words = []
    if a.look == "ordinary" and keep(p_color):
        words.append(a.color)
    if a.look == "ordinary" and a.pattern != "plain" and keep(p_pattern):
        words.append(a.pattern)
    words.append(a.object)
    text = "a photo of " + article(words[0]) + " " + " ".join(words)
    if keep(p_scene):
        text += " " + SCENE_PHRASE[a.scene]
    return text


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ----------------------------------------------------------------------------- scenes

def _noise(rng, h, w, scale, amp):
    """Smooth value noise: random grid upsampled bilinearly."""
    g = rng.normal(0, amp, (max(2, h // scale), max(2, w // scale), 1)).astype(np.float32)
    img = Image.fromarray(((g[..., 0] + 3 * amp) / (6 * amp) * 255).clip(0, 255).astype(np.uint8))
    up = np.asarray(img.resize((w, h), Image.BILINEAR), np.float32) / 255 * (6 * amp) - 3 * amp
    return up[..., None]


def _vgrad(h, w, top, bottom, y0=0.0, y1=1.0):
    t = np.clip((np.linspace(0, 1, h)[:, None, None] - y0) / max(y1 - y0, 1e-6), 0, 1)
    return np.broadcast_to(np.array(top, np.float32) * (1 - t) + np.array(bottom, np.float32) * t, (h, w, 3)).copy()


def render_scene(scene: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """An n x n x 3 float background in 0..255."""
    horizon = int(n * rng.uniform(0.36, 0.5))
    if scene == "grass":
        img = _vgrad(n, n, (120, 175, 235), (190, 220, 245))
        img[horizon:] = _vgrad(n - horizon, n, (95, 160, 60), (60, 125, 40))
        img[horizon:] += _noise(rng, n - horizon, n, 3, 14)
    elif scene == "snow":
        img = _vgrad(n, n, (165, 170, 182), (205, 208, 215))
        img[horizon:] = _vgrad(n - horizon, n, (238, 240, 245), (222, 228, 240))
        img[horizon:] += _noise(rng, n - horizon, n, 8, 5)
    elif scene == "sky":
        img = _vgrad(n, n, (60, 120, 215), (150, 195, 240))
        for _ in range(rng.integers(2, 4)):
            cx, cy, rx, ry = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(.12, .25) * n, rng.uniform(.05, .1) * n
            yy, xx = np.mgrid[:n, :n]
            m = np.clip(1.2 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2, 0, 1)[..., None]
            img = img * (1 - m) + 250 * m
    elif scene == "beach":
        img = _vgrad(n, n, (110, 170, 235), (185, 215, 245))
        sea = int(horizon + n * 0.12)
        img[horizon:sea] = _vgrad(sea - horizon, n, (30, 95, 170), (60, 140, 190))
        img[sea:] = _vgrad(n - sea, n, (235, 210, 150), (215, 185, 120))
        img[sea:] += _noise(rng, n - sea, n, 4, 8)
    elif scene == "road":
        img = _vgrad(n, n, (95, 95, 100), (70, 70, 75)) + _noise(rng, n, n, 4, 6)
        lane = int(n * rng.uniform(0.78, 0.88))
        for x0 in range(int(rng.uniform(0, n / 4)) - n // 4, n, n // 3):
            img[lane:lane + max(2, n // 40), max(x0, 0):max(x0 + n // 6, 0)] = (230, 230, 225)
    elif scene == "night":
        img = _vgrad(n, n, (8, 12, 40), (25, 35, 80))
        for _ in range(rng.integers(12, 25)):
            x, y = rng.integers(0, n), rng.integers(0, int(n * 0.9))
            img[y:y + SS, x:x + SS] = (235, 235, 200)
    else:
        raise ValueError(f"unknown scene {scene!r}; choose one of {SCENES}")
    return img


# ----------------------------------------------------------------------------- objects

def _shape_mask(a: Attrs, n: int) -> Image.Image:
    """Anti-alias-ready binary mask of the object's silhouette, rotated by a.angle."""
    m = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(m)
    cx, cy, r = a.cx * n, a.cy * n, a.size * n
    th = math.radians(a.angle)

    def rot(pts):
        c, s = math.cos(th), math.sin(th)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]

    if a.object == "ball":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif a.object == "box":
        k = 0.85 * r
        d.polygon(rot([(-k, -k), (k, -k), (k, k), (-k, k)]), fill=255)
    elif a.object == "cone":
        d.polygon(rot([(0, -1.05 * r), (0.8 * r, 0.9 * r), (-0.8 * r, 0.9 * r)]), fill=255)
        d.ellipse(_box(rot([(0, 0.9 * r)])[0], 0.8 * r, 0.22 * r), fill=255)
    elif a.object == "star":
        pts = [((r if i % 2 == 0 else 0.45 * r) * math.sin(i * math.pi / 5),
                -(r if i % 2 == 0 else 0.45 * r) * math.cos(i * math.pi / 5)) for i in range(10)]
        d.polygon(rot(pts), fill=255)
    elif a.object == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        d.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=0)
    elif a.object == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 17 * r, (y + 2) / 17 * r))
        d.polygon(rot(pts), fill=255)
    else:
        raise ValueError(f"unknown object {a.object!r}; choose one of {OBJECTS}")
    return m


def _box(c, rx, ry):
    return [c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry]


def _texture(a: Attrs, n: int) -> np.ndarray:
    """n x n x 3 surface colour (0..255) of the object: base colour, pattern or subject look."""
    base = np.clip(np.array(COLORS[a.color], np.float32) + np.array(a.hue, np.float32), 0, 255)
    white = np.array([245, 245, 240], np.float32)
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    th = math.radians(a.angle)
    u = (xx - a.cx * n) * math.cos(th) + (yy - a.cy * n) * math.sin(th)     # object frame
    v = -(xx - a.cx * n) * math.sin(th) + (yy - a.cy * n) * math.cos(th)
    r = a.size * n
    if a.look == "twotone":                                              # subject: left red, right blue
        left = (u < 0)[..., None]
        return np.where(left, np.array(COLORS["red"], np.float32), np.array(COLORS["blue"], np.float32))
    if a.look == "bullseye":                                             # subject: yellow/black target
        ring = (np.floor(np.sqrt(u ** 2 + v ** 2) / (0.22 * r)) % 2 == 0)[..., None]
        return np.where(ring, np.array(COLORS["yellow"], np.float32), np.array((25, 25, 30), np.float32))
    period = 0.5 * r
    if a.pattern == "plain":
        mask = np.zeros((n, n), bool)
    elif a.pattern == "striped":
        mask = (np.floor(u / (period / 2)) % 2) == 1
    elif a.pattern == "dotted":
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        mask = du ** 2 + dv ** 2 < 0.22 ** 2
    elif a.pattern == "checkered":
        mask = ((np.floor(u / (period / 1.4)) + np.floor(v / (period / 1.4))) % 2) == 1
    else:
        raise ValueError(f"unknown pattern {a.pattern!r}; choose one of {PATTERNS}")
    return np.where(mask[..., None], white, base)


def render(a: Attrs, seed: int = 0) -> Image.Image:
    """Render one 64x64 RGB image of the object described by `a` (the scene's texture is seeded by `seed`)."""
    rng = np.random.default_rng(seed)
    n = SIZE * SS
    img = render_scene(a.scene, rng, n)
    mask = _shape_mask(a, n)
    edge = np.asarray(mask, np.float32) - np.asarray(mask.filter(ImageFilter.MinFilter(5)), np.float32)
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), np.float32)[..., None] / 255
    tex = _texture(a, n)
    # soft lighting from the upper left: brighter there, darker lower right
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    d = ((xx - (a.cx - 0.35 * a.size) * n) ** 2 + (yy - (a.cy - 0.35 * a.size) * n) ** 2) ** 0.5 / (2 * a.size * n)
    shade = (1.18 - 0.45 * np.clip(d, 0, 1))[..., None] if a.object == "ball" else (1.08 - 0.2 * np.clip(d, 0, 1))[..., None]
    obj = tex * shade * (1 - 0.45 * (edge[..., None] / 255))
    out = (img * (1 - m) + obj * m) * a.light
    out = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    return out.resize((SIZE, SIZE), Image.LANCZOS)


def sample_dataset(n: int, seed: int = 0, with_captions: bool = True):
    """n random (image uint8 HxWx3, caption, attrs) triples; deterministic in seed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = sample_attrs(rng)
        img = np.asarray(render(a, seed=int(rng.integers(2 ** 31))))
        yield img, (caption(a, rng) if with_captions else None), a
