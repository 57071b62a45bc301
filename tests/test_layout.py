"""The project's layering, checked from the source: verbs at the top level do not import each other,
the import graph has no cycle (imports inside functions included), each shared piece exists once,
settings are derived once, and the README's Layout paragraph matches the tree."""
import ast
import os
import re

import pytest

from tests.conftest import ROOT

VERBS = {'train', 'train_differnet', 'calibrate', 'predict', 'export', 'submission', 'serve', 'reproduce'}  # one --action-type (or runner) each
PACKAGES = ('custom_datasets', 'custom_models', 'utils', 'service')
BENCHMARKS = 'benchmarks'  # the bench: a verb in a package of its own (one module per section)


def project_modules():
    """{module name: path} of every project module (tests excluded); a package's __init__ is the package."""
    found = {}
    for name in os.listdir(ROOT):
        if name.endswith('.py'):
            found[name[:-3]] = os.path.join(ROOT, name)
    for package in PACKAGES + (BENCHMARKS,):
        for name in os.listdir(os.path.join(ROOT, package)):
            if name.endswith('.py'):
                module = package if name == '__init__.py' else f'{package}.{name[:-3]}'
                found[module] = os.path.join(ROOT, package, name)
    return found


def import_graph():
    """{module: set of project modules it imports}: every import statement, at any depth (functions too).
    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                subs = {f'{node.module}.{a.name}' for a in node.names} & set(modules)
                names_only = [a for a in node.names if f'{node.module}.{a.name}' not in modules]
                edges |= subs | ({node.module} if names_only else set())
        graph[module] = edges - {module}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None
    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {'main', 'config', 'custom_models.scoring', 'custom_models.detector'} <= set(graph)
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    """The check above would catch a cycle: one through an import inside a function, too."""
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None
    source = 'def f():\n    from calibrate import x\n'
    tree = ast.parse(source)
    assert any(isinstance(n, ast.ImportFrom) and n.module == 'calibrate' for n in ast.walk(tree))


def test_no_verb_imports_another_and_packages_import_no_verb():
    graph = import_graph()
    top_level = {m for m in graph if '.' not in m and m not in PACKAGES + (BENCHMARKS,)}
    assert VERBS <= top_level
    shared = {'config', 'actions'}  # the flags; the settings as the packages' options and the calibration pass
    for verb in VERBS:
        allowed = shared | ({'main'} if verb == 'reproduce' else set())  # the runner replays command lines
        assert not (graph[verb] & top_level) - allowed, (verb, graph[verb] & top_level)
    assert not graph['actions'] & (top_level - {'config'}), graph['actions']
    assert graph['main'] & top_level == VERBS - {'reproduce'} | {'config', 'actions'}  # main only dispatches
    for module, edges in graph.items():
        if module == 'bench' or module.split('.')[0] == BENCHMARKS:  # library pieces, and whole commands via main
            assert not edges & VERBS, (module, edges & VERBS)
        if module.split('.')[0] in PACKAGES:
            assert not edges & top_level, (module, edges & top_level)
            assert not {e for e in edges if e.split('.')[0] == BENCHMARKS}, module


def test_utils_import_no_model_or_dataset_code():
    """utils/ holds the tools (metrics, maps, files); what builds encoders and decoders is in custom_models/."""
    graph = import_graph()
    for module, edges in graph.items():
        if module.split('.')[0] == 'utils':
            above = {e for e in edges if e.split('.')[0] in ('custom_models', 'custom_datasets')}
            assert not above, (module, above)


def test_one_module_per_encoder_family():
    from custom_models.architectures import ENCODER_ARCHS, encoder_family
    from custom_models.encoders import FAMILIES
    assert set(FAMILIES) == {encoder_family(a) for a in ENCODER_ARCHS}
    for kind, module in FAMILIES.items():
        assert module.__name__ == f'custom_models.{kind}_encoders'
        assert all(encoder_family(a) == kind for a in module.ARCHS)


def definitions(pattern):
    """Modules whose source matches ``pattern`` (a regular expression), tests excluded."""
    return sorted(m for m, path in project_modules().items() if re.search(pattern, open(path).read()))


def test_each_shared_piece_exists_once():
    # one map assembly: the bilinear upsampling of the per-layer probabilities
    assert definitions(r"mode='bilinear', align_corners=True") == ['utils.anomaly_map']
    # one published resize of an image into a model
    assert definitions(r'LANCZOS') == ['utils.images']
    # one scoring of images with a model (the test pass, calibration, predict and export use it)
    assert definitions(r'def score_batch\(|def score_loader\(|def calibration_of\(|def deployable\(') == \
        ['custom_models.scoring']
    assert definitions(r'def calibrate_images\(|def calibrate_on_folder\(') == ['actions']  # the calibration pass
    assert definitions(r'def load_model\(') == ['custom_models', 'custom_models.detector']
    # one overflow guard of exp(log p - shift), in that assembly (the model had its own copy)
    assert definitions(r'EXP_LIMIT = ') == ['utils.anomaly_map']


def test_settings_are_derived_once_and_no_action_writes_them(tmp_path):
    from config import parse_config
    c = parse_config(['--dataset', 'demo', '--no-cuda', '--output-dir', str(tmp_path)])
    with pytest.raises(AttributeError, match='derived once, in config.derive'):
        c.input_size = 64
    changed = c.replace(input_size=64)
    assert changed.input_size == 64 and c.input_size == 128  # a copy, itself frozen
    with pytest.raises(AttributeError):
        changed.batch_size = 1


def layout_paragraph():
    text = open(os.path.join(ROOT, 'README.md')).read()
    start = text.index('## Layout')
    end = text.find('\n## ', start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_layout_names_every_module_and_nothing_else():
    layout = layout_paragraph()
    named = set(re.findall(r'^- `([\w/]+\.py)`', layout, re.M))
    tree = {os.path.relpath(p, ROOT) for p in project_modules().values() if os.path.getsize(p)}  # empty __init__s aside
    assert named == tree, {'missing in README': sorted(tree - named), 'not in the tree': sorted(named - tree)}


def test_model_code_builds_no_data_pipeline():
    """custom_models/ imports nothing from custom_datasets/ (scoring takes batches; the verbs build loaders)."""
    graph = import_graph()
    for module, edges in graph.items():
        if module.startswith('custom_models'):
            assert not {e for e in edges if e.split('.')[0] == 'custom_datasets'}, (module, edges)


def test_package_functions_take_arguments_not_the_settings_namespace():
    """No function in custom_models/, custom_datasets/ or utils/ takes the command line's settings (``c``):
    each takes explicit arguments or a small options dataclass (``ScoreOptions``, ``TrainOptions``, ...)."""
    modules = project_modules()
    found = []
    for module, path in modules.items():
        if module.split('.')[0] not in PACKAGES:
            continue
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                if 'c' in names or 'settings_namespace' in names:
                    found.append(f'{module}.{node.name}')
    assert not found, found


def test_no_function_is_over_80_lines_and_no_fake_settings_namespace():
    """Functions stay readable (at most 80 lines, tests aside), and nothing outside the tests fakes the
    command line's settings with a ``SimpleNamespace``: the packages take options, the bench its own flags."""
    long, fakes = [], []
    for module, path in project_modules().items():
        source = open(path).read()
        if 'SimpleNamespace' in source:
            fakes.append(module)
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f'{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines')
    assert not long and not fakes, (long, fakes)
