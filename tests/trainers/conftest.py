"""Fixtures shared by the trainer tests."""
import pytest

from engine.clip_loading import load_clip_to_cpu


@pytest.fixture(scope="module")
def clip_fp32(tiny_clip_path):
    """The tiny CLIP cast to fp32, as loaded for PREC fp32/amp/bf16."""
    return load_clip_to_cpu(tiny_clip_path).float()


@pytest.fixture(scope="module")
def stage1_dirs():
    """Backbone name -> a finished base-class run of it in this test module, the stage 1 of its DPC plug-in."""
    return {}
