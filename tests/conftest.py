import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
REFERENCE = os.path.join(SHARED, 'reference')


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    """The demo class, generated once per test session (seed 0, as the README's demo)."""
    from custom_datasets.synthetic import make_demo_class
    root = str(tmp_path_factory.mktemp('demo'))
    make_demo_class(root)
    return root
