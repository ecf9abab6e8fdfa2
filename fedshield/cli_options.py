"""Command-line options shared by ``fedshield run`` and ``fedshield roster enrol``: the
protection and its options, and the data options a site's FedAvg weight depends on.

Each option's destination is the :class:`~fedshield.engine.experiment.RunConfig` field of the
same name. ``defaults=None`` leaves an option out of the parsed namespace unless it is given
(``argparse.SUPPRESS``), so a command can tell what was asked for from what was not.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_data_options", "add_privacy_options", "add_protocol_options"]


def _default(defaults: Any, name: str) -> Any:
    """``defaults.<name>``, or ``argparse.SUPPRESS`` without defaults."""
    return argparse.SUPPRESS if defaults is None else getattr(defaults, name)


def add_data_options(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """``--dataset`` (or ``--site-data``), ``--partition``, ``--alpha``, ``--shift``, ``--seed``,
    ``--classes`` and ``--task``: what each site's data (and so its weight) is built from.
    ``defaults``: a RunConfig, or None."""
    parser.add_argument(
        "--dataset",
        default=_default(defaults, "dataset"),
        help="synthetic | breastmnist | medmnist:PATH (default synthetic); --task "
        "segmentation: synthetic | PATH of a .npz with train_images, train_masks, "
        "test_images, test_masks",
    )
    parser.add_argument(
        "--site-data", nargs="+", metavar="SPEC", default=_default(defaults, "site_data"),
        help="each site's own image folder: one data spec (YAML/JSON) per site, in site "
        "order, instead of --dataset; --sites follows their number (docs/data.md)",
    )  # fmt: skip
    parser.add_argument(
        "--partition", choices=("iid", "dirichlet"), default=_default(defaults, "partition")
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=_default(defaults, "alpha"),
        help="Dirichlet label-skew alpha",
    )
    parser.add_argument(
        "--shift",
        action=argparse.BooleanOptionalAction,
        default=None if defaults is not None else argparse.SUPPRESS,
        help="per-site acquisition shift (default: on for synthetic only)",
    )
    parser.add_argument("--seed", type=int, default=_default(defaults, "seed"))
    parser.add_argument(
        "--classes", type=int, default=_default(defaults, "classes"),
        help="synthetic data: how many classes (default 2: lesion or not; more: lesion size "
        "grades); a MedMNIST file brings its own",
    )  # fmt: skip
    parser.add_argument(
        "--task", choices=("classification", "segmentation"), default=_default(defaults, "task"),
        help="classification (default) or segmentation: lesion masks, MONAI UNet (--model "
        "unet), Dice + cross-entropy loss, Dice per site",
    )  # fmt: skip


def add_protocol_options(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """``--protect`` and the options of each protection (what a roster pins).
    ``defaults``: a RunConfig, or None."""
    from fedshield.protocols.registry import PROTOCOLS

    none = None if defaults is not None else argparse.SUPPRESS
    parser.add_argument(
        "--protect",
        choices=PROTOCOLS,
        default=_default(defaults, "protect"),
        help="plain: server sees each update; secagg: only the sum (default); "
        "he: only ciphertexts (the sites decrypt the sum)",
    )
    parser.add_argument(
        "--he-scheme",
        choices=("bfv", "ckks"),
        default=_default(defaults, "he_scheme"),
        help="he: bfv (quantized, packed; default) or ckks (float updates)",
    )
    parser.add_argument(
        "--he-weighting",
        choices=("fraction", "integer"),
        default=_default(defaults, "he_weighting"),
        help="he (bfv): fraction (sites scale their update by their weight before quantizing;"
        " default, half the ciphertexts) or integer (levels times the weight, as secagg)",
    )
    parser.add_argument(
        "--he-keys",
        choices=("shared", "threshold"),
        default=_default(defaults, "he_keys"),
        help="he: shared (one key, held by every site; default) or threshold (each site "
        "holds a share; only --threshold of them, every site by default, decrypt the sum)",
    )
    parser.add_argument(
        "--secagg-weighting",
        choices=("fraction", "integer"),
        default=_default(defaults, "secagg_weighting"),
        help="secagg: fraction (sites scale their update by their weight before quantizing; "
        "default, no weight bits in the ring) or integer (levels times the weight)",
    )
    parser.add_argument(
        "--quant-bits",
        type=int,
        default=none,
        help="bits per quantized value, 1..16 (default: 8 for secagg, float32 for plain)",
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=none,
        help="secagg, he (bfv): a fixed range: updates are clipped to [-clip, clip] before "
        "quantization (default: per-tensor ranges that adapt each round, from a secure count "
        "of how far each site's update reached; docs/ranges.md)",
    )
    _add_secagg_options(parser, none)


def _add_secagg_options(parser: argparse.ArgumentParser, none: Any) -> None:
    """``secagg``'s share-group options (``none``: their default)."""
    parser.add_argument(
        "--threshold",
        type=int,
        default=none,
        help="secagg: Shamir threshold (default: a majority of each share group); he with "
        "--he-keys threshold: how many sites' key shares decrypt (default: every site)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=none,
        help="secagg: neighbours per client (default: complete graph up to 32)",
    )
    parser.add_argument(
        "--colluders",
        type=int,
        default=none,
        help="secagg: the most sites a malicious server may collude with; sizes the quorum "
        "that must sign the survivor set (default: threshold - 1; lower tolerates more "
        "dropouts after share_keys)",
    )


def add_privacy_options(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """Site-level differential privacy (DP-FedAvg): ``--dp-mode`` and its parameters."""
    parser.add_argument(
        "--dp-mode",
        choices=("central", "local", "distributed"),
        default=_default(defaults, "dp_mode"),
        help="site-level DP-FedAvg: each update is clipped to --dp-clip; central: the server "
        "adds the noise to the sum it learns (plain); local: each site adds it all; "
        "distributed: each site adds integer noise inside secagg or he (BFV), so that the sum "
        "of any threshold number of sites carries it all",
    )
    parser.add_argument(
        "--dp-sgd", action="store_true",
        help="record-level DP-SGD inside each site's training (Opacus): per-example gradients "
        "clipped to --dp-clip, noise per step; BatchNorm becomes GroupNorm",
    )  # fmt: skip
    parser.add_argument(
        "--dp-clip", type=float, default=_default(defaults, "dp_clip"),
        help="L2 bound of every site's update (--dp-mode) or of every example's gradient "
        "(--dp-sgd) (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--dp-epsilon", type=float, default=_default(defaults, "dp_epsilon"),
        help="target epsilon after --rounds: the noise is calibrated to reach it (--dp-sgd: "
        "per site, for its own number of batches)",
    )  # fmt: skip
    parser.add_argument(
        "--dp-noise", type=float, default=_default(defaults, "dp_noise"),
        help="noise multiplier sigma (std = sigma * clip), instead of --dp-epsilon",
    )  # fmt: skip
    parser.add_argument(
        "--dp-colluders", type=int, default=_default(defaults, "dp_colluders"),
        help="--dp-mode distributed: how many sites of a round may know their noise to the "
        "adversary (each site knows its own; default 1); the noise is sized for the others",
    )  # fmt: skip
    parser.add_argument(
        "--dp-delta", type=float, default=_default(defaults, "dp_delta"),
        help="delta of the reported (epsilon, delta) (default %(default)s)",
    )  # fmt: skip
