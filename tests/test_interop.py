"""ONNX export and the Keras bridge: the exported network computes what xpcnn computes, on real
MNIST images, and the commands follow the CLI's rules (exit 2, one line, nothing overwritten).

Each test skips, saying which wheel is missing, without onnx + onnxruntime or keras + torch.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from test_cli import run  # the CLI runner: exit code, stdout, stderr, and never a traceback

import xpcnn
from xpcnn import layers as L
from xpcnn.data import load_dataset, prepare_images
from xpcnn.errors import InputError
from xpcnn.presets import build_model, get_preset, targets

TOL = {"rtol": 1e-5, "atol": 1e-5}
# Keras 3.15's torch backend calls np.array(tensor, copy=False): NumPy 2 warns, nothing is wrong here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="the onnx wheel is not installed (pip install 'xpcnn[onnx]')")
    return pytest.importorskip("onnxruntime",
                               reason="the onnxruntime wheel is not installed (pip install 'xpcnn[onnx]')")


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")  # what xpcnn.interop.keras sets when unset
    if os.environ["KERAS_BACKEND"] == "torch":
        pytest.importorskip("torch", reason="the torch wheel (Keras' backend here) is not installed")
    return pytest.importorskip("keras", reason="the keras wheel is not installed (pip install 'xpcnn[keras]')")


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir, progress=False)


@pytest.fixture(scope="module")
def x200(mnist):
    return prepare_images(mnist.x_test[:200])


TRAINING = {"lenet": (600, 32, 1), "tutorial": (200, 200, 20), "tutorial-faithful": (200, 200, 20)}


def trained(name, mnist, _done={}):  # noqa: B006 -- trained once per session; the tests only read them
    """The preset after a few real training steps (images, batch size, epochs from TRAINING)."""
    if name not in _done:
        _done[name] = _train(name, mnist)
    return _done[name]


def _train(name, mnist):
    n, batch, epochs = TRAINING[name]
    preset = get_preset(name)
    model = build_model(preset, device="cpu").compile(preset["optimizer"], loss=preset["loss"],
                                                      learning_rate=preset["learning_rate"])
    model.fit(mnist.x_train[:n], targets(mnist.y_train[:n], preset["task"]), batch_size=batch, epochs=epochs,
              verbose=0)
    return model


def small_model():
    """Stride with odd "same" padding (extra zero bottom/right), dilation, pair padding, both
    poolings, dropout and every activation."""
    return xpcnn.Sequential(
        [L.Conv2D(4, 3, strides=2, padding="same", activation="tanh"),             # 28 -> 14, pads (0, 1)
         L.Conv2D(5, 3, dilation_rate=2, padding=(1, 2), activation="sigmoid"),    # 14 -> (12, 14)
         L.AveragePooling2D(2), L.Conv2D(6, (2, 3), padding="same"), L.ReLU(),
         L.MaxPool2D(2, strides=1), L.Flatten(), L.Dropout(0.5), L.Dense(16), L.Sigmoid(),
         L.Dense(10, activation="relu"), L.Softmax()],
        input_shape=(1, 28, 28), seed=3)


def onnx_outputs(ort, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def same_decisions(a, b):
    if a.shape[1] == 1:  # the tutorial's one sigmoid unit: digit > 4 when above 0.5
        return np.array_equal(a > 0.5, b > 0.5)
    return np.array_equal(a.argmax(1), b.argmax(1))


# ------------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("name", sorted(TRAINING))
def test_onnx_matches_predict_on_real_mnist(ort, mnist, x200, tmp_path, name):
    import onnx

    model = trained(name, mnist)
    path = tmp_path / f"{name}.onnx"
    model.to_onnx(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    want = model.predict(x200, batch_size=len(x200))  # one batch: BatchStandardize sees what ONNX sees
    got = onnx_outputs(ort, path, x200)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, **TOL)
    assert same_decisions(got, want)


def test_onnx_small_model_and_free_batch(ort, x200, tmp_path):
    model = small_model()
    model.to_onnx(tmp_path / "small.onnx")
    np.testing.assert_allclose(onnx_outputs(ort, tmp_path / "small.onnx", x200), model.predict(x200), **TOL)
    for n in (1, 7):  # any batch size
        np.testing.assert_allclose(onnx_outputs(ort, tmp_path / "small.onnx", x200[:n]), model.predict(x200[:n]),
                                   **TOL)


def test_onnx_of_a_float64_model_is_float32(ort, x200, tmp_path):
    model = build_model(get_preset("tutorial"), device="cpu", dtype="float64")
    model.to_onnx(tmp_path / "t64.onnx")
    got = onnx_outputs(ort, tmp_path / "t64.onnx", x200)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model.predict(x200.astype(np.float64)), **TOL)


def test_onnx_without_path_returns_the_graph_and_refuses_foreign_layers(ort):
    proto = small_model().to_onnx()
    assert [n.op_type for n in proto.graph.node][:3] == ["Conv", "Tanh", "Conv"]
    assert {a.name: list(a.ints) for a in proto.graph.node[0].attribute}["pads"] == [0, 0, 1, 1]

    class Square(L.Layer):
        def forward(self, x, training=True):
            return x * x

    model = xpcnn.Sequential([L.Flatten(), Square(name="sq")], input_shape=(1, 2, 2))
    with pytest.raises(InputError, match="'sq' \\(Square\\)"):
        model.to_onnx()


@pytest.mark.parametrize("module,extra", [("onnx", "onnx"), ("keras", "keras")])
def test_missing_extra_names_the_pip_command(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    model = build_model(get_preset("tutorial"), device="cpu")
    with pytest.raises(InputError, match=f"pip install 'xpcnn\\[{extra}\\]'"):
        model.to_onnx() if module == "onnx" else xpcnn.from_keras("model.keras")


# ----------------------------------------------------------------------------------- Keras
def test_keras_round_trip_of_trained_lenet(keras, mnist, x200, tmp_path):
    model = trained("lenet", mnist)
    path = tmp_path / "lenet.keras"
    from xpcnn.interop.keras import to_keras

    to_keras(model, path)
    loaded = keras.saving.load_model(path)
    want = model.predict(x200)
    got = loaded.predict(x200.transpose(0, 2, 3, 1), verbose=0)  # Keras takes (N, H, W, C)
    np.testing.assert_allclose(got, want, **TOL)
    assert same_decisions(got, want)
    back = xpcnn.from_keras(path)
    assert back.get_config()["layers"] == model.get_config()["layers"]
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), model.get_weights()))
    np.testing.assert_array_equal(back.predict(x200), want)


def test_keras_round_trip_of_the_small_model(keras, x200):
    from xpcnn.interop.keras import to_keras

    model = small_model()
    k_model = to_keras(model)
    assert "ZeroPadding2D" in [type(k).__name__ for k in k_model.layers]
    np.testing.assert_allclose(k_model.predict(x200.transpose(0, 2, 3, 1), verbose=0), model.predict(x200), **TOL)
    back = xpcnn.from_keras(k_model)
    assert [c["class"] for c in back.get_config()["layers"]][:2] == ["Conv2D", "Conv2D"]
    assert back.layers[1].padding == (1, 2)
    np.testing.assert_allclose(back.predict(x200), model.predict(x200), **TOL)


@pytest.mark.parametrize("layers,match", [
    ([L.Conv2D(2, 3, strides=2, dilation_rate=2), L.Flatten()], "'conv2d' \\(Conv2D\\).*strides"),
    ([L.Conv2D(2, 3, activation="softmax"), L.Flatten()], "'conv2d' \\(Conv2D\\).*softmax"),
    ([L.Flatten(), L.Dense(3), L.BatchStandardize()], "'batchstandardize' \\(BatchStandardize\\).*ONNX"),
])
def test_to_keras_refuses_what_keras_cannot_express(keras, layers, match):
    from xpcnn.interop.keras import to_keras

    with pytest.raises(InputError, match=match):
        to_keras(xpcnn.Sequential(layers, input_shape=(1, 9, 9)))


@pytest.mark.parametrize("channels", ["last", "last-permuted", "first"])
def test_from_keras_reads_keras_built_models(keras, x200, channels):
    kl, rng = keras.layers, np.random.default_rng(5)
    fmt = "channels_first" if channels == "first" else "channels_last"
    shape = (1, 28, 28) if channels == "first" else (28, 28, 1)
    k_model = keras.Sequential(
        [keras.Input(shape), kl.Conv2D(3, 5, padding="same", data_format=fmt), kl.ReLU(),
         kl.MaxPooling2D(2, data_format=fmt), kl.Conv2D(4, 3, activation="tanh", data_format=fmt),
         *([kl.Permute((3, 1, 2))] if channels == "last-permuted" else []),
         kl.Flatten(data_format=fmt if channels != "last-permuted" else "channels_last"), kl.Dropout(0.2),
         kl.Dense(10), kl.Softmax()])
    k_model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in k_model.get_weights()])
    model = xpcnn.from_keras(k_model)
    assert model.input_shape == (1, 28, 28)
    k_in = x200 if channels == "first" else x200.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model.predict(x200), k_model.predict(k_in, verbose=0), **TOL)


def test_from_keras_names_the_layer_it_cannot_map(keras, tmp_path):
    kl = keras.layers
    k_model = keras.Sequential([keras.Input((8, 8, 1)), kl.Conv2D(2, 3), kl.BatchNormalization(name="bn"),
                                kl.Flatten(), kl.Dense(2)])
    with pytest.raises(InputError, match="'bn' \\(BatchNormalization\\)"):
        xpcnn.from_keras(k_model)
    bad = tmp_path / "junk.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="Cannot read .*junk.keras as a Keras model"):
        xpcnn.from_keras(bad)


# ------------------------------------------------------------------------------------- CLI
def test_export_and_import_commands(ort, keras, mnist, x200, tmp_path, capsys):
    ckpt = tmp_path / "lenet.npz"
    trained("lenet", mnist).save(ckpt)
    code, out, _ = run(["export", "--checkpoint", ckpt, "--format", "onnx", tmp_path / "m.onnx"], capsys)
    assert code == 0 and "opset 17" in out and "(N, 1, 28, 28)" in out
    code, out, _ = run(["export", "--checkpoint", ckpt, tmp_path / "m.keras"], capsys)  # format from the suffix
    assert code == 0 and "channels_last" in out
    code, out, err = run(["import", tmp_path / "m.keras", "--checkpoint", tmp_path / "back.npz",
                          "--loss", "softmax_cross_entropy"], capsys)
    assert code == 0, err
    want = xpcnn.load(ckpt).predict(x200)
    np.testing.assert_array_equal(xpcnn.load(tmp_path / "back.npz").predict(x200), want)
    np.testing.assert_allclose(onnx_outputs(ort, tmp_path / "m.onnx", x200), want, **TOL)


def test_export_and_import_refusals(ort, keras, tmp_path, capsys):
    ckpt = tmp_path / "t.npz"
    build_model(get_preset("tutorial-faithful"), device="cpu").save(ckpt)
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"keep me")
    cases = [
        (["export", "--checkpoint", ckpt, existing], "old.onnx exists already. Add --overwrite"),
        (["export", "--checkpoint", ckpt, tmp_path / "m.h5"], "m.h5: expected a name ending in .onnx or .keras"),
        (["export", "--checkpoint", ckpt, "--format", "keras", tmp_path / "m.onnx"], "ending in .keras"),
        (["export", "--checkpoint", ckpt, tmp_path / "m.keras"], "'batchstandardize' (BatchStandardize)"),
        (["export", "--checkpoint", tmp_path / "none.npz", tmp_path / "m.onnx"], "none.npz"),
        (["export", "--checkpoint", ckpt, tmp_path / "no" / "m.onnx"], "folder does not exist"),
        (["import", existing, "--checkpoint", tmp_path / "b.npz"], "Expected a Keras model file ending in .keras"),
        (["import", tmp_path / "none.keras", "--checkpoint", tmp_path / "b.npz"], "does not exist"),
        (["import", tmp_path / "x.keras", "--checkpoint", ckpt], "t.npz exists already. Add --overwrite"),
    ]
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "m.keras").exists() and not list(tmp_path.glob(".*tmp*"))
    code, out, _ = run(["export", "--checkpoint", ckpt, existing, "--overwrite"], capsys)
    assert code == 0 and existing.read_bytes() != b"keep me"
