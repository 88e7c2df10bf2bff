"""The streaming benchmark's inputs: an image folder of COUNT JPEGs at 96x96x3 and a small teacher.

scikit-learn's digits upsampled to 72x72, each placed at a random offset on a 96x96 canvas,
tinted and noised (seeded; the first N files are the same for any COUNT >= N), one sub-folder per
digit. The teacher (`--teacher OUT.h5`, trained 15 epochs on the folder) is a strided CNN of
3.6 MFLOPs per sample, so that an epoch's time is the input pipeline's, not the model's.

    .venv/bin/python benchmarks/make_image_folder.py OUT_DIR 50000 [--teacher OUT.h5]
    .venv/bin/shrinkflow run --set data.source=images:OUT_DIR --set model.source=OUT.h5
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SIZE = 96
DIGIT = SIZE * 3 // 4


def write_folder(root: Path, count: int) -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    upsampled = [Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((DIGIT, DIGIT), Image.BILINEAR)
                 for d in digits.images]
    for i in range(count):
        k = i % len(upsampled)
        canvas = np.zeros((SIZE, SIZE), np.float32)
        dy, dx = rng.integers(0, SIZE - DIGIT + 1, 2)
        canvas[dy:dy + DIGIT, dx:dx + DIGIT] = np.asarray(upsampled[k], np.float32)
        rgb = canvas[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 12, (SIZE, SIZE, 3))
        image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        image.save(root / str(digits.target[k]) / f"{i:06d}.jpg", quality=90)


def train_teacher(root: Path, out: str) -> None:
    import tf_keras as keras

    files = sorted(root.rglob("*.jpg"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float32) / 255
    y = np.array([int(f.parent.name) for f in files])
    order = np.random.default_rng(0).permutation(len(y))
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2"),
        layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv3"),
        layers.GlobalAveragePooling2D(name="pool"),
        layers.Dense(64, activation="relu", name="dense"),
        layers.Dense(10, activation="softmax", name="out"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x[order], y[order], epochs=15, batch_size=32, validation_split=0.2, verbose=2)
    model.save(out)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    write_folder(folder, int(sys.argv[2]))
    if "--teacher" in sys.argv:
        train_teacher(folder, sys.argv[sys.argv.index("--teacher") + 1])
