"""Learned block-variance perturbation (ZO Fine-tuner): blocks, networks, scales, files, reference import."""

from zolightning.variance.blocks import Block, block_kind, describe_blocks
from zolightning.variance.file_format import LearnedOptimizerFile, OptimizerFileError
from zolightning.variance.learned import LearnedVariance
from zolightning.variance.networks import FEATURES, BlockVarianceNets, normalisation_factor
from zolightning.variance.reference import UntrustedPickleError, convert_reference

__all__ = [
    "FEATURES",
    "Block",
    "BlockVarianceNets",
    "LearnedOptimizerFile",
    "LearnedVariance",
    "OptimizerFileError",
    "UntrustedPickleError",
    "block_kind",
    "convert_reference",
    "describe_blocks",
    "normalisation_factor",
]
