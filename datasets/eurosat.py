"""EuroSAT (RGB): 10 land-use classes from Sentinel-2, CoOp split `split_zhou_EuroSAT.json`.

Classnames are verbose phrases (`Annual Crop Land`), not the folder names.
"""
from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, read_and_split_data
from engine.registry import DATASETS


@DATASETS.register("EuroSAT")
class EuroSAT(DatasetBase):
    """Split JSON, or a 50/20/30 split of the class folders when it is missing."""

    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    downloads = {
        "2750": "EuroSAT.zip (RGB version; the madm.dfki.de link is dead, mirrors: Zenodo, "
                "https://huggingface.co/datasets/torchgeo/eurosat), extracted in DATA/eurosat/; "
                "or `python scripts/prepare_data.py eurosat --root DATA`",
        "split_zhou_EuroSAT.json": gdown_hint("split_zhou_EuroSAT.json", "eurosat"),
    }
    new_cnames = {
        "AnnualCrop": "Annual Crop Land",
        "Forest": "Forest",
        "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road",
        "Industrial": "Industrial Buildings",
        "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land",
        "Residential": "Residential Buildings",
        "River": "River",
        "SeaLake": "Sea or Lake",
    }

    def build_split(self):
        return read_and_split_data(self.require(self.image_dir), new_cnames=self.new_cnames)
