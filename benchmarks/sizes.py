"""Model file sizes: the authors' checkpoint against the compact file, with the encoder stored (fine-tuned
or unknown) and without (the stock ImageNet network, recorded by checksum; simulated by putting this
encoder into a temporary torch hub cache as "the ImageNet file")."""
import os
import tempfile

import numpy as np
import torch

from benchmarks.rows import Row
from custom_models.checkpoint import save_checkpoint
from custom_models.encoders import build_encoder, imagenet_cache_path
from custom_models.flows import build_decoders
from custom_models.model_file import LoadedModel, save_compact

ARCHS = ('wide_resnet50_2', 'resnet18', 'mobilenet_v3_large')


def file_sizes(arch: str, tmp: str) -> dict:
    """Bytes of the authors' .pt, the compact file with the encoder stored, and with the stock encoder."""
    torch.manual_seed(0)
    np.random.seed(0)
    encoder = build_encoder(arch, 3, 'none')
    decoders = build_decoders('freia-cflow', encoder.pool_dims, 8)
    model = LoadedModel(encoder, decoders, {'enc_arch': arch, 'dec_arch': 'freia-cflow', 'pool_layers': 3,
                                            'coupling_blocks': 8, 'input_size': 256}, None)
    sizes = {}
    save_checkpoint(os.path.join(tmp, 'a.pt'), encoder, decoders)
    sizes['authors'] = os.path.getsize(os.path.join(tmp, 'a.pt'))
    save_compact(os.path.join(tmp, 'stored.safetensors'), model)
    sizes['stored'] = os.path.getsize(os.path.join(tmp, 'stored.safetensors'))
    old = os.environ.get('TORCH_HOME')
    os.environ['TORCH_HOME'] = os.path.join(tmp, 'hub')
    try:
        os.makedirs(os.path.dirname(imagenet_cache_path(arch)))
        torch.save(encoder.net.state_dict() if arch != 'mobilenet_v3_large' else
                   {f'features.{k}': v for k, v in encoder.net.state_dict().items()}, imagenet_cache_path(arch))
        save_compact(os.path.join(tmp, 'stock.safetensors'), model)
        sizes['stock'] = os.path.getsize(os.path.join(tmp, 'stock.safetensors'))
    finally:
        os.environ.pop('TORCH_HOME') if old is None else os.environ.__setitem__('TORCH_HOME', old)
    return sizes


def run(a):
    rows = []
    for arch in ARCHS:
        with tempfile.TemporaryDirectory() as tmp:
            mb = {k: v / 2 ** 20 for k, v in file_sizes(arch, tmp).items()}
        rows.append(Row(f'model file, {arch} (-cb 8 -pl 3)', mb['authors'], 'MB', baseline=True, notes="authors' .pt"))
        rows.append(Row('  compact, encoder stored', mb['stored'], 'MB', ratio=mb['stored'] / mb['authors']))
        rows.append(Row('  compact, stock ImageNet encoder', mb['stock'], 'MB', ratio=mb['stock'] / mb['authors'],
                        notes='encoder recorded by name + SHA-256'))
    return rows
