#!/usr/bin/env python3
"""Import graph of a crate's src (crate:: and super:: paths, test modules skipped), per file and
per top-level folder, with the cycles of each. Usage: scripts/module-cycles.py crates/keygate-server/src [--files] [--why]
The folders of keygate-server must show "folder cycles: none" (README, Layout)."""
import os, re, sys
src = sys.argv[1]
ID = r'[A-Za-z_][A-Za-z0-9_]*'
def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    m = re.search(r'#\[cfg\(test\)\]\s*mod tests\b', text)
    if m: text = text[:m.start()]
    return text
def paths_at(text, k, prefix):
    """parse a path tree starting at text[k]; return list of segment lists"""
    out = []
    def parse(k, pre):
        # returns end index
        segs = list(pre)
        while True:
            while k < len(text) and text[k] in ' \n\t': k += 1
            if text[k:k+1] == '{':
                k += 1
                while True:
                    while k < len(text) and text[k] in ' \n\t,': k += 1
                    if text[k:k+1] == '}': return k + 1
                    k = parse(k, segs)
            m = re.match(ID, text[k:])
            if not m:
                if segs: out.append(segs)
                return k
            segs = segs + [m.group(0)]; k += m.end()
            if text[k:k+2] == '::': k += 2; continue
            out.append(segs); return k
    parse(k, prefix)
    return out
files = {}
for root, _, fs in os.walk(src):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(root, f); files[os.path.relpath(p, src)] = strip(open(p).read())
def modfile(segs):
    """crate path segments -> file"""
    cur = ''
    best = None
    for i, s in enumerate(segs):
        cand_dir = os.path.join(cur, s)
        if os.path.isfile(os.path.join(src, cand_dir + '.rs')): best = cand_dir + '.rs'; cur = cand_dir
        elif os.path.isfile(os.path.join(src, cand_dir, 'mod.rs')): best = os.path.join(cand_dir, 'mod.rs'); cur = cand_dir
        else: break
    return best
graph = {}
for rel, text in files.items():
    deps = set()
    d = os.path.dirname(rel)
    modpath = [] if rel in ('lib.rs',) else (d.split('/') if d else []) + ([] if os.path.basename(rel) == 'mod.rs' else [os.path.basename(rel)[:-3]])
    for m in re.finditer(r'\b(crate|super|self)::', text):
        kind = m.group(1)
        if kind == 'crate': base = []
        elif kind == 'super': base = modpath[:-1]
        else: base = modpath
        if kind == 'self' and text[m.start()-2:m.start()] == '::': continue
        for segs in paths_at(text, m.end(), base):
            f = modfile(segs)
            if f and f != rel: deps.add(f)
    # child mods are not deps
    graph[rel] = deps
def folder(rel):
    return rel.split('/')[0] if '/' in rel else '(root)'
if '--files' in sys.argv:
    for rel in sorted(graph): print(rel, '->', ' '.join(sorted(graph[rel])))
def scc(g):
    idx = {}; low = {}; st = []; on = set(); out = []; c = [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in sorted(g):
        if v not in idx: sc(v)
    return [sorted(s) for s in out if len(s) > 1]
fg = {}
why = {}
for rel, ds in graph.items():
    for t in ds:
        a, b = folder(rel), folder(t)
        if a != b:
            fg.setdefault(a, set()).add(b); why.setdefault((a, b), []).append(f"{rel} -> {t}")
    fg.setdefault(folder(rel), set())
print("file-level cycles:", scc(graph) or "none")
print("folder graph:")
for a in sorted(fg): print(f"  {a} -> {', '.join(sorted(fg[a])) or '-'}")
cyc = scc(fg)
print("folder cycles:", cyc or "none")
if '--why' in sys.argv:
    for s in cyc:
        for a in s:
            for b in s:
                if (a, b) in why: print(f"  {a} -> {b}:", '; '.join(why[(a, b)]))
