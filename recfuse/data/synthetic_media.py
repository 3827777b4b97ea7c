"""Content of synthetic items: style-bearing 32x32 PNGs and topic-bearing titles/descriptions.

The latent **style** (``shape x colour family``: circle/square/triangle in warm/cool hues) is visible
only in the image, drawn with random position, size, rotation, hue jitter, a random background tint
and pixel noise, so it is learnable but not trivial. The latent **topic** is visible only in the text:
words drawn from per-topic pools mixed with shared filler words (and a few words of another topic);
some items are written in Chinese from per-topic Chinese pools, without spaces, so character
n-grams matter.

Example:
    >>> rng = np.random.default_rng(0)
    >>> png = draw_style_png(rng, style=3, size=32)
    >>> title, description = make_text(rng, topic=2, chinese=False)
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw

N_STYLES = 6
N_TOPICS = 6
SHAPES = ("circle", "square", "triangle")
COLOUR_FAMILIES = ("warm", "cool")  # style s = shape s % 3, family s // 3
_FAMILY_HUES = {"warm": (0.0, 0.14), "cool": (0.50, 0.72)}

TOPIC_NAMES = ("outdoor", "kitchen", "music", "tech", "garden", "fitness")
TOPIC_WORDS: tuple[tuple[str, ...], ...] = (
    ("tent", "hiking", "trail", "camping", "backpack", "summit", "compass", "lantern", "canyon", "kayak",
     "campfire", "sleeping-bag", "ridge", "wilderness", "trekking", "climbing", "map", "forest"),
    ("skillet", "whisk", "recipe", "baking", "knife", "saucepan", "spatula", "oven", "roast", "simmer",
     "cutting-board", "kettle", "bread", "spice", "blender", "ladle", "dough", "teapot"),
    ("guitar", "melody", "vinyl", "drum", "piano", "chord", "amplifier", "album", "rhythm", "violin",
     "microphone", "tempo", "concert", "harmony", "synth", "headphones", "bass", "lyrics"),
    ("laptop", "keyboard", "processor", "usb", "charger", "wireless", "router", "monitor", "bluetooth", "sensor",
     "battery", "firmware", "tablet", "pixel", "circuit", "webcam", "gigabit", "ssd"),
    ("seedling", "compost", "trowel", "tulip", "fertilizer", "greenhouse", "watering-can", "pruning", "soil",
     "orchid", "hedge", "mulch", "planter", "bulbs", "herb", "lawn", "rose", "sprinkler"),
    ("dumbbell", "yoga", "treadmill", "protein", "workout", "stretching", "kettlebell", "cardio", "squat",
     "running", "resistance-band", "pilates", "stamina", "jump-rope", "gym", "muscle", "sweat", "marathon"),
)  # fmt: skip
TOPIC_WORDS_ZH: tuple[tuple[str, ...], ...] = (
    ("帐篷", "徒步", "露营", "背包", "登山", "指南针", "营地", "峡谷", "森林", "头灯", "睡袋", "溪流"),
    ("炒锅", "烘焙", "菜刀", "食谱", "烤箱", "汤锅", "面团", "调料", "砧板", "茶壶", "蒸笼", "锅铲"),
    ("吉他", "旋律", "唱片", "鼓点", "钢琴", "和弦", "音响", "专辑", "节奏", "小提琴", "耳机", "乐队"),
    ("笔记本", "键盘", "芯片", "充电器", "无线", "路由器", "显示器", "蓝牙", "电池", "平板", "固件", "硬盘"),
    ("幼苗", "堆肥", "花铲", "郁金香", "肥料", "温室", "修剪", "土壤", "兰花", "花盆", "草坪", "玫瑰"),
    ("哑铃", "瑜伽", "跑步机", "蛋白粉", "健身", "拉伸", "壶铃", "有氧", "深蹲", "跑步", "普拉提", "耐力"),
)  # fmt: skip
FILLER_WORDS: tuple[str, ...] = (
    "classic", "new", "premium", "set", "edition", "daily", "style", "best", "quality", "pack", "mini", "pro",
    "deluxe", "essential", "compact", "modern", "lightweight", "durable", "gift", "value", "original", "plus",
    "series", "model", "version", "limited", "everyday", "simple", "smart", "large", "small", "black", "white",
    "with", "and", "for", "the", "of", "a", "your", "this", "great", "perfect", "easy", "use", "home", "travel",
)  # fmt: skip
FILLER_WORDS_ZH: tuple[str, ...] = (
    "经典", "新款", "高级", "套装", "限量", "日常", "精选", "轻便", "耐用", "礼物", "简约", "时尚",
    "实惠", "正品", "大号", "小号", "家用", "便携", "升级", "热卖",
)  # fmt: skip

TOPIC_SHARE = 0.4  # share of description words from the item's topic pool
CONFUSER_SHARE = 0.08  # share of description words from another topic's pool


def style_parts(style: int) -> tuple[str, str]:
    """``(shape, colour family)`` of a style id in ``[0, 6)``."""
    return SHAPES[style % len(SHAPES)], COLOUR_FAMILIES[style // len(SHAPES)]


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_style(rng: np.random.Generator, style: int, size: int = 32) -> Image.Image:
    """Draw one RGB image of ``style``.

    Returns:
        A ``size x size`` RGB PIL image.
    """
    shape, family = style_parts(style)
    bg = _rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.95))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    lo, hi = _FAMILY_HUES[family]
    colour = _rgb(rng.uniform(lo, hi), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
    radius = rng.uniform(0.18, 0.36) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0.0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        corners = 4 if shape == "square" else 3
        turns = [angle + 2 * math.pi * k / corners for k in range(corners)]
        pts = [(cx + radius * math.cos(t), cy + radius * math.sin(t)) for t in turns]
        draw.polygon(pts, fill=colour)
    # A small distractor blob of random colour, so "any coloured pixel" is not the answer.
    if rng.random() < 0.5:
        dx, dy = rng.uniform(0, size, size=2)
        d = rng.uniform(1.5, 3.5)
        draw.ellipse((dx - d, dy - d, dx + d, dy + d), fill=_rgb(rng.random(), 0.8, 0.8))
    pixels = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-2, 3, size=pixels.shape[:2] + (1,), dtype=np.int16) * 6  # few levels: compresses well
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    """Encode deterministically as PNG (no timestamps or text chunks)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def draw_style_png(rng: np.random.Generator, style: int, size: int = 32) -> bytes:
    """PNG bytes of :func:`draw_style`."""
    return png_bytes(draw_style(rng, style, size))


def _words(rng: np.random.Generator, topic: int, n: int, topic_pools: tuple[tuple[str, ...], ...],
           filler: tuple[str, ...], topic_share: float) -> list[str]:  # fmt: skip
    out: list[str] = []
    for _ in range(n):
        u = rng.random()
        if u < topic_share:
            pool = topic_pools[topic]
        elif u < topic_share + CONFUSER_SHARE:
            pool = topic_pools[(topic + 1 + int(rng.integers(0, N_TOPICS - 1))) % N_TOPICS]
        else:
            pool = filler
        out.append(pool[int(rng.integers(0, len(pool)))])
    return out


def make_text(rng: np.random.Generator, topic: int, chinese: bool) -> tuple[str, str]:
    """Title and description of an item of ``topic`` (English words or Chinese without spaces).

    Returns:
        ``(title, description)``.
    """
    if chinese:
        title_words = [*_words(rng, topic, 2, TOPIC_WORDS_ZH, FILLER_WORDS_ZH, 1.0),
                       *_words(rng, topic, 1, TOPIC_WORDS_ZH, FILLER_WORDS_ZH, 0.0)]  # fmt: skip
        rng.shuffle(title_words)
        desc = _words(rng, topic, int(rng.integers(8, 14)), TOPIC_WORDS_ZH, FILLER_WORDS_ZH, TOPIC_SHARE)
        return "".join(title_words), "".join(desc) + "。"
    title_words = [*_words(rng, topic, 2, TOPIC_WORDS, FILLER_WORDS, 1.0),
                   *_words(rng, topic, int(rng.integers(1, 3)), TOPIC_WORDS, FILLER_WORDS, 0.0)]  # fmt: skip
    rng.shuffle(title_words)
    desc = _words(rng, topic, int(rng.integers(12, 21)), TOPIC_WORDS, FILLER_WORDS, TOPIC_SHARE)
    return " ".join(title_words).capitalize(), " ".join(desc).capitalize() + "."
