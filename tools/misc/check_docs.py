"""Check README.md and docs/: relative links resolve, the README stays short, no figure is lost.

    python tools/misc/check_docs.py                      # links (files and #anchors) + length
    python tools/misc/check_docs.py --figures-from REV   # figures of REV's README still findable

Exits 1 with one line per problem.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import subprocess
import sys

README_MAX_LINES = 250
# Pages being written on other branches; links to them may dangle until they are merged.
# The lead empties this list when they are.
PENDING_PAGES = ()

LINK = re.compile(r'!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^\s*(```|~~~)')
INLINE_CODE = re.compile(r'`[^`]*`')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')
FIGURE = re.compile(
    r'(?<![\w.])(?:\d+m\d\ds|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?'
    r'(?:\s?(?:GiB|GB|MB|ms|min|s|M|x)\b|%)?)(?![\w.]*\d)')


def markdown_files(root: str) -> list[str]:
    """README.md and every ``*.md`` under docs/, as paths relative to ``root``."""
    files = ['README.md']
    for folder, _, names in os.walk(osp.join(root, 'docs')):
        files += [osp.relpath(osp.join(folder, n), root) for n in sorted(names)
                  if n.endswith('.md')]
    return sorted(files)


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation gone, spaces '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'<[^>]+>', '', text).replace('`', '').lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown text, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f'{base}-{count}')
    return found


def link_problems(root: str, pending: tuple[str, ...] = PENDING_PAGES) -> list[str]:
    """Relative links of README.md and docs/ whose file or heading anchor does not exist."""
    problems = []
    texts: dict[str, str] = {}

    def read(path: str) -> str:
        if path not in texts:
            with open(osp.join(root, path), encoding='utf-8') as f:
                texts[path] = f.read()
        return texts[path]

    for page in markdown_files(root):
        for number, line in prose_lines(read(page)):
            for target in LINK.findall(INLINE_CODE.sub('', line)):
                if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):
                    continue  # http:, https:, mailto:
                path, _, anchor = target.partition('#')
                resolved = osp.normpath(osp.join(osp.dirname(page), path)) if path else page
                where = f'{page}:{number}: {target}'
                if resolved.startswith('..'):
                    problems.append(f'{where}: points outside the repository')
                elif not osp.exists(osp.join(root, resolved)):
                    if resolved not in pending:
                        problems.append(f'{where}: {resolved} does not exist')
                elif anchor and resolved.endswith('.md') and anchor not in anchors(read(resolved)):
                    problems.append(f'{where}: no heading #{anchor} in {resolved}')
    return problems


def length_problems(root: str, limit: int = README_MAX_LINES) -> list[str]:
    """The README's length when it reaches ``limit`` lines."""
    with open(osp.join(root, 'README.md'), encoding='utf-8') as f:
        lines = len(f.read().splitlines())
    return [f'README.md: {lines} lines, the limit is under {limit}'] if lines >= limit else []


def figures(text: str) -> set[str]:
    """Numbers with a decimal point or a unit (s, ms, min, GiB, GB, MB, M, x, %), and 25m17s."""
    return {' '.join(m.split()) for m in FIGURE.findall(text)
            if '.' in m or re.search(r'[a-zA-Z%]$', m)}


def missing_figures(old_text: str, root: str) -> list[str]:
    """Figures of ``old_text`` found nowhere in today's README.md and docs/ (space-insensitive)."""
    corpus = ''
    for page in markdown_files(root):
        with open(osp.join(root, page), encoding='utf-8') as f:
            corpus += f.read() + '\n'
    have = {f.replace(' ', '') for f in figures(corpus)}
    return sorted((f for f in figures(old_text) if f.replace(' ', '') not in have),
                  key=lambda f: (old_text.find(f), f))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', default=osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'),
                        help='repository root (default: this checkout)')
    parser.add_argument('--figures-from', metavar='REV',
                        help="also list the figures of REV's README.md missing today")
    args = parser.parse_args()
    root = osp.abspath(args.root)
    problems = link_problems(root) + length_problems(root)
    if args.figures_from:
        old = subprocess.run(['git', '-C', root, 'show', f'{args.figures_from}:README.md'],
                             check=True, capture_output=True, text=True).stdout
        problems += [f'figure of {args.figures_from}:README.md not found: {f}'
                     for f in missing_figures(old, root)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
