"""UCF101 (middle frames): 101 human actions, CoOp split `split_zhou_UCF101.json`.

Images are the middle frame of each video, supplied by the CoOp authors. CamelCase action
names are split with `_` (`ApplyEyeMakeup` -> `Apply_Eye_Makeup`), for both the folder and the
classname. The fallback reads split 01 of `ucfTrainTestlist/` (trainlist cut 80/20).
"""
import os
import re

from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, Datum, split_trainval
from engine.registry import DATASETS

_SPLITS = ("UCF101TrainTestSplits-RecognitionTask.zip from https://www.crcv.ucf.edu/data/UCF101/, "
           "extracted in DATA/ucf101/")


@DATASETS.register("UCF101")
class UCF101(DatasetBase):
    """Split JSON, or split 01 of the official lists when it is missing."""

    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    downloads = {
        "UCF-101-midframes": gdown_hint("UCF-101-midframes.zip", "ucf101", then="unzipped in DATA/ucf101/"),
        "split_zhou_UCF101.json": gdown_hint("split_zhou_UCF101.json", "ucf101"),
        "ucfTrainTestlist/classInd.txt": _SPLITS,
        "ucfTrainTestlist/trainlist01.txt": _SPLITS,
        "ucfTrainTestlist/testlist01.txt": _SPLITS,
    }
    fallback_files = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                      "ucfTrainTestlist/testlist01.txt")

    def build_split(self):
        with open(self.require("ucfTrainTestlist/classInd.txt")) as f:
            cname2lab = {}
            for line in f:
                if line.strip():
                    class_id, action = line.split()
                    cname2lab[action] = int(class_id) - 1
        trainval = self.read_list("ucfTrainTestlist/trainlist01.txt", cname2lab)
        test = self.read_list("ucfTrainTestlist/testlist01.txt", cname2lab)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, list_file, cname2lab):
        """Lines `<Action>/v_<Action>_gXX_cYY.avi [class id]`; the id is not needed."""
        image_dir = self.require(self.image_dir)
        items = []
        with open(self.require(list_file)) as f:
            for line in f:
                if not line.strip():
                    continue
                action, video = line.split()[0].split("/")
                renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))  # "YoYo" -> "Yo_Yo"
                impath = os.path.join(image_dir, renamed, video.replace(".avi", ".jpg"))
                items.append(Datum(impath, cname2lab[action], classname=renamed))
        return items
