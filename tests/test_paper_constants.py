"""The paper's numbers, typed here once from Krizhevsky et al. 2012, against the named constants
that the code, the other tests and the benchmarks import (so those never re-type them)."""
from minialex import config
from minialex.data import augment
from minialex.layers import dropout, lrn
from minialex.models import POOL
from minialex.optim import MOMENTUM, WEIGHT_DECAY


def test_lrn_constants_are_sec_3_3s():
    assert (lrn.PAPER_SIZE, lrn.PAPER_ALPHA, lrn.PAPER_BETA, lrn.PAPER_K) == (5, 1e-4, 0.75, 2)


def test_pooling_overlaps_as_in_sec_3_4():
    assert POOL == dict(kernel_size=3, stride=2)       # z = 3, s = 2


def test_augmentation_and_dropout_are_sec_4s():
    assert augment.PCA_STD == 0.1                      # alpha_i ~ N(0, 0.1), Sec. 4.1
    assert dropout.PAPER_P == 0.5                      # Sec. 4.2


def test_images_and_crops_are_256_and_224():
    # Sec. 2 (256x256 images) and 4.1 (224x224 patches); config and augment share them.
    assert (augment.IMAGE_SIZE, augment.CROP_SIZE) == (256, 224)
    assert (config.PAPER_IMAGE_SIZE, config.PAPER_CROP) == (256, 224)


def test_sgd_defaults_are_sec_5s():
    assert (MOMENTUM, WEIGHT_DECAY) == (0.9, 5e-4)
