"""How ``tests/reference/`` was made from the shared reference files (run once; kept for the record).

    python tests/reference/slim.py ../shared/reference

The authors' files are copied with two things left out, both rebuilt exactly by
``tests/conftest.py:reference_checkpoint``:

* the encoder, where it is a seeded random init (ResNet-18: ``torch.manual_seed(1);
  torchvision.models.resnet18(weights=None)`` without ``fc``; MobileNetV3-Large: seed 2, its
  ``.features``; the timm fixtures never stored theirs). Its SHA-256 goes into ``fixture.json``
  under ``encoder_init``, and this script checks the stored encoder equals the rebuilt one
  before dropping it;
* every FrEIA ``w_perm_inv``, which is exactly ``w_perm`` transposed (checked here, bit for bit).

Every tensor the tests compare (``expected.pt``, the trajectory) is copied unchanged.
"""
import hashlib
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDED_TORCHVISION = {'cflow_r18': ('resnet18', 1, False), 'cflow_mnv3l': ('mobilenet_v3_large', 2, True)}
TIMM = ('cflow_vitb16', 'cflow_effb5')


def state_sha256(state):
    """SHA-256 over a state dict: keys sorted, each key's name then its tensor's bytes (TIMM_FIXTURES.md)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def torchvision_encoder_state(arch, seed, features):
    import torchvision
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    state = (model.features if features else model).state_dict()
    return {k: v for k, v in state.items() if not k.startswith('fc.')}


def draw_encoder_state(how, arch, seed):
    """The seeded random-init encoder a fixture's ``encoder_init`` describes (``how``, ``arch``, ``seed``)."""
    if how.startswith('torch.manual_seed(seed) then timm'):
        import timm
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False).state_dict()
    return torchvision_encoder_state(arch, seed, 'features' in how)


def without_inverse_permutations(decoder_states):
    slim = []
    for state in decoder_states:
        for key in [k for k in state if k.endswith('.w_perm_inv')]:
            assert torch.equal(state[key], state[key[:-len('_inv')]].t()), key
        slim.append({k: v for k, v in state.items() if not k.endswith('.w_perm_inv')})
    return slim


def slim_fixture(source, name):
    src, dst = os.path.join(source, name), os.path.join(HERE, name)
    os.makedirs(dst, exist_ok=True)
    fixture = json.load(open(os.path.join(src, 'fixture.json')))
    checkpoint = torch.load(os.path.join(src, 'checkpoint.pt'), map_location='cpu', weights_only=True)
    if name in SEEDED_TORCHVISION:
        arch, seed, features = SEEDED_TORCHVISION[name]
        stored, rebuilt = checkpoint['encoder_state_dict'], torchvision_encoder_state(arch, seed, features)
        assert sorted(stored) == sorted(rebuilt) and all(torch.equal(stored[k], rebuilt[k]) for k in stored), name
        fixture['encoder_init'] = {
            'how': f'torch.manual_seed(seed) then torchvision.models.{arch}(weights=None)'
                   + ('.features' if features else ', fc dropped'),
            'seed': seed, 'torch': torch.__version__.split('+')[0], 'state_sha256': state_sha256(rebuilt)}
    torch.save({'decoder_state_dict': without_inverse_permutations(checkpoint['decoder_state_dict'])},
               os.path.join(dst, 'decoders.pt'))
    shutil.copy(os.path.join(src, 'expected.pt'), dst)
    for extra in ('README.md',):
        if os.path.isfile(os.path.join(src, extra)):
            shutil.copy(os.path.join(src, extra), dst)
    with open(os.path.join(dst, 'fixture.json'), 'w') as f:
        json.dump(fixture, f, indent=1)


def main(source):
    for name in (*SEEDED_TORCHVISION, *TIMM):
        slim_fixture(source, name)
    shutil.copy(os.path.join(source, 'TIMM_FIXTURES.md'), HERE)
    shutil.copytree(os.path.join(source, 'train_trajectory'), os.path.join(HERE, 'train_trajectory'),
                    dirs_exist_ok=True)


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, '..', '..', '..', 'shared', 'reference'))
