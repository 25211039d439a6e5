"""The 11 benchmark datasets and the 4 ImageNet variants; importing registers them all."""
from datasets import (  # noqa: F401  (explicit list: each import registers its dataset)
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_variants,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)
