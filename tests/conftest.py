import os, sys, subprocess
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('FTNB_NO_PROGRESS', '1')

REPO = Path(__file__).resolve().parents[1]
FTNB = Path(sys.executable).with_name('ftnb')

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: minutes of CPU; run with -m slow or FTNB_SLOW=1')

def pytest_collection_modifyitems(config, items):
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
