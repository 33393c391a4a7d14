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
