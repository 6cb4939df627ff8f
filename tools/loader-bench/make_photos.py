"""A folder of JPEG photos of ImageNet-like size for the loader benchmark, made from the
colour photographs that ship inside scikit-image (astronaut, cat, coffee, rocket, retina,
Hubble field, motorcycle, microscopy): each file a random crop of one of them, resized to
500x375 or 375x500 (ImageNet's most common sizes) and saved at JPEG quality 90.

    /tmp/torchvenv/bin/pip install scikit-image pillow
    /tmp/torchvenv/bin/python tools/loader-bench/make_photos.py OUT_DIR [COUNT]
"""
import pathlib
import random
import sys

from PIL import Image
import skimage

out = pathlib.Path(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
data = pathlib.Path(skimage.__file__).parent / "data"
names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "retina.jpg",
         "hubble_deep_field.jpg", "motorcycle_left.png", "ihc.png"]
sources = [Image.open(data / n).convert("RGB") for n in names]
rng = random.Random(0)
(out / "photos").mkdir(parents=True, exist_ok=True)
for i in range(count):
    src = rng.choice(sources)
    w, h = src.size
    frac = rng.uniform(0.4, 1.0)
    cw, ch = int(w * frac), int(h * frac)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    size = (500, 375) if rng.random() < 0.7 else (375, 500)
    img = src.crop((left, top, left + cw, top + ch)).resize(size, Image.BICUBIC)
    img.save(out / "photos" / f"{i:05d}.jpg", quality=90)
print(f"wrote {count} JPEGs to {out / 'photos'}")
