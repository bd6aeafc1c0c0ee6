#!/usr/bin/env python3
"""The longest Rust functions under the given dirs, lines from `fn` to its closing brace, tests excluded (TOP=N rows).

    scripts/fn-lengths.py api/src webhook/src proxy/src ctl/src cni/src certs/src
"""
import re, sys, pathlib
rows = []
for root in sys.argv[1:]:
    for p in pathlib.Path(root).rglob('*.rs'):
        if '/tests/' in str(p) or p.name == 'tests.rs': continue
        lines = p.read_text().splitlines()
        i = 0
        while i < len(lines):
            l = lines[i]
            if re.match(r'\s*#\[cfg\(test\)\]', l):
                break
            m = re.match(r'\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)', l)
            if m:
                depth = 0; started = False; j = i
                while j < len(lines):
                    s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                    s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                    s = s.split('//')[0]
                    for ch in s:
                        if ch == '{': depth += 1; started = True
                        elif ch == '}': depth -= 1
                    if started and depth <= 0: break
                    if not started and s.rstrip().endswith(';'): break
                    j += 1
                if started: rows.append((j - i + 1, f'{p}:{i+1}', m.group(5)))
                i = j + 1 if started else i + 1
            else:
                i += 1
rows.sort(reverse=True)
for n, where, name in rows[:int(__import__('os').environ.get('TOP', 15))]:
    print(f'{n:5} {name:30} {where}')
