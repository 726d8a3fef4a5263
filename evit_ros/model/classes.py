"""Class names and colour palettes of the data sets the released models were trained on."""

from typing import List, Tuple

Color = Tuple[int, int, int]

# The 19 Cityscapes evaluation classes in train-id order, with the data set's own colours.
CITYSCAPES_CLASSES: Tuple[str, ...] = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
    'bus', 'train', 'motorcycle', 'bicycle')

CITYSCAPES_PALETTE: Tuple[Color, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32))

# The 150 ADE20K scene-parsing classes in label order (label png value minus one).
ADE20K_CLASSES: Tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
    'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea',
    'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe',
    'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table',
    'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine',
    'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier', 'awning',
    'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track', 'apparel',
    'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike',
    'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
    'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen',
    'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')


def distinct_palette(n: int) -> Tuple[Color, ...]:
    """Return ``n`` well-separated RGB colours (golden-ratio hue steps, two lightness bands).

    Used where a data set has no official palette (ADE20K) or for a custom class count.
    """
    import colorsys
    colors: List[Color] = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        lightness = 0.45 if i % 2 == 0 else 0.65
        saturation = 0.75 if (i // 2) % 2 == 0 else 0.55
        r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colors)


ADE20K_PALETTE: Tuple[Color, ...] = distinct_palette(len(ADE20K_CLASSES))

DATASETS = {
    'cityscapes': (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    'ade20k': (ADE20K_CLASSES, ADE20K_PALETTE),
}
