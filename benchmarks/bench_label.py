#!/usr/bin/env python3
"""Benchmark LabelSession on a large chat data set: cold open, reopen (with ChatDataset's on-disk index cache, and
without it), per-action latency (fsync included), filters, text search, reopen with a long journal, and memory,
against a load-everything baseline in the same run.

    python benchmarks/bench_label.py [--n 1000000] [--data /tmp/ftnb_bench/chat_1000000.jsonl] [--baseline-n 100000]

The data comes from ../shared/bench/make_chat_dataset.py (generated into /tmp once if missing). Each phase
runs in its own process so peak RSS is that phase's own, with `FTNB_CACHE` pointed at a folder of this run (the
index cache starts empty: the first open is cold). Goals: open < 3 s, an action < 10 ms, memory that does not grow
with the file (issue 5); reopening an unchanged 1M-example file < 0.3 s (issue 10). Machines here are noisy:
compare the ratios printed in one run.
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = dict(os.environ)
MAKE = HERE.parent.parent/'shared'/'bench'/'make_chat_dataset.py'

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def rss_now_mb():
    "Current (not peak) resident memory"
    try:
        for l in open('/proc/self/status'):
            if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024
    except OSError: return float('nan')

def ensure_data(path, n):
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f'generating {n:,} examples into {path} …', flush=True)
        subprocess.run([sys.executable, str(MAKE), str(path), '--n', str(n)], check=True)
    return path

def ms(xs): return f'median {statistics.median(xs)*1e3:.2f} ms, p95 {sorted(xs)[int(len(xs)*.95)]*1e3:.2f} ms, max {max(xs)*1e3:.1f} ms'

# ---- phases, each in a fresh process ------------------------------------------------------------

def phase_session(data, journal, n_actions):
    import finetune_nb.label as L
    base = rss_mb()
    t = time.perf_counter(); s = L.LabelSession(data, journal=journal); t_open = time.perf_counter() - t
    offs, lines = s.ds.index
    out = {'n': len(s), 'open_s': t_open, 'rss_imports_mb': base, 'rss_open_mb': rss_mb(), 'rss_now_mb': rss_now_mb(),
           'index_mb': (offs.itemsize * len(offs) + lines.itemsize * len(lines)) / 1e6, 'status_mb': len(s.status) / 1e6}
    # per action, fsync included: a realistic mix, on examples spread over the file
    kinds = {'accept': [], 'reject': [], 'skip': [], 'tag': [], 'edit': [], 'note': [], 'undo': []}
    step = max(1, len(s) // (n_actions + 1))
    for k in range(n_actions):
        s.goto(k * step)
        kind = list(kinds)[k % len(kinds)]
        t = time.perf_counter()
        if kind == 'accept': s.accept()
        elif kind == 'reject': s.reject()
        elif kind == 'skip': s.skip()
        elif kind == 'tag': s.tag('ton')
        elif kind == 'edit': s.edit(f'Korrigierte Antwort {k}.')
        elif kind == 'note': s.note('prüfen')
        else: s.undo()
        kinds[kind].append(time.perf_counter() - t)
    out['actions'] = {k: ms(v) for k, v in kinds.items()}
    alls = [x for v in kinds.values() for x in v]
    out['action_all'] = ms(alls)
    out['action_median_ms'] = statistics.median(alls) * 1e3
    # navigation and filters
    s.goto(0)
    t = time.perf_counter(); [s.next() for _ in range(1000)]; out['next_all_us'] = (time.perf_counter() - t) / 1000 * 1e6
    s.filter('rejected'); s.goto(0)
    t = time.perf_counter(); k = 0
    while s.next() is not None and k < 200: k += 1
    out['next_rejected_ms'] = (time.perf_counter() - t) / max(k, 1) * 1e3
    s.filter('all'); s.goto(0)
    t = time.perf_counter(); s.filter(text='Korrigierte Antwort'); out['search_edited_ms'] = (time.perf_counter() - t) * 1e3
    s.filter('all'); s.goto(0)
    t = time.perf_counter(); s.filter(text='Rückerstattung'); hits = [s.i] + [s.next() for _ in range(99)]
    out['search_common_next100_ms'] = (time.perf_counter() - t) * 1e3
    s.filter('all'); s.goto(0)
    t = time.perf_counter(); r = s.filter(text='no such phrase anywhere'); out['search_none_fullscan_s'] = time.perf_counter() - t
    assert r is None
    s.filter('all'); s.goto(len(s) // 2)
    t = time.perf_counter(); s.filter(text='Rückerstattung'); s.prev(); s.prev(); out['search_prev2_ms'] = (time.perf_counter() - t) * 1e3
    s.filter('all')
    t = time.perf_counter(); [s.counts() for _ in range(20)]; out['counts_ms'] = (time.perf_counter() - t) / 20 * 1e3
    t = time.perf_counter(); [s.view(i) for i in range(0, len(s), max(1, len(s)//200))]; out['view_ms'] = (time.perf_counter() - t) / 200 * 1e3
    from finetune_nb.label import LabelPanel
    t = time.perf_counter(); p = LabelPanel(s); out['panel_build_ms'] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    for _ in range(50): p.btn_skip.click()
    out['panel_click_skip_ms'] = (time.perf_counter() - t) / 50 * 1e3
    s.close()
    out['rss_end_mb'], out['rss_end_now_mb'] = rss_mb(), rss_now_mb()
    return out

def phase_reopen_short(data, journal, cache='on'):
    "Reopen an unchanged file with the journal the session phase left; `cache='off'` scans the file as a first open does"
    import finetune_nb.data as D, finetune_nb.label as L
    if cache == 'off': D.INDEX_CACHE_MIN_BYTES = None
    t = time.perf_counter(); s = L.LabelSession(data, journal=journal); t_open = time.perf_counter() - t
    n_lines = sum(1 for _ in open(journal, 'rb'))
    s.close()
    # where the time goes, measured again in the same process (the page cache is warm now)
    t = time.perf_counter(); n = len(D.ChatDataset(data)); t_index = time.perf_counter() - t
    t = time.perf_counter(); L.source_fingerprint(data); t_fp = time.perf_counter() - t
    return {'reopen_s': t_open, 'journal_lines': n_lines, 'n': n, 'index_s': t_index, 'fingerprint_s': t_fp, 'rss_reopen_mb': rss_mb()}

def phase_reopen(data, journal, n_records):
    "Reopen with a journal of `n_records` actions (appended in the journal's own format)"
    import finetune_nb.label as L
    with open(journal, 'a') as f:
        for k in range(n_records):
            f.write(json.dumps({'op': 'tag' if k % 3 else 'accept', 'i': (k * 7919) % 1_000_000, 'seq': 10**6 + k,
                                'set': {'t': ['x']} if k % 3 else {'s': 1}, 't': 0}) + '\n')
    t = time.perf_counter(); s = L.LabelSession(data, journal=journal); t_open = time.perf_counter() - t
    out = {'reopen_s': t_open, 'journal_records': n_records, 'counts': s.counts(), 'rss_reopen_mb': rss_mb()}
    s.close()
    return out

def phase_baseline(data):
    "What notebook labelling widgets usually do: read every line into memory"
    base = rss_mb()
    t = time.perf_counter()
    with open(data, encoding='utf-8') as f: items = [json.loads(l) for l in f if l.strip()]
    return {'n': len(items), 'open_s': time.perf_counter() - t, 'rss_imports_mb': base, 'rss_open_mb': rss_mb()}

def phase_index_only(data):
    from finetune_nb.data import ChatDataset
    base = rss_mb()
    t = time.perf_counter(); ds = ChatDataset(data); n = len(ds)
    return {'n': n, 'index_s': time.perf_counter() - t, 'rss_imports_mb': base, 'rss_mb': rss_mb()}

def run_phase(*args):
    r = subprocess.run([sys.executable, __file__, '--phase', *map(str, args)], capture_output=True, text=True, env=ENV)
    if r.returncode: raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=1_000_000)
    ap.add_argument('--data'); ap.add_argument('--baseline-n', type=int, default=100_000)
    ap.add_argument('--actions', type=int, default=1400)
    ap.add_argument('--journal-records', type=int, default=100_000)
    ap.add_argument('--phase', nargs='+')
    a = ap.parse_args()
    if a.phase:
        name, *args = a.phase
        fn = {'session': phase_session, 'reopen': phase_reopen, 'reopen_short': phase_reopen_short, 'baseline': phase_baseline,
              'index': phase_index_only}[name]
        args = [int(x) if x.isdigit() else x for x in args]
        print(json.dumps(fn(*args), default=str)); return
    big = ensure_data(a.data or f'/tmp/ftnb_bench/chat_{a.n}.jsonl', a.n)
    small = ensure_data(f'/tmp/ftnb_bench/chat_{a.baseline_n}.jsonl', a.baseline_n)
    tmp = Path(tempfile.mkdtemp(prefix='bench_label_'))
    ENV['FTNB_CACHE'] = str(tmp/'cache')  # an empty index cache: the first open of each file is cold
    print(f'data: {big} ({big.stat().st_size/1e9:.2f} GB, {a.n:,} examples); small: {small} ({a.baseline_n:,})', flush=True)
    res = {}
    for tag, path in (('small', small), ('big', big)):
        res[tag, 'session'] = run_phase('session', path, tmp/f'{tag}.labels.jsonl', a.actions)  # cold: scans, writes the cache
        print(f'[{tag}] ' + json.dumps(res[tag, 'session'], ensure_ascii=False, indent=1), flush=True)
        res[tag, 'index'] = run_phase('index', path)                                           # the index alone, from the cache
        res[tag, 'reopen_nocache'] = run_phase('reopen_short', path, tmp/f'{tag}.labels.jsonl', 'off')
        res[tag, 'reopen_cached'] = min((run_phase('reopen_short', path, tmp/f'{tag}.labels.jsonl') for _ in range(3)),
                                        key=lambda r: r['reopen_s'])
        print(f'[{tag}] reopen: ' + json.dumps([res[tag, 'reopen_nocache'], res[tag, 'reopen_cached']]), flush=True)
    res['big', 'reopen'] = run_phase('reopen', big, tmp/'big.labels.jsonl', a.journal_records)
    res['small', 'baseline'] = run_phase('baseline', small)
    S, B = res['small', 'session'], res['big', 'session']
    print('\n==== summary ====')
    print(f"ChatDataset index from the on-disk cache: {a.baseline_n:,}: {res['small','index']['index_s']*1e3:.0f} ms; "
          f"{a.n:,}: {res['big','index']['index_s']*1e3:.0f} ms")
    print(f"open LabelSession, cold (scan + cache write + new journal): {a.baseline_n:,}: {S['open_s']:.2f} s; {a.n:,}: {B['open_s']:.2f} s   (goal < 3 s)")
    for tag, n in (('small', a.baseline_n), ('big', a.n)):
        rc, rn = res[tag, 'reopen_cached'], res[tag, 'reopen_nocache']
        print(f"reopen unchanged, {n:,} examples, {rc['journal_lines']:,}-line journal: {rc['reopen_s']*1e3:.0f} ms with the index cache "
              f"(measured alone: loading the cached index {rc['index_s']*1e3:.0f} ms, the fingerprint {rc['fingerprint_s']*1e3:.0f} ms), "
              f"{rn['reopen_s']*1e3:.0f} ms scanning → {rn['reopen_s']/rc['reopen_s']:.1f}× faster" + ('   (goal < 300 ms)' if tag == 'big' else ''))
    print(f"reopen, {a.journal_records:,}-record journal, {a.n:,} examples: {res['big','reopen']['reopen_s']:.2f} s")
    print(f"action incl. fsync ({a.n:,}): {B['action_all']}   (goal < 10 ms)")
    for k, v in B['actions'].items(): print(f'   {k:7s} {v}')
    print(f"next() no filter: {B['next_all_us']:.0f} µs; next() filter=rejected: {B['next_rejected_ms']:.2f} ms; counts(): {B['counts_ms']:.2f} ms; view(): {B['view_ms']:.2f} ms")
    print(f"search: first edited match {B['search_edited_ms']:.0f} ms; common word, 100 matches {B['search_common_next100_ms']:.0f} ms; "
          f"2× prev {B['search_prev2_ms']:.0f} ms; no match (full scan of {big.stat().st_size/1e9:.2f} GB) {B['search_none_fullscan_s']:.2f} s")
    print(f"panel: build {B['panel_build_ms']:.0f} ms, click skip + re-render {B['panel_click_skip_ms']:.1f} ms")
    grow = lambda r: r['rss_open_mb'] - r['rss_imports_mb']
    print(f"memory above imports after open: {a.baseline_n:,}: {grow(S):.0f} MB; {a.n:,}: {grow(B):.0f} MB "
          f"(peak RSS {S['rss_end_mb']:.0f} / {B['rss_end_mb']:.0f} MB, current after the run {S['rss_end_now_mb']:.0f} / {B['rss_end_now_mb']:.0f} MB; "
          f"file {small.stat().st_size/1e6:.0f} / {big.stat().st_size/1e6:.0f} MB)")
    print(f"   of which per-example arrays: offset index {S['index_mb']:.1f} / {B['index_mb']:.1f} MB, status bytes {S['status_mb']:.1f} / {B['status_mb']:.1f} MB")
    bl = res['small', 'baseline']
    print(f"baseline, json.loads every line of {a.baseline_n:,}: open {bl['open_s']:.2f} s, +{grow(bl):.0f} MB "
          f"→ LabelSession opens {bl['open_s']/S['open_s']:.1f}× faster with {grow(bl)/max(grow(S),1):.0f}× less memory")

if __name__ == '__main__':
    main()
