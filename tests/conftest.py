import os, sys, subprocess, importlib.util
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('FTNB_NO_PROGRESS', '1')

REPO = Path(__file__).resolve().parents[1]
FTNB = Path(sys.executable).with_name('ftnb')

LOCAL = ('torch', 'transformers', 'tokenizers', 'peft', 'trl', 'datasets')   # what the `local` extra brings

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: minutes of CPU; run with -m slow or FTNB_SLOW=1')
    config.addinivalue_line('markers', 'needs(*modules): skipped where one is not installed (no modules: the local extra); '
                                       'tests using the `tiny` model fixture need the local extra too')

def _missing(item)->list:
    "The modules `item` needs that are not installed"
    mods = [m for mk in item.iter_markers('needs') for m in (mk.args or LOCAL)]
    if 'tiny' in getattr(item, 'fixturenames', ()): mods += LOCAL
    return sorted({m for m in mods if importlib.util.find_spec(m) is None})

def pytest_collection_modifyitems(config, items):
    # a base install (no extras) skips what needs an extra, saying which; CI's full run sets FTNB_ALL_EXTRAS=1,
    # where a missing module is a failure, never a silent skip
    if not os.environ.get('FTNB_ALL_EXTRAS'):
        for it in items:
            if miss := _missing(it): it.add_marker(pytest.mark.skip(reason=f'needs {", ".join(miss)} (an extra of finetune_nb)'))
    if os.environ.get('FTNB_SLOW') or 'slow' in (config.getoption('-m') or ''): return
    skip = pytest.mark.skip(reason='slow: run with -m slow or FTNB_SLOW=1')
    for it in items:
        if 'slow' in it.keywords: it.add_marker(skip)

@pytest.fixture
def ftnb():
    "Run the installed `ftnb` console script; returns the CompletedProcess"
    def run(*args, **kw):
        return subprocess.run([str(FTNB), *map(str, args)], capture_output=True, text=True, timeout=kw.pop('timeout', 300), **kw)
    return run
