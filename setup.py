from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    with open('flora_mm/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(path: str) -> list:
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


setup(
    name='flora_mm',
    version=read_version(),
    description='FLoRA (low-rank Tucker core-space adaptation) for OpenMMLab dense vision',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.10',
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={'tests': read_requirements('requirements/tests.txt'),
                    'tools': read_requirements('requirements/tools.txt')},
    license='Apache License 2.0',
)
