"""Package set-up for DToP (Dynamic Token Pruning for plain-ViT semantic segmentation)."""
from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    with open('dtop/version.py', encoding='utf-8') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(path: str = 'requirements.txt') -> list:
    """Requirement lines of ``path`` (comments and blank lines dropped).

    ``requirements.txt`` holds the version *ranges* DToP needs, so installing it into
    an existing environment keeps the torch/mmcv already there; the exact versions of
    ``tools/setup_env.sh`` are in ``constraints.txt`` (not read here).
    """
    reqs = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                reqs.append(line)
    return reqs


setup(
    name='dtop',
    version=read_version(),
    description='Dynamic Token Pruning in Plain Vision Transformers for Semantic '
    'Segmentation (ICCV 2023), on mmsegmentation 1.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=('dtop', 'dtop.*')),
    python_requires='>=3.9',
    install_requires=read_requirements('requirements.txt'),
    extras_require=dict(
        optional=read_requirements('requirements-optional.txt'),
        tests=read_requirements('requirements-dev.txt')),
    zip_safe=False,
)
