"""The timm encoders are fed their images as the published main.py makes them: timm's input size, and
mean = std = timm's mean (tests/reference/timm_preprocess, made by the authors' code)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from actions import read_settings
from config import parse_config
from custom_datasets.common import LabelledImages
from utils.images import read_rgb, to_model_input
from custom_models.preprocessing import published_input
from tests.conftest import REFERENCE

FIXTURE = os.path.join(REFERENCE, 'timm_preprocess')
BASE = ['--no-cuda', '--encoder-weights', 'none', '--dataset', 'mvtec', '--class-name', 'bottle']


@pytest.fixture(scope='module')
def reference():
    return (json.load(open(os.path.join(FIXTURE, 'fixture.json'))),
            torch.load(os.path.join(FIXTURE, 'expected.pt'), weights_only=True))


@pytest.fixture(scope='module')
def source_files(reference, tmp_path_factory):
    """The fixture's two source images as PNG files (lossless: the pixels the authors' loader read)."""
    folder = tmp_path_factory.mktemp('timm_sources')
    paths = []
    for i, array in enumerate(reference[1]['images']):
        path = str(folder / f'source{i}.png')
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize('arch', ['tf_efficientnet_b5', 'efficientnet_b5', 'vit_base_patch16_224',
                                  'vit_base_patch16_384'])
def test_the_settings_are_timms_size_and_mean_as_std_whatever_inp_says(reference, arch, capsys):
    stated = reference[0]['encoders'][arch]
    c = parse_config(BASE + ['-enc', arch, '-inp', '256'])
    assert (c.input_size, c.input_size) == tuple(stated['img_size'])
    assert list(c.norm_mean) == pytest.approx(stated['norm_mean'], abs=0)
    assert list(c.norm_std) == pytest.approx(stated['norm_std'], abs=0)
    assert c.img_size == c.crp_size == tuple(stated['img_size'])
    # -inp names the run, as the authors' file names do (..._inp256_...), and the user is told once
    assert '_inp256_' in c.model and c.run_input_size == 256
    out = capsys.readouterr().out
    assert f'fed timm\'s input size {stated["img_size"][0]}' in out and '-inp 256 only names the run' in out


def test_the_torchvision_encoders_keep_inp_and_imagenet_statistics():
    c = parse_config(BASE + ['-enc', 'resnet18', '-inp', '192'])
    assert c.input_size == 192 and c.run_input_size == 192
    assert tuple(c.norm_std) == (0.229, 0.224, 0.225)
    assert published_input('resnet18', 192, (0.5,) * 3, (0.225,) * 3).std == (0.225,) * 3  # STC's stay


@pytest.mark.parametrize('arch', ['tf_efficientnet_b5', 'vit_base_patch16_224'])
def test_the_training_and_test_loaders_give_the_authors_inputs(reference, source_files, arch):
    """The loader every dataset uses, set up by the flags as main.py sets it up, gives the authors'
    loader output for the same pixels to float32 round-off."""
    c = parse_config(BASE + ['-enc', arch])
    expected = reference[1][f'input_{arch}']
    dataset = LabelledImages(source_files, [0, 0], [None, None], c.input_size, train=False,
                             mean=c.norm_mean, std=c.norm_std)
    got = torch.stack([dataset[i][0] for i in range(2)])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize('arch', ['tf_efficientnet_b5', 'vit_base_patch16_224'])
def test_the_deployable_model_normalises_as_the_authors_loader(reference, source_files, arch):
    """predict / load_model / export: images in [0, 1] resized by to_model_input, normalised inside the
    model with the settings a model file records."""
    from custom_models.anomaly_model import AnomalyModel
    c = parse_config(BASE + ['-enc', arch])
    model = AnomalyModel(torch.nn.Identity(), [], c.input_size, c.norm_mean, c.norm_std,
                         {'log_p_max': [], 'sum_max': 0.0})
    images = torch.stack([to_model_input(read_rgb(p), c.input_size) for p in source_files])
    torch.testing.assert_close(model.normalise(images), reference[1][f'input_{arch}'], atol=1e-6, rtol=0)


def test_an_authors_timm_checkpoint_named_inp256_is_tested_at_timms_size(tmp_path):
    """The runner passes the name's -inp; the file name keeps it, the encoder is still fed 456 px."""
    from tests.conftest import reference_checkpoint
    import shutil
    path = tmp_path / 'mvtec_tf_efficientnet_b5_freia-cflow_pl3_cb2_inp256_run0_bottle.pt'
    shutil.copy(reference_checkpoint('cflow_effb5'), path)
    for extra in ([], ['-inp', '256'], ['-inp', '456']):
        c = read_settings(BASE + ['-enc', 'tf_efficientnet_b5', '-pl', '3', '-cb', '2', '--action-type', 'norm-test',
                                  '--checkpoint', str(path)] + extra)
        assert c.input_size == 456 and tuple(c.norm_std) == (0.485, 0.456, 0.406)
        assert c.run_input_size == (456 if '456' in extra else 256)
