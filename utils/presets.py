"""The paper's configurations as presets for ``reproduce.py``, and its published numbers.

A preset fixes what a table column fixes (encoder, ``-cb``, ``-pl``, ``-inp``, decoder,
AUPRO on or off); the runner adds the class, ``-run`` and the data. The published numbers
live in ``published.json`` beside this file, transcribed from the paper's tables (A:
localization AUROC per configuration; B: the final WRN50 results with per-class input
sizes; the MobileNetV3-Large averages of the released checkpoints).
"""
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from utils.errors import CflowError
from utils.results import model_name

PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'published.json')


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    enc: str
    coupling_blocks: int
    pool_layers: int
    input_size: Union[int, Dict[str, int]]  # one size, or per class (table B)
    dec: str = 'freia-cflow'
    pro: bool = True
    action: str = 'norm-train'  # 'norm-test' for the released checkpoints
    network: str = 'cflow'      # or 'differnet' (--model differnet: its own flags)

    def input_for(self, class_name: str) -> int:
        if isinstance(self.input_size, dict):  # table B's per-class sizes; 256 for a class of another dataset
            return self.input_size.get(class_name, 256)
        return self.input_size

    def model(self, dataset: str, class_name: str, run: int, input_size: Optional[int] = None) -> str:
        inp = input_size or self.input_for(class_name)
        return model_name(dataset, self.enc, self.dec, self.pool_layers, self.coupling_blocks, inp, run, class_name)

    def flags(self, class_name: str, run: int, input_size: Optional[int] = None) -> List[str]:
        """main.py flags of one run (without the data, device and output flags)."""
        common = ['-cb', str(self.coupling_blocks), '-inp', str(input_size or self.input_for(class_name)),
                  '-run', str(run), '--class-name', class_name, '--action-type', self.action]
        if self.network == 'differnet':
            return ['--model', 'differnet'] + common
        cflow = ['-enc', self.enc, '-dec', self.dec, '-pl', str(self.pool_layers)]
        return cflow + common + (['--pro'] if self.pro else [])


def load_published() -> dict:
    with open(PUBLISHED_FILE) as f:
        return json.load(f)


def _presets() -> Dict[str, Preset]:
    published = load_published()
    presets = {'wrn50-final': Preset('wrn50-final', 'Table B: WRN50, per-class input size, detection/localization/AUPRO',
                                     'wide_resnet50_2', 8, 3, dict(published['wrn50_final_input_size']))}
    encoders = {'wrn50': 'wide_resnet50_2', 'r18': 'resnet18', 'mnv3l': 'mobilenet_v3_large'}
    for name in published['tables']:  # table A columns: {enc}-cb{cb}-pl{pl}-{inp}[-uflow]
        m = re.fullmatch(r'(wrn50|r18|mnv3l)-cb(\d+)-pl(\d)-(\d+)(-uflow)?', name)
        if m:
            enc, cb, pl, inp, uflow = m.groups()
            presets[name] = Preset(name, f'Table A column: {name} (localization AUROC)', encoders[enc], int(cb),
                                   int(pl), int(inp), dec='freia-flow' if uflow else 'freia-cflow', pro=False)
    presets['differnet'] = Preset('differnet', 'DifferNet (WACV 2021) with its published settings: image AUROC '
                                  '(no published numbers transcribed here)', 'alexnet', 8, 3, 448,
                                  dec='differnet', pro=False, network='differnet')
    presets['mnv3-released'] = Preset('mnv3-released', 'norm-test of the released MobileNetV3-Large checkpoints '
                                      '(--checkpoints DIR; settings read from each file name)',
                                      'mobilenet_v3_large', 8, 3, 256, action='norm-test')
    return presets


PRESETS = _presets()


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CflowError(f'unknown --preset {name!r}: choose one of {", ".join(PRESETS)}')
    return PRESETS[name]


def published_numbers(preset: str) -> Dict[str, Dict[str, float]]:
    """{metric: {class or 'average': value in %}} of a preset's column(s) of the paper."""
    return load_published()['tables'].get(preset, {})


# The authors' names: {dataset}_{enc}_{dec}_pl{pl}_cb{cb}_inp{inp}_run{run}_{class}[_{date}][_final].pt
CHECKPOINT_NAME = re.compile(r'(?P<dataset>[a-z]+)_(?P<enc>[a-z0-9_]+?)_(?P<dec>freia-c?flow)_pl(?P<pl>\d+)'
                             r'_cb(?P<cb>\d+)_inp(?P<inp>\d+)_run(?P<run>\d+)_(?P<rest>.+)\.(pt|pth|safetensors)')


def settings_from_checkpoint_name(path: str, class_names) -> Optional[dict]:
    """The settings an authors'-style checkpoint name states, or None for another name (``class_names``:
    the dataset's, e.g. MVTec's, so that a class with '_' in its name is read whole)."""
    m = CHECKPOINT_NAME.fullmatch(os.path.basename(path))
    if not m:
        return None
    rest = m.group('rest')
    # the class may hold '_' (metal_nut) and a date may follow: take the longest known class name
    known = [c for c in class_names if rest == c or rest.startswith(c + '_')]
    class_name = max(known, key=len) if known else rest.split('_')[0]
    return {'dataset': m.group('dataset'), 'enc': m.group('enc'), 'dec': m.group('dec'), 'pl': int(m.group('pl')),
            'cb': int(m.group('cb')), 'inp': int(m.group('inp')), 'run': int(m.group('run')), 'class_name': class_name}
