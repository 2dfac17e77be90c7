r"""Offline data: 2-D toys, pictures (rose, tree), exact-density Gaussian mixtures, digits, MAF, files."""

from .files import load_samples, split_labels, train_test_split
from .images import digits, digits_labelled
from .labelled import LABELLED_DATASETS, LabelledDataset, conditional_log_prob, get_labelled, load_labelled
from .maf import MAF_DATASETS, MAFSplits, load_maf
from .mixture import GaussianMixture
from .pixels import (
    PIXEL_IMAGES,
    PixelMixture,
    pixel_image,
    pixel_mixture,
    rose,
    rose_log_prob,
    tree,
    tree_log_prob,
)
from .registry import DATASETS, DEFAULT_TRAIN_SIZE, Dataset, benchmark_mixture, get_dataset, load_dataset
from .toys import (
    MOONS_SCALE,
    MOONS_SHIFT,
    checkerboard,
    checkerboard_log_prob,
    circles,
    eight_gaussians,
    eight_gaussians_labelled,
    eight_gaussians_log_prob,
    moons_log_prob,
    pinwheel,
    two_moons,
    two_moons_labelled,
    two_spirals,
)

__all__ = [
    "DATASETS",
    "DEFAULT_TRAIN_SIZE",
    "MAF_DATASETS",
    "MOONS_SHIFT",
    "MOONS_SCALE",
    "PIXEL_IMAGES",
    "PixelMixture",
    "Dataset",
    "benchmark_mixture",
    "GaussianMixture",
    "MAFSplits",
    "checkerboard",
    "checkerboard_log_prob",
    "circles",
    "digits",
    "digits_labelled",
    "LABELLED_DATASETS",
    "LabelledDataset",
    "conditional_log_prob",
    "get_labelled",
    "load_labelled",
    "eight_gaussians",
    "eight_gaussians_labelled",
    "eight_gaussians_log_prob",
    "get_dataset",
    "load_dataset",
    "load_maf",
    "load_samples",
    "moons_log_prob",
    "pinwheel",
    "pixel_image",
    "pixel_mixture",
    "split_labels",
    "rose",
    "rose_log_prob",
    "train_test_split",
    "tree",
    "tree_log_prob",
    "two_moons",
    "two_moons_labelled",
    "two_spirals",
]
