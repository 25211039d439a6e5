"""Hand-crafted prompt templates, keyed by `DATASET.NAME`; zero-shot CLIP's table and KgCoOp's variant
(docs/methods/zsclip.md, docs/methods/kgcoop.md), and `template_prompts`, their token ids and embeddings
for the frozen text tower."""
from dataclasses import dataclass

import torch

from trainers.prompting import class_text, tokenize

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

# CLIP's 80 ImageNet prompt-ensembling templates, in the order of CoOp's `imagenet_templates.py`.
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

# PromptSRC's text targets: `a photo of a {}.` first, then the other 79 in order, cut at 60
# (the official PromptSRC list, used for every dataset).
PROMPTSRC_TEMPLATES = (["a photo of a {}."] + [t for t in IMAGENET_TEMPLATES if t != "a photo of a {}."])[:60]


def template_for(dataset_name, table=CUSTOM_TEMPLATES):
    """The dataset's template; unknown (user) datasets get `a photo of a {}.`."""
    return table.get(dataset_name, DEFAULT_TEMPLATE)


@dataclass
class TemplatePrompts:
    texts: list                 # `template.format(classname)`, template-major
    tokenized: torch.Tensor     # (n, 77) token ids
    embedding: torch.Tensor     # (n, 77, width) frozen token embeddings


def template_prompts(token_embedding, templates, classnames, dtype):
    """Hand-crafted prompts of every class, for the text encoder (`text_encoder(p.embedding, p.tokenized)`).

    templates: one template, or a list of them (rows are template-major: every class of the first
    template, then of the next). The embeddings are looked up without gradient and cast to `dtype`.
    """
    if isinstance(templates, str):
        templates = [templates]
    texts = [template.format(class_text(name)) for template in templates for name in classnames]
    tokenized = tokenize(texts)
    with torch.no_grad():
        embedding = token_embedding(tokenized).type(dtype)
    return TemplatePrompts(texts, tokenized, embedding)
