"""Google Drive IDs of the files the CoOp authors host, as listed in CoOp's data instructions.

The readers quote these in their `downloads` hints, and `scripts/prepare_data.py` fetches
them with gdown.
"""

GDRIVE_IDS = {
    "classnames.txt": "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF",  # ImageNet and its 4 variants
    "split_zhou_Caltech101.json": "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
    "split_zhou_OxfordPets.json": "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
    "split_zhou_StanfordCars.json": "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
    "cat_to_name.json": "1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0",
    "split_zhou_OxfordFlowers.json": "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
    "split_zhou_Food101.json": "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
    "split_zhou_SUN397.json": "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq",
    "split_zhou_DescribableTextures.json": "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
    "split_zhou_EuroSAT.json": "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
    "UCF-101-midframes.zip": "10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O",
    "split_zhou_UCF101.json": "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
}


def gdown_command(filename, dataset_dir):
    """The shell command that fetches `filename` into `DATA/<dataset_dir>/`."""
    return f"gdown {GDRIVE_IDS[filename]} -O DATA/{dataset_dir}/{filename}"


def gdown_hint(filename, dataset_dir, then=""):
    """A `downloads` hint for a Drive-hosted file; DATA stands for DATASET.ROOT (--root)."""
    hint = f"`{gdown_command(filename, dataset_dir)}` (CoOp authors' Google Drive; DATA = --root)"
    return f"{hint}, {then}" if then else hint
