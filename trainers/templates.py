"""Hand-crafted prompt templates, keyed by `DATASET.NAME`; zero-shot CLIP's table and KgCoOp's variant
(docs/methods/zsclip.md, docs/methods/kgcoop.md)."""

# Zero-shot CLIP's per-dataset template (CoOp `trainers/zsclip.py`).
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# KgCoOp's regulariser table: identical except for DescribableTextures.
KGCOOP_TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}

# The 7 "select" ImageNet templates used for prompt ensembling.
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

DEFAULT_TEMPLATE = "a photo of a {}."


def template_for(dataset_name, table=CUSTOM_TEMPLATES):
    """The dataset's template; unknown (user) datasets get `a photo of a {}.`."""
    return table.get(dataset_name, DEFAULT_TEMPLATE)
