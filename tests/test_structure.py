"""The package's structure: one concern per package, imports that run one way, light
package ``__init__``s, registries a new file plugs into, and the Python API."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hpsearch
from hpsearch.data_utils import ArraySplit, get_dataset, list_datasets, load_dataset, registry
from hpsearch.models import build_model, list_models
from hpsearch.models import registry as model_registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hpsearch"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_no_import_circle_and_every_arrow_runs_one_way() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("0 problems")


def test_no_module_is_over_400_lines() -> None:
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 400, {p: n for p, n in sizes.items() if n > 400}


def test_importing_the_studies_package_loads_no_torch() -> None:
    result = _python("import hpsearch.studies, sys; assert 'torch' not in sys.modules")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", ["hpsearch", "hpsearch.search", "hpsearch.training",
                                     "hpsearch.tracking", "hpsearch.serving", "hpsearch.models",
                                     "hpsearch.data_utils", "hpsearch.studies"])
def test_package_init_imports_nothing_heavy(package: str) -> None:
    result = _python(f"""
        import sys, {package}
        heavy = sorted({{"torch", "mlflow", "optuna", "matplotlib", "pandas"}} & set(sys.modules))
        assert not heavy, heavy
    """)
    assert result.returncode == 0, result.stderr


def test_read_only_commands_import_neither_torch_nor_mlflow(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = _python(f"""
        import sys, optuna
        from click.testing import CliRunner
        from hpsearch.cli import main
        optuna.create_study(study_name="s", storage="{storage}").optimize(
            lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
        for args in (["studies"], ["show", "s"], ["spec", "show", "mnist"]):
            result = CliRunner().invoke(main, args + (["--storage", "{storage}"]
                                                      if args[0] != "spec" else []))
            assert result.exit_code == 0, result.output
        assert "torch" not in sys.modules and "mlflow" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr


def test_lazy_exports_resolve_and_unknown_names_raise() -> None:
    from hpsearch import training

    assert training.fit.__module__ == "hpsearch.training.loop"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        training.nope  # noqa: B018
    assert hpsearch.run.__module__ == "hpsearch.api"


def test_a_new_architecture_is_one_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "tiny.py").write_text(textwrap.dedent('''
        from torch import nn

        from hpsearch.models.registry import register_model


        @register_model("tiny")
        def tiny(*, in_channels, image_size, num_classes, depth, width, dropout):
            return nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                 nn.Linear(in_channels * image_size ** 2, num_classes))
    '''))
    import hpsearch.models.families as families_package

    list_models()  # the built-in families registered before the registry is copied
    monkeypatch.setattr(model_registry, "_BUILDERS", dict(model_registry._BUILDERS))
    monkeypatch.setattr(families_package, "__path__",
                        [*families_package.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "hpsearch.models.families.tiny", raising=False)

    assert "tiny" in list_models()
    model = build_model("tiny", in_channels=3, image_size=32, num_classes=10)
    assert model[-1].in_features == 3 * 32 * 32


def test_a_new_data_set_is_one_file(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    import hpsearch.data_utils.datasets as datasets_package

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tiny_digits.py").write_text(textwrap.dedent('''
        from hpsearch.data_utils.formats import IDX_FILES, read_idx_folder
        from hpsearch.data_utils.info import DatasetInfo
        from hpsearch.data_utils.registry import DatasetSource, register_dataset

        register_dataset(DatasetSource(
            info=DatasetInfo.build(name="tiny_digits", class_names=("zero", "one"),
                                   channels=1, size=8, mean=(0.5,), std=(0.25,),
                                   hflip=False, crop_padding=1),
            url="https://example.org/tiny-digits", files=", ".join(IDX_FILES),
            read=read_idx_folder, folders=("",), torchvision_class="MNIST",
            download_folder="raw"))
    '''))
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for stem, array in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                           (rng.integers(0, 256, (6, 8, 8)), rng.integers(0, 2, 6),
                            rng.integers(0, 256, (4, 8, 8)), rng.integers(0, 2, 4))):
        magic = 2051 if array.ndim == 3 else 2049
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (data / stem).write_bytes(header + array.astype(np.uint8).tobytes())
    list_datasets()  # the built-in data sets registered before the registry is copied
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    monkeypatch.setattr(datasets_package, "__path__",
                        [*datasets_package.__path__, str(plugins)])
    monkeypatch.delitem(sys.modules, "hpsearch.data_utils.datasets.tiny_digits", raising=False)

    assert "tiny_digits" in list_datasets()
    train, test = load_dataset("tiny_digits", data, download=False)
    assert isinstance(train, ArraySplit) and train.images.shape == (6, 1, 8, 8)
    assert len(test) == 4
    assert get_dataset("tiny_digits").info.class_names == ("zero", "one")


@pytest.mark.parametrize("package", ["hpsearch.data_utils", "hpsearch.models"])
def test_a_helper_module_beside_the_registry_is_not_a_plug_in(tmp_path: Path,
                                                             package: str) -> None:
    # A helper module next to the registry (data_utils/ or models/, not datasets/ or
    # families/) must never be imported as a data set or family: here it would raise.
    (tmp_path / "helper_module.py").write_text("raise RuntimeError('imported as a plug-in')\n")
    result = _python(f"""
        import sys, {package}
        {package}.__path__.append({str(tmp_path)!r})
        from hpsearch.data_utils import list_datasets
        from hpsearch.models import list_models
        assert list_datasets() == ["cifar10", "fashion_mnist", "mnist"], list_datasets()
        assert "mlp" in list_models() and "{package}.helper_module" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
