"""Image grids of the privacy report: tiles of images, named rows and columns, PNG files."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trapmid_tf.files import atomic_path

GRID_PADDING = 2


def image_grid(rows, padding=GRID_PADDING):
    """Tiles images into one picture, a row per list, white padding between tiles.

    Args:
        rows: Sequence of rows; each row a sequence (or array) of float images `(H, W, C)`
            in [0, 1], all of one shape. Short rows are padded with white tiles.
        padding: Pixels between tiles and around the grid.

    Returns:
        A uint8 array `(height, width, C)`.

    Raises:
        ValueError: If there is no image or the images differ in shape.
    """
    rows = [[np.asarray(image, dtype=np.float32) for image in row] for row in rows]
    shapes = {image.shape for row in rows for image in row}
    if len(shapes) != 1:
        raise ValueError(
            f"`rows` must hold images of one (height, width, channels) shape; received shapes "
            f"{sorted(shapes)}."
        )
    (height, width, channels), columns = shapes.pop(), max(len(row) for row in rows)
    grid = np.ones(
        (
            padding + len(rows) * (height + padding),
            padding + columns * (width + padding),
            channels,
        ),
        dtype=np.float32,
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[top : top + height, left : left + width] = image
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def labelled_grid(groups, row_labels, padding=GRID_PADDING):
    """Tiles images in named column groups and named rows, the names drawn on the picture.

    Args:
        groups: Sequence of `(name, rows)`; `rows` holds one sequence of images per row label.
            A group is as wide as its longest row; shorter rows get white tiles.
        row_labels: The name of each row, drawn to the left of it.
        padding: Pixels between tiles and around the tiles.

    Returns:
        A uint8 array `(height, width, C)`: a band of group names above `image_grid`'s
        picture of the tiles, and the row names in a band to its left. A name wider than
        its group is cut short.

    Raises:
        ValueError: If a group's rows do not match `row_labels`, or as `image_grid`.
    """
    for name, rows in groups:
        if len(rows) != len(row_labels):
            raise ValueError(
                f"group {name!r} must have one row per row label ({len(row_labels)}); "
                f"received {len(rows)}."
            )
    tiles = [np.asarray(image, np.float32) for _, rows in groups for row in rows for image in row]
    if not tiles:
        raise ValueError("`groups` hold no image.")
    blank = np.ones_like(tiles[0])
    widths = [max(len(row) for row in rows) for _, rows in groups]
    body = image_grid(
        [[tile for (_, rows), width in zip(groups, widths)
          for tile in [*rows[r], *[blank] * (width - len(rows[r]))]]
         for r in range(len(row_labels))],
        padding,
    )
    font = ImageFont.load_default()
    text_height = max(font.getbbox(text)[3] for text in ["Ag", *row_labels])
    left = padding + max((int(font.getlength(text)) for text in row_labels), default=0)
    top = padding + text_height
    canvas = np.full((top + body.shape[0], left + body.shape[1], body.shape[2]), 255, np.uint8)
    canvas[top:, left:] = body
    image = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    draw = ImageDraw.Draw(image)
    tile_height, tile_width = blank.shape[:2]
    x = left + padding
    for (name, _), width in zip(groups, widths):
        room = width * (tile_width + padding) - padding
        draw.text((x, padding), _fitted(name, room, font), fill="black", font=font)
        x += width * (tile_width + padding)
    for r, label in enumerate(row_labels):
        y = top + padding + r * (tile_height + padding) + (tile_height - text_height) // 2
        draw.text((padding // 2, y), label, fill="black", font=font)
    return np.asarray(image).reshape(canvas.shape)


def _fitted(text, width, font):
    """`text`, cut short (ending in ".") until it is at most `width` pixels wide."""
    while len(text) > 1 and font.getlength(text) > width:
        text = text[:-2] + "."
    return text


def save_png(path, picture, scale=2, secret=False):
    """Writes a uint8 `(H, W, 1 or 3)` picture to `path` atomically, enlarged `scale` times.

    Args:
        path: Output `.png` path.
        picture: uint8 array, e.g. from `image_grid`.
        scale: Integer nearest-neighbour enlargement (small digits are hard to see).
        secret: If true, the file is owner-only (0600), e.g. a picture of triggers.
    """
    picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    with atomic_path(path, secret=secret) as temporary:
        image.save(temporary, format="PNG")


GRID_PRIVATE_SAMPLES = 3


def attack_grid(private_images, private_labels, reconstructions, classes):
    """Grid of a row per class: private samples, then each defense's reconstructions.

    Args:
        private_images, private_labels: The private training images and labels.
        reconstructions: `{defense: {"images", "labels"}}` of one attack, in column order.
        classes: The classes to show, one row each.

    Returns:
        A uint8 picture (see `labelled_grid`): columns named "private" and by defense, rows
        by class.
    """
    private = [private_images[private_labels == c][:GRID_PRIVATE_SAMPLES] for c in classes]
    groups = [("private", private)] + [
        (defense, [stored["images"][stored["labels"] == c] for c in classes])
        for defense, stored in reconstructions.items()
    ]
    return labelled_grid(groups, [f"class {c}" for c in classes])
