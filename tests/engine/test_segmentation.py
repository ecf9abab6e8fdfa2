"""Federated segmentation: MONAI's UNet, DiceCELoss and DiceMetric in the engine, pooled Dice,
a round under plain and secagg, and the options ``--task segmentation`` refuses."""

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.data import SiteData, make_synthetic_sites
from fedshield.engine.experiment import RunConfig, build_federation, with_data_facts
from fedshield.engine.federation import Federation
from fedshield.engine.metrics import loss_targets
from fedshield.engine.models import PadToMultiple, build_model
from fedshield.engine.paramspec import ParamSpec
from fedshield.engine.segmentation import dice_metrics, segmentation_trainer
from fedshield.engine.site import make_site
from fedshield.errors import ConfigError


class Oracle(nn.Module):
    """Logits that predict ``masks`` for the images it was built with (by batch order)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks, self.seen = masks, 0
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.masks[self.seen : self.seen + len(x), 0].float()
        self.seen += len(x)
        return torch.stack([1 - m, m], dim=1) * 10 + self.weight


def _loader(x, y, batch_size=4):
    return DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch_size)


def test_the_unet_gives_a_logit_map_per_class():
    for in_channels in (1, 3):
        model = build_model("unet", in_channels=in_channels, num_classes=2).eval()
        with torch.no_grad():
            assert model(torch.randn(2, in_channels, 28, 28)).shape == (2, 2, 28, 28)
        with torch.no_grad():  # sides that its two stride-2 levels do not divide: padded
            assert model(torch.randn(1, in_channels, 30, 29)).shape == (1, 2, 30, 29)
    spec = ParamSpec.from_module(model)
    fedbn = ParamSpec.from_module(model, exclude_batchnorm=True)
    assert fedbn.names == spec.names  # its InstanceNorm has no tensors: all of it travels


def test_pad_to_multiple_checks_its_arguments():
    with pytest.raises(TypeError, match="wraps an nn"):
        PadToMultiple("unet", 4)
    with pytest.raises(ValueError, match="positive int"):
        PadToMultiple(nn.Identity(), 0)
    probe = PadToMultiple(nn.Identity(), 4)
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    assert probe(x) is not x and torch.equal(probe(x), x)  # padded, then cropped back


def test_dice_ce_loss_takes_the_masks_as_they_are():
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    logits = torch.randn(3, 2, 8, 8, requires_grad=True)
    masks = torch.randint(0, 2, (3, 1, 8, 8))
    targets = loss_targets(loss_fn, logits, masks)
    assert targets is masks
    loss = loss_fn(logits, targets)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(logits.grad).all()


def test_dice_is_the_mean_over_images_with_empty_masks_counted():
    masks = torch.zeros(6, 1, 8, 8, dtype=torch.long)
    masks[0, 0, 2:5, 2:5] = 1  # 9 pixels
    masks[1, 0, 0:2, 0:2] = 1
    predicted = masks.clone()
    predicted[0, 0, 2, 2:5] = 0  # 6 of 9 found: Dice 2*6/(6+9) = 0.8
    predicted[2, 0, 7, 7] = 1  # a false positive on an empty mask: 0
    # image 1 exact (1), images 3-5 empty and predicted empty (1 each)
    metrics = dice_metrics(Oracle(predicted), _loader(masks.float(), masks))
    assert metrics["n"] == 6
    assert metrics["dice"] == pytest.approx((0.8 + 1 + 0 + 1 + 1 + 1) / 6)
    assert metrics["loss"] > 0


def test_pooled_dice_is_the_mean_over_every_test_image_of_every_site():
    data = make_synthetic_sites(2, train_per_site=8, test_per_site=6, task="segmentation", seed=3)
    data[1] = SiteData("site1", data[1].train_x, data[1].train_y,
                       data[1].test_x[:2], data[1].test_y[:2])  # fmt: skip
    torch.manual_seed(0)
    fed = Federation(
        model_factory=lambda: build_model("unet"),
        sites=[make_site(d, batch_size=4, seed=i) for i, d in enumerate(data)],
        trainer=segmentation_trainer(lambda p: torch.optim.Adam(p, lr=3e-3)),
        protect="plain",
    )
    record = fed.run_round().as_dict()
    model = fed.runtimes[0].load(fed.global_vector)
    per_image = []
    for d in data:
        for i in range(len(d.test_y)):
            one = _loader(d.test_x[i : i + 1], d.test_y[i : i + 1])
            per_image.append(dice_metrics(model, one)["dice"])
    assert [record["per_site"][d.name]["n"] for d in data] == [6, 2]
    assert record["dice"] == pytest.approx(np.mean(per_image), abs=1e-6)
    assert np.isnan(record["auc"])  # no class probabilities: the classification keys are NaN


@pytest.fixture(scope="module")
def one_round():
    """A 1-round run of 2 tiny synthetic segmentation sites under plain and secagg."""
    data = make_synthetic_sites(2, train_per_site=24, test_per_site=8, task="segmentation")
    records = {}
    for protect in ("plain", "secagg"):
        torch.manual_seed(0)
        fed = Federation(
            model_factory=lambda: build_model("unet"),
            sites=[make_site(d, batch_size=8, seed=i) for i, d in enumerate(data)],
            trainer=segmentation_trainer(lambda p: torch.optim.Adam(p, lr=3e-3)),
            protect=protect,
        )
        records[protect] = fed.run_round().as_dict()
    return records


@pytest.mark.parametrize("protect", ["plain", "secagg"])
def test_a_round_records_dice_pooled_and_per_site(one_round, protect):
    record = one_round[protect]
    assert record["aborted"] is None and record["clients"] == [0, 1]
    assert 0 <= record["dice"] <= 1 and np.isfinite(record["loss"])
    for metrics in record["per_site"].values():
        assert set(metrics) == {"dice", "loss", "n"} and metrics["n"] == 8


def test_secagg_trains_the_segmentation_model_as_plain_does(one_round):
    assert one_round["secagg"]["dice"] == pytest.approx(one_round["plain"]["dice"], abs=0.02)
    assert one_round["secagg"]["bytes_up_per_client"] < one_round["plain"]["bytes_up_per_client"]


def test_run_config_picks_the_unet_and_its_learning_rate():
    config = RunConfig(task="segmentation")
    assert config.model == "unet" and config.lr == 3e-3
    assert RunConfig().model == "cnn-gn" and RunConfig().lr == 1e-3
    assert RunConfig(task="segmentation", lr=0.01).lr == 0.01
    fed = build_federation(RunConfig(task="segmentation", sites=2, protect="plain"))
    assert all(isinstance(t.loss_fn, DiceCELoss) for t in fed.trainers)
    assert all(t.evaluate_fn.func is dice_metrics for t in fed.trainers)
    facts = with_data_facts(RunConfig(task="segmentation", sites=2))
    assert facts.classes == 2 and facts.in_channels == 1 and facts.max_weight == 300


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"transport": "flower"}, "runs in process only"),
        ({"dp_sgd": True, "dp_noise": 1.0}, "not wired for segmentation"),
        ({"classes": 3}, "drop --classes"),
        ({"model": "cnn-gn"}, "needs a segmentation network"),
        ({"task": "detection"}, "--task must be one of"),
    ],
)
def test_run_config_refuses_what_segmentation_cannot_do(options, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**{"task": "segmentation", **options})


def test_the_unet_is_refused_for_classification():
    with pytest.raises(ConfigError, match="use it with --task segmentation"):
        RunConfig(model="unet")
