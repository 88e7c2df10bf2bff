"""The benchmarks' larger inputs: 10,782 28x28 digit images and tf_keras CNN teachers.

scikit-learn's digits upsampled to 28x28, 6 views of each (the image, then 5 shifted by up to 2
pixels with Gaussian noise), the views of one source image in one split (70/10/20 %), so no
test image is a shifted copy of a training one. Teachers: a 1,736,714-param CNN (conv 32-64-128,
dense 512) and a 56,714-param one (conv 16-32, dense 64), 8 epochs of Adam each, trained on the
train split. And the case users have: `digits28-all.npz` holds train and val together as x_train
(no x_val), and `cnn1.7m-all.h5` is the 1.7 M CNN trained on all of it, so a validation split
carved from x_train is one the teacher was trained on (data.val_from).

With `--applications`: the same views padded to 32x32x3 uint8 (`digits32.npz`) and
keras.applications teachers trained on its train split, no pretrained weights: MobileNetV2
alpha 0.5 and ResNet50 on pixels in [0, 1] (shrinkflow's default `data.scale_uint8`),
EfficientNetB0 on raw pixels (it rescales inside: `--set data.scale_uint8=false`).

With `--transfer`: the same `digits32.npz` and the transfer-learning shape, a model that calls
another: Input -> Rescaling(1/255) -> MobileNetV2 alpha 0.5 (include_top=False, no pretrained
weights) called as one layer -> global average pooling -> Dropout(0.2) -> Dense(10), trained like
the flat one on raw pixels (it rescales itself), once in tf_keras (`mobilenetv2-0.5-transfer.h5`)
and once in Keras 3 (`mobilenetv2-0.5-transfer.keras`), each in a process without
TF_USE_LEGACY_KERAS, where `import keras` is Keras 3. No `--set data.scale_uint8` needed: a
teacher whose first layer is that Rescaling gets uint8 pixels unscaled (tasks/load.py).

    .venv/bin/python benchmarks/make_teachers.py OUT_DIR [--applications | --transfer]
    .venv/bin/shrinkflow run --set data.source=npz:OUT_DIR/digits28.npz \\
        --set model.source=OUT_DIR/cnn1.7m.h5
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras as keras
from sklearn.datasets import load_digits

VIEWS = 6
SHIFT = 2
NOISE = 0.05


def digit_views(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    digits = load_digits()
    x = tf.image.resize(digits.images[..., None] / 16.0, (28, 28), "bilinear").numpy()
    order = rng.permutation(len(x))
    parts = {"train": order[:int(.7 * len(x))], "val": order[int(.7 * len(x)):int(.8 * len(x))],
             "test": order[int(.8 * len(x)):]}
    arrays = {}
    for name, idx in parts.items():
        xs, ys = [x[idx]], [digits.target[idx]]
        for _ in range(VIEWS - 1):
            shifted = np.stack([np.roll(np.roll(image, rng.integers(-SHIFT, SHIFT + 1), 0),
                                        rng.integers(-SHIFT, SHIFT + 1), 1) for image in x[idx]])
            xs.append(np.clip(shifted + rng.normal(0, NOISE, shifted.shape), 0, 1))
            ys.append(digits.target[idx])
        arrays[f"x_{name}"] = np.concatenate(xs).astype(np.float32)
        arrays[f"y_{name}"] = np.concatenate(ys)
    return arrays


def cnn(widths: list[int], dense: int, pool_first: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = [keras.Input((28, 28, 1))]
    for i, width in enumerate(widths):
        layers.append(keras.layers.Conv2D(width, 3, activation="relu"))
        if i or pool_first:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.Flatten(), keras.layers.Dense(dense, activation="relu"),
               keras.layers.Dense(10, activation="softmax")]
    return keras.Sequential(layers)


APPLICATIONS = {  # file name: (keras.applications builder, its arguments, scale pixels to [0, 1])
    "mobilenetv2-0.5": ("MobileNetV2", {"alpha": 0.5}, True),
    "efficientnetb0": ("EfficientNetB0", {}, False),
    "resnet50": ("ResNet50", {}, True),
}


def rgb32(x: np.ndarray) -> np.ndarray:
    """28x28x1 views in [0, 1] -> 32x32x3 uint8 (keras.applications' smallest input)."""
    return np.repeat(np.round(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))) * 255), 3, -1).astype(np.uint8)


def train(model: keras.Model, data: dict[str, np.ndarray], name: str, out: str,
          scale: float = 1.0) -> None:
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(data["x_train"] * scale, data["y_train"], epochs=8, batch_size=64, verbose=2)
    _, accuracy = model.evaluate(data["x_test"] * scale, data["y_test"], verbose=0)
    print(f"{name}: {model.count_params():,} params, test accuracy {accuracy:.4f}")
    model.save(f"{out}/{name}.h5")


def digits32(out: str) -> dict[str, np.ndarray]:
    arrays = {k: rgb32(v) if k.startswith("x_") else v for k, v in digit_views().items()}
    np.savez(f"{out}/digits32.npz", **arrays)
    return arrays


def applications(out: str) -> None:
    arrays = digits32(out)
    for name, (builder, kwargs, scaled) in APPLICATIONS.items():
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, builder)(
            weights=None, input_shape=(32, 32, 3), classes=10, **kwargs)
        for layer in model.layers:  # MobileNetV2's 0.999: its moving statistics would still be
            if isinstance(layer, keras.layers.BatchNormalization):  # mostly their start values
                layer.momentum = 0.9  # after 8 short epochs (test accuracy 11 %)
        train(model, arrays, name, out, 1 / 255 if scaled else 1.0)


# Run with the Keras to build in (`tf_keras`, or `keras`: Keras 3) and the folder of digits32.npz.
TRANSFER = """
import sys
import numpy as np
module, out = sys.argv[1], sys.argv[2]
keras = __import__(module)
layers = keras.layers
data = np.load(f"{out}/digits32.npz")
keras.utils.set_random_seed(0)
base = keras.applications.MobileNetV2(alpha=0.5, include_top=False, weights=None,
                                      input_shape=(32, 32, 3))
for layer in base.layers:  # 0.9 as the flat teachers' (applications)
    if isinstance(layer, layers.BatchNormalization):
        layer.momentum = 0.9
inputs = keras.Input((32, 32, 3))
x = layers.GlobalAveragePooling2D()(base(layers.Rescaling(1 / 255)(inputs)))
model = keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.Dropout(0.2)(x)))
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(data["x_train"].astype("float32"), data["y_train"], epochs=8, batch_size=64, verbose=2)
_, accuracy = model.evaluate(data["x_test"].astype("float32"), data["y_test"], verbose=0)
name = f"mobilenetv2-0.5-transfer.{'keras' if module == 'keras' else 'h5'}"
print(f"{name} ({module}): {model.count_params():,} params, test accuracy {accuracy:.4f}")
model.save(f"{out}/{name}")
"""


def transfer(out: str) -> None:
    digits32(out)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    for module in ("tf_keras", "keras"):
        subprocess.run([sys.executable, "-c", TRANSFER, module, out], env=env, check=True)


def main(out: str) -> None:
    arrays = digit_views()
    np.savez(f"{out}/digits28.npz", **arrays)
    everything = {"x_train": np.concatenate([arrays["x_train"], arrays["x_val"]]),
                  "y_train": np.concatenate([arrays["y_train"], arrays["y_val"]]),
                  "x_test": arrays["x_test"], "y_test": arrays["y_test"]}
    np.savez(f"{out}/digits28-all.npz", **everything)
    teachers = {"cnn1.7m": (cnn([32, 64, 128], 512, pool_first=False), arrays),
                "cnn57k": (cnn([16, 32], 64, pool_first=True), arrays),
                "cnn1.7m-all": (cnn([32, 64, 128], 512, pool_first=False), everything)}
    for name, (model, data) in teachers.items():
        train(model, data, name, out)


if __name__ == "__main__":
    {"--applications": applications, "--transfer": transfer}.get(
        next(iter(sys.argv[2:]), ""), main)(sys.argv[1])
