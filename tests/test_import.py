"`import finetune_nb` (and every light module) must not pull in torch, transformers, peft or trl."
import subprocess, sys, json

HEAVY = ['torch', 'transformers', 'peft', 'trl', 'accelerate', 'datasets']

def test_import_is_light():
    code = ("import sys, json, pkgutil, importlib, finetune_nb\n"
            "mods = [m.name for m in pkgutil.iter_modules(finetune_nb.__path__) if m.name not in ('train',)]\n"
            "for m in mods: importlib.import_module('finetune_nb.' + m)\n"
            f"print(json.dumps({{'mods': mods, 'heavy': [h for h in {HEAVY!r} if h in sys.modules]}}))\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert {'core', 'data', 'validate', 'cli'} <= set(res['mods'])
    assert res['heavy'] == [], f"importing finetune_nb modules imported {res['heavy']}"


# --- modules import one way --------------------------------------------------------------------------------------
import ast, re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'finetune_nb'

def _notebook(p:Path)->str:
    "The notebook a module is exported from (its number orders the modules)"
    m = re.search(r'File to edit: \.\./nbs/(\S+)\.ipynb', p.read_text(encoding='utf-8')[:600])
    return m.group(1) if m else ''

def import_graph()->dict:
    "module -> {module: [(line, private names imported)]} for every import of a package module, in functions too"
    mods = {p.stem for p in PKG.glob('*.py') if p.stem != '_modidx'}
    g = {}
    for p in PKG.glob('*.py'):
        if p.stem == '_modidx': continue
        deps = {}
        for n in ast.walk(ast.parse(p.read_text(encoding='utf-8'))):
            found = []
            if isinstance(n, ast.ImportFrom):
                m = n.module or ''
                if n.level == 1 and m: found.append((m.split('.')[0], [a.name for a in n.names]))
                elif n.level == 1 or m == 'finetune_nb': found += [(a.name, []) for a in n.names if a.name in mods]
                elif m.startswith('finetune_nb.'): found.append((m.split('.')[1], [a.name for a in n.names]))
            elif isinstance(n, ast.Import):
                found += [(a.name.split('.')[1], []) for a in n.names if a.name.startswith('finetune_nb.')]
            elif isinstance(n, ast.Call) and getattr(n.func, 'attr', getattr(n.func, 'id', '')) in ('import_module', '__import__'):
                s = n.args[0].value if n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str) else ''
                if s.startswith('finetune_nb.'): found.append((s.split('.')[1], []))
            for mod, names in found:
                if mod != p.stem and mod in mods:
                    deps.setdefault(mod, []).append((n.lineno, [x for x in names if x.startswith('_') and not x.startswith('__')]))
        g[p.stem] = deps
    return g

def test_no_import_circle():
    g = import_graph()
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for d in g.get(m, {}):
            if state.get(d) == 'open': raise AssertionError('import circle: ' + ' -> '.join(stack[stack.index(d):] + [d]))
            if d not in state: visit(d)
        state[m] = 'done'; stack.pop()
    for m in sorted(g):
        if m not in state: visit(m)

def test_modules_import_in_notebook_order():
    nb = {p.stem: _notebook(p) for p in PKG.glob('*.py') if p.stem not in ('_modidx', '__init__')}
    bad = [f'{m} ({nb[m]}) imports {d} ({nb[d]}) at line {uses[0][0]}' for m, deps in import_graph().items() if m in nb
           for d, uses in deps.items() if d in nb and nb[d] >= nb[m]]
    assert bad == [], 'modules import one way, lower notebook numbers first:\n' + '\n'.join(bad)

def test_no_module_imports_another_modules_private_names():
    bad = [f'{m} imports {names} from {d} (line {line})' for m, deps in import_graph().items()
           for d, uses in deps.items() for line, names in uses if names]
    assert bad == [], '\n'.join(bad)

def test_the_graph_sees_imports_inside_functions():
    g = import_graph()
    assert 'cost' in g['openai_ft'] and 'validate' in g['card']       # both are imported inside functions
