"""Time to a first Data tab (`DataPanel` on the bundled sample) in a fresh Python, as a notebook user waits for it.

Run by hand:  python benchmarks/bench_panels.py [--runs 5]
Each measure is a fresh interpreter (the cost is in first imports), timed from before `import finetune_nb.explore`:
- before: the old way, kept here: plotly's widget imported plainly (its renderers import nbformat -> jsonschema, which
  compiles rfc3987_syntax's grammars), then the panel built with its five charts;
- charts now: `plotly_go`'s import (no grammar compiled), the panel built with its charts at once;
- deferred: the same, built with `defer_charts=True` (what the Workbench does): the time to the report and preview
  on screen, then to the charts drawn (`draw_charts()`).
The runs of each kind alternate, so the machine's load hits them alike; medians and ratios come from this one run.
"""
import argparse, os, statistics, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import sys, time
t0 = time.perf_counter()
mode = sys.argv[1]
if mode == 'before':   # the old import: nothing spares jsonschema's grammars
    import plotly.graph_objects as go; go.FigureWidget
from finetune_nb.explore import DataPanel
from finetune_nb.data import sample_path
p = DataPanel(sample_path(), defer_charts=mode == 'deferred')
t1 = time.perf_counter()
if mode == 'deferred': p.draw_charts()
t2 = time.perf_counter()
assert len(p.figs) == 5 and len(p.stats) == 37
print(t1 - t0, t2 - t0, 'rfc3987_syntax' in sys.modules)
'''

def child(mode:str)->tuple:
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'FTNB_NO_PROGRESS': '1'}
    out = subprocess.run([sys.executable, '-c', CHILD, mode], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if out.returncode: raise SystemExit(f'{mode} failed:\n{out.stderr[-3000:]}')
    first, done, rfc = out.stdout.split()
    return float(first), float(done), rfc == 'True'

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', type=int, default=5)
    args = ap.parse_args()
    modes = ('before', 'charts now', 'deferred')
    res = {m: [] for m in modes}
    child('deferred')   # warm the disk cache: the first interpreter reads every file from disk
    for _ in range(args.runs):
        for m in modes: res[m].append(child(m.replace('charts now', 'now')))
    med = lambda m, k: statistics.median(r[k] for r in res[m])
    load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
    print(f'== DataPanel on the 37-example sample, fresh interpreter, median of {args.runs} (load average {load}) ==')
    print(f'{"":34s} {"report+preview":>15s} {"all charts":>11s}   rfc3987_syntax imported')
    for m in modes:
        print(f'{m:34s} {med(m, 0):13.2f} s {med(m, 1):9.2f} s   {res[m][0][2]}')
    b = med('before', 1)
    print(f'\nbefore / charts now (all charts):           {b / med("charts now", 1):.2f}x')
    print(f'before / deferred (report and preview shown): {b / med("deferred", 0):.2f}x')
    print(f'before / deferred (all charts):              {b / med("deferred", 1):.2f}x')

if __name__ == '__main__': main()
