r"""Packs JKO-iFlow's rose and tree PNGs into ``jko_plugin/datasets/data/jko_iflow_2d.npz`` (run once)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

__all__ = ["main", "pack"]

SOURCE = Path("/work/shared/data/jko-iflow-2d")
TARGET = Path(__file__).resolve().parents[1] / "jko_plugin" / "datasets" / "data" / "jko_iflow_2d.npz"


def pack(source: Path, target: Path) -> dict[str, tuple[int, int]]:
    """Writes the greyscale images (as stored: row 0 at the top) and the PNGs' SHA-256 to ``target``.

    Pillow's ``convert("L")`` is the conversion JKO-iFlow's ``inf_train_gen`` uses. Both PNGs are
    grey (R = G = B in every pixel; the tree's alpha is 255 everywhere), so the luma weights change
    nothing; this is checked here, so the packed arrays are the pictures' exact grey levels.
    """
    from PIL import Image  # only here: the package reads the .npz with numpy alone

    arrays: dict[str, np.ndarray] = {}
    for name in ("rose", "tree"):
        path = source / f"img_{name}.png"
        with Image.open(path) as img:
            rgba = np.asarray(img.convert("RGBA"))
            grey = np.asarray(img.convert("L"))
        if not ((rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()):
            raise ValueError(f"{path} is not grey: its greyscale depends on the luma weights")
        if not (rgba[..., 3] == 255).all():
            raise ValueError(f"{path} has transparent pixels, which convert('L') ignores")
        if not np.array_equal(grey, rgba[..., 0]):
            raise ValueError(f"{path}: convert('L') changed the grey levels")
        arrays[name] = np.ascontiguousarray(grey, dtype=np.uint8)
        arrays[f"{name}_png_sha256"] = np.array(hashlib.sha256(path.read_bytes()).hexdigest())
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, **arrays)
    return {name: arrays[name].shape for name in ("rose", "tree")}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python tools/pack_pixel_images.py [--source DIR] [--target FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="folder holding img_rose.png, img_tree.png"
    )
    parser.add_argument("--target", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    shapes = pack(args.source, args.target)
    print(f"wrote {args.target} ({args.target.stat().st_size} bytes): {shapes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
