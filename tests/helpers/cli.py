"""`train.py` on a dataset fixture with the tiny CLIP, as the CLI tests run it."""
import json
import os

import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_train(data_root, tiny_clip_path, tiny_opts, trainer, config, output_dir, *flags, opts=(),
              dataset="caltech101"):
    """`train.main` with seed 1 and 2 shots; `config` is relative to configs/trainers/, `opts` come last."""
    return train.main(["--root", data_root, "--seed", "1", "--trainer", trainer, "--backbone", tiny_clip_path,
                       "--dataset-config-file", os.path.join(REPO, "configs", "datasets", f"{dataset}.yaml"),
                       "--config-file", os.path.join(REPO, "configs", "trainers", config),
                       "--output-dir", str(output_dir), *flags, *tiny_opts, "DATASET.NUM_SHOTS", "2", *opts])


def read_results(directory):
    with open(os.path.join(directory, "results.json")) as f:
        return json.load(f)


def train_once(tmp_path_factory, name, train):
    """A fresh output folder `<tmp>/<name>N/train_base` trained by `train(folder)`; for module-scoped fixtures."""
    out = tmp_path_factory.mktemp(name) / "train_base"
    train(out)
    return out
