"""The plain Optuna script a user writes today, as the baseline hpsearch must beat.

torchvision FashionMNIST + ToTensor/Normalize + DataLoader, a conv-BN-ReLU-maxpool CNN family,
Adam, TPE + median pruner, validation accuracy reported per epoch. The best trial's weights are
kept in memory and evaluated once on the test set. Prints one JSON line at the end.

    python benchmarks/plain_optuna.py --trials 20 --epochs 3 --train-subset 10000 --seed 0

Timing starts at the first line, imports included: users pay for them too.
"""
import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

RAW_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def dataset_root(data_dir: str) -> str:
    """torchvision reads ROOT/FashionMNIST/raw/*-ubyte; with only the .gz files (Debian's
    package) at hand and no download possible, decompress them once into a cached folder."""
    if (Path(data_dir) / "FashionMNIST" / "raw" / RAW_FILES[0]).exists():
        return data_dir
    root = Path(tempfile.gettempdir()) / "plain_optuna_data"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        if not (raw / name).exists():
            with gzip.open(Path(data_dir) / f"{name}.gz", "rb") as src, \
                    open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return str(root)


def build_cnn(depth: int, width: int, dropout: float) -> nn.Module:
    layers, channels, size = [], 1, 28
    for i in range(depth):
        out = width * 2 ** i
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels, size = out, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(channels * size * size, 10))


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: str) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = args.device

    root = dataset_root(args.data_dir)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    full = datasets.FashionMNIST(root, train=True, transform=tf, download=False)
    test = datasets.FashionMNIST(root, train=False, transform=tf, download=False)
    order = np.random.default_rng(args.seed).permutation(len(full))  # seeded 10% validation
    n_val = len(full) // 10
    end = None if args.train_subset is None else n_val + args.train_subset
    train_idx = order[n_val:end]
    train_set = Subset(full, train_idx.tolist())
    val_loader = DataLoader(Subset(full, order[:n_val].tolist()), batch_size=1000)
    best: dict = {"val": -1.0}
    times: dict[int, tuple[float, float]] = {}

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter() - T0
        try:
            depth = trial.suggest_int("depth", 1, 3)
            width = trial.suggest_categorical("width", [16, 32, 64])
            dropout = trial.suggest_float("dropout", 0.0, 0.5)
            lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
            batch_size = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
            torch.manual_seed(args.seed + trial.number)
            model = build_cnn(depth, width, dropout).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
            for epoch in range(args.epochs):
                model.train()
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                val_acc = accuracy(model, val_loader, device)
                trial.report(val_acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            if val_acc > best["val"]:  # keep the best trial's weights in memory
                best.update(val=val_acc, params=dict(trial.params),
                            state=copy.deepcopy(model.state_dict()))
            return val_acc
        finally:
            times[trial.number] = (start, time.perf_counter() - T0)

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=args.seed),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=args.trials)

    p = best["params"]
    model = build_cnn(p["depth"], p["width"], p["dropout"]).to(device)
    model.load_state_dict(best["state"])
    test_acc = accuracy(model, DataLoader(test, batch_size=1000), device)
    wall = time.perf_counter() - T0

    trials = [{"number": t.number, "state": t.state.name, "value": t.value,
               "start_s": round(times[t.number][0], 3), "end_s": round(times[t.number][1], 3),
               "params": t.params} for t in study.trials]
    running, reached = -1.0, None  # when the running best first came within 0.005 of the end's
    for t in sorted((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["end_s"]):
        running = max(running, t["value"])
        if reached is None and running >= best["val"] - 0.005:
            reached = t["end_s"]
    print(json.dumps({"method": "plain", "seed": args.seed, "wall_s": round(wall, 2),
                      "best_val": best["val"], "test_accuracy": test_acc, "trials": trials,
                      "time_to_final_best_s": reached}))


if __name__ == "__main__":
    main()
