"""README.md and docs/: links resolve, the README stays short (tools/misc/check_docs.py)."""
import importlib.util
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        'check_docs', osp.join(ROOT, 'tools', 'misc', 'check_docs.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


check_docs = _load_tool()


def test_repository_links_resolve():
    assert check_docs.link_problems(ROOT) == []


def test_repository_readme_is_short():
    assert check_docs.length_problems(ROOT) == []


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repo(tmp_path):
    _write(tmp_path / 'docs' / 'usage.md',
           '# Usage\n\n## On any model: `flora_mm.adapters`\n\n```\n# not a heading\n```\n'
           '## Table 2: InternViT-6B + UperNet\n\n## Data\n\n## Data\n\n![pic](demo/a.png)\n')
    _write(tmp_path / 'docs' / 'demo' / 'a.png', '')
    return tmp_path


def test_good_links_pass(repo):
    _write(repo / 'README.md',
           '[u](docs/usage.md) [a](docs/usage.md#on-any-model-flora_mmadapters) '
           '[b](docs/usage.md#table-2-internvit-6b--upernet) [c](docs/usage.md#data-1) '
           '[d](<docs/usage.md> "title") [web](https://example.com/x.md) [e](#self)\n\n# Self\n'
           '`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n')
    assert check_docs.link_problems(str(repo)) == []


def test_bad_links_are_named(repo):
    _write(repo / 'README.md', 'intro\n[x](docs/missing.md) and [y](docs/usage.md#nope)\n'
                               '[z](docs/usage.md#not-a-heading) [w](../outside.md)\n')
    _write(repo / 'docs' / 'more.md', '[back](../README.md#gone) ![p](demo/b.png)\n')
    problems = check_docs.link_problems(str(repo))
    assert problems == [
        'README.md:2: docs/missing.md: docs/missing.md does not exist',
        'README.md:2: docs/usage.md#nope: no heading #nope in docs/usage.md',
        'README.md:3: docs/usage.md#not-a-heading: no heading #not-a-heading in docs/usage.md',
        'README.md:3: ../outside.md: points outside the repository',
        'docs/more.md:1: ../README.md#gone: no heading #gone in README.md',
        'docs/more.md:1: demo/b.png: docs/demo/b.png does not exist',
    ]


def test_pending_pages_only_by_the_explicit_list(repo):
    _write(repo / 'README.md', '[p](docs/peft.md#loha)\n')
    assert check_docs.link_problems(str(repo), pending=('docs/peft.md',)) == []
    assert check_docs.link_problems(str(repo), pending=()) == [
        'README.md:1: docs/peft.md#loha: docs/peft.md does not exist']


def test_readme_length_limit(repo):
    _write(repo / 'README.md', 'line\n' * 249)
    assert check_docs.length_problems(str(repo)) == []
    _write(repo / 'README.md', 'line\n' * 250)
    assert check_docs.length_problems(str(repo)) == [
        'README.md: 250 lines, the limit is under 250']


def test_figures_and_missing_figures(repo):
    text = ('took 25m17s, 192 s, 13.5 GiB, 0.90x, 6.54 %, 12.84M params, 1,600 s; '
            'torch 2.14.1, 5 seeds, 8 GPUs, 2026-11-24, sm_80')
    assert check_docs.figures(text) == {'25m17s', '192 s', '13.5 GiB', '0.90x', '6.54', '12.84M',
                                        '1,600 s'}
    _write(repo / 'README.md', 'now 192s and 0.90x in 25m17s\n')
    _write(repo / 'docs' / 'more.md', '13.5 GiB, 6.54 %\n')
    assert check_docs.missing_figures(text, str(repo)) == ['12.84M', '1,600 s']
