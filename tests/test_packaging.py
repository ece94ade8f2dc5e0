"""Installable into an existing OpenMMLab environment: the package declares version
ranges (not pins) for torch and mmcv, does not declare torchvision, and the exact
tested versions live in constraints.txt, which tools/setup_env.sh installs."""
import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from dtop.utils.collect_env import REQUIRED_RANGES

ROOT = Path(__file__).resolve().parents[1]
PINNED = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmsegmentation')


def _requirements(path: Path):
    lines = (line.split('#', 1)[0].strip() for line in path.read_text().splitlines())
    return {r.name.lower(): r for r in map(Requirement, filter(None, lines))}


def _is_pin(req: Requirement) -> bool:
    return any(s.operator in ('==', '===') for s in req.specifier)


def test_requirements_declare_ranges_not_pins():
    reqs = _requirements(ROOT / 'requirements.txt')
    for name in ('torch', 'mmcv', 'mmengine', 'mmsegmentation'):
        assert name in reqs, name
        assert not _is_pin(reqs[name]) and reqs[name].specifier, (name, reqs[name])
    assert 'torchvision' not in reqs  # would pull a torchvision pinning another torch
    assert not [r for r in reqs.values() if _is_pin(r)]
    # mmcv exactly as mmseg 1.2.x asserts it
    assert reqs['mmcv'].specifier.contains('2.0.0rc4', prereleases=True)
    assert reqs['mmcv'].specifier.contains('2.1.0')
    assert not reqs['mmcv'].specifier.contains('2.2.0')
    assert reqs['torch'].specifier.contains('2.14.0') and reqs['torch'].specifier.contains('2.14.1')


def test_installed_package_metadata_declares_the_ranges():
    """The metadata pip sees (the installed dtop) = requirements.txt."""
    declared = [Requirement(r) for r in importlib.metadata.requires('dtop') or []]
    runtime = {r.name.lower(): r for r in declared if not r.marker}
    assert runtime == _requirements(ROOT / 'requirements.txt')
    for name in ('torch', 'mmcv'):
        assert runtime[name].specifier and not _is_pin(runtime[name])
    assert 'torchvision' not in runtime


def test_collect_env_checks_the_declared_ranges():
    reqs = _requirements(ROOT / 'requirements.txt')
    for module, (low, high) in REQUIRED_RANGES.items():
        spec = reqs['mmsegmentation' if module == 'mmseg' else module].specifier
        assert [Version(s.version) for s in spec if s.operator == '>='] == [Version(low)]
        assert [Version(s.version) for s in spec if s.operator == '<'] == \
            ([Version(high)] if high else []), module


def test_constraints_pin_the_tested_stack_within_the_ranges():
    pins = _requirements(ROOT / 'constraints.txt')
    reqs = _requirements(ROOT / 'requirements.txt')
    for name in PINNED:
        assert _is_pin(pins[name]), name
        version = next(iter(pins[name].specifier)).version
        if name in reqs:
            assert reqs[name].specifier.contains(version, prereleases=True), (name, version)


def test_setup_env_installs_the_exact_pins():
    script = (ROOT / 'tools' / 'setup_env.sh').read_text()
    assert '"$(pin_of torch)" "$(pin_of torchvision)"' in script
    assert re.search(r'MMCV_VERSION="\$\(sed -n .s/\^mmcv==//p. "\$ROOT/constraints.txt"\)"',
                     script)
    assert '-c "$ROOT/constraints.txt"' in script
    assert '"$ROOT/constraints.txt"' in script.split('stamp_of()', 1)[1].split('}', 1)[0]


def test_the_venv_holds_the_pinned_versions():
    """What tools/setup_env.sh installed is what constraints.txt pins."""
    pins = _requirements(ROOT / 'constraints.txt')
    for name in PINNED:
        want = next(iter(pins[name].specifier)).version
        try:
            got = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f'{name} is not installed')
        assert got.split('+')[0] == want, (name, got, want)


def _tracked_text_files():
    import subprocess
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    for name in filter(None, out.split('\0')):
        path = ROOT / name
        if path.suffix in ('.py', '.sh', '.md', '.txt', '.yaml', '.yml', '.cfg', '.ini') \
                and path.is_file():
            yield name, path.read_text(errors='replace')


def test_repo_is_self_contained():
    """Nothing in the repository points at files a user who clones it does not have
    (the team's specification, notes or tracker)."""
    outside = re.compile('|'.join([r'spec\s' + '\u00a7', r'\.\./' + 'shared',
                                   'paper' + '-results', 'development ' + 'workspace',
                                   r'\bissue[ -]?#?\d+']), re.IGNORECASE)
    hits = [f'{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}'
            for name, text in _tracked_text_files() for m in outside.finditer(text)]
    assert not hits, hits[:10]


def test_no_python_file_in_the_package_exceeds_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in (ROOT / 'dtop').rglob('*.py')}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
