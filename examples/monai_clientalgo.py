"""A MONAI ClientAlgo, trained federated under SecAgg+: each site keeps its own loop and data;
fedshield protects what ``get_weights`` returns.   python examples/monai_clientalgo.py"""

import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import FlStatistics, WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from monai.networks.nets import DenseNet121
from torch.utils.data import DataLoader, TensorDataset

from fedshield.data import make_synthetic_sites
from fedshield.engine import Federation
from fedshield.engine.client_algo import ClientAlgoTrainer
from fedshield.engine.metrics import classification_metrics, predict
from fedshield.engine.site import Site


def network() -> torch.nn.Module:
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=2, init_features=8,
                       growth_rate=8, block_config=(2, 2))  # fmt: skip


class MyAlgo(ClientAlgo):
    """The team's own training: a MONAI network, its loader, Adam, weight differences out."""

    def __init__(self, data) -> None:
        self.data = data

    def initialize(self, extra=None) -> None:
        self.model, self.loss = network(), torch.nn.CrossEntropyLoss()
        train = TensorDataset(
            torch.from_numpy(self.data.train_x), torch.from_numpy(self.data.train_y)
        )
        test = TensorDataset(torch.from_numpy(self.data.test_x), torch.from_numpy(self.data.test_y))
        self.train_loader = DataLoader(train, batch_size=32, shuffle=True)
        self.test_loader = DataLoader(test, batch_size=256)

    def train(self, data: ExchangeObject, extra=None) -> None:
        self.model.load_state_dict(data.weights)
        self.start = {k: v.clone() for k, v in data.weights.items()}
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.model.train()
        for x, y in self.train_loader:
            optimizer.zero_grad()
            self.loss(self.model(x), y).backward()
            optimizer.step()

    def get_weights(self, extra=None) -> ExchangeObject:
        diff = {k: v - self.start[k] for k, v in self.model.state_dict().items()}
        steps = {FlStatistics.NUM_EXECUTED_ITERATIONS: len(self.train_loader)}
        return ExchangeObject(weights=diff, weight_type=WeightType.WEIGHT_DIFF, statistics=steps)

    def evaluate(self, data: ExchangeObject, extra=None) -> ExchangeObject:
        self.model.load_state_dict(data.weights)
        metrics = classification_metrics(*predict(self.model, self.test_loader, self.loss))
        return ExchangeObject(metrics={k: metrics[k] for k in ("auc", "accuracy", "n")})


def main(rounds: int = 3, sites: int = 3) -> list[dict]:
    data = make_synthetic_sites(sites, train_per_site=120, test_per_site=60)
    fed = Federation(
        model_factory=network, protect="secagg",
        sites=[Site(d.name, train=None, test=None, weight=float(d.n_train)) for d in data],
        trainer=[ClientAlgoTrainer(MyAlgo(d)) for d in data],  # one per site, in order
    )  # fmt: skip
    records = []
    for _ in range(rounds):
        records.append(record := fed.run_round().as_dict())
        print(f"round {record['round']}: site-mean AUC {record['auc']:.3f}, "
              f"{record['bytes_up_per_client']:,.0f} B up per site")  # fmt: skip
    fed.finalize()
    return records


if __name__ == "__main__":
    main()
