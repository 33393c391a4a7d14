#!/usr/bin/env python3
"""Validation + exact token counting: finetune_nb vs the method of OpenAI's data-prep notebook.

    python benchmarks/bench_validate.py [--n 100000] [--big 400000] [--dir /tmp/ftnb_bench] [--model gpt-4o-mini] [--repeat 1]

Data: ../shared/bench/make_chat_dataset.py (deterministic), written to --dir (never the repo).
Each measurement runs in its own process; for each we report wall time, the peak RSS of its largest
process (getrusage of the children), and the peak of the RSS and of the PSS (shared pages split between
processes) summed over its process tree, sampled every 20 ms. Goals (issue 3 and the foundation issue):
  - validate + count at least 3x faster than the notebook's method, with at most a third of its peak memory;
  - the validator's peak memory flat from --n to --big examples.
These machines are noisy: compare the ratios of one run, not absolute times.
"""
import argparse, json, os, subprocess, sys, time, resource
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

# ---------------------------------------------------------------------------------------------------
# the measured jobs (run in a child process: `bench_validate.py --job NAME PATH MODEL`)

def job_baseline(path, model):
    "OpenAI's data-prep notebook: load every line, json.loads, format checks, encode every message value"
    from collections import defaultdict
    from finetune_nb.tokens import load_encoding, encoding_name
    encoding = load_encoding(encoding_name(model))   # same encoding as ours (the notebook hard-codes cl100k_base)
    with open(path, 'r', encoding='utf-8') as f:
        dataset = [json.loads(line) for line in f]
    format_errors = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict): format_errors['data_type'] += 1; continue
        messages = ex.get('messages', None)
        if not messages: format_errors['missing_messages_list'] += 1; continue
        for message in messages:
            if 'role' not in message or 'content' not in message: format_errors['message_missing_key'] += 1
            if any(k not in ('role', 'content', 'name', 'function_call', 'weight') for k in message): format_errors['message_unrecognized_key'] += 1
            if message.get('role', None) not in ('system', 'user', 'assistant', 'function'): format_errors['unrecognized_role'] += 1
            content, function_call = message.get('content', None), message.get('function_call', None)
            if (not content and not function_call) or not isinstance(content, str): format_errors['missing_content'] += 1
        if not any(message.get('role', None) == 'assistant' for message in messages): format_errors['example_missing_assistant_message'] += 1
    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += len(encoding.encode(value))
                if key == 'name': num_tokens += tokens_per_name
        return num_tokens + 3
    def num_assistant_tokens_from_messages(messages):
        return sum(len(encoding.encode(m['content'])) for m in messages if m['role'] == 'assistant')
    n_missing_system = n_missing_user = 0
    n_messages, convo_lens, assistant_message_lens = [], [], []
    for ex in dataset:
        messages = ex['messages']
        if not any(m['role'] == 'system' for m in messages): n_missing_system += 1
        if not any(m['role'] == 'user' for m in messages): n_missing_user += 1
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages))
    limit = 65536
    n_billing = sum(min(limit, l) for l in convo_lens)
    return {'n_examples': len(dataset), 'n_tokens': sum(convo_lens), 'n_trained': sum(assistant_message_lens),
            'n_billing': n_billing, 'errors': sum(format_errors.values()), 'missing_system': n_missing_system}

def job_ours(path, model):
    "finetune_nb: validate() with the token hook (counting in worker processes beside the validation)"
    from finetune_nb.validate import validate
    rep = validate(path, model=model, progress_bar=False)
    t = rep.stats['tokens']
    return {'n_examples': t['n_examples'], 'n_tokens': t['n_tokens'], 'n_trained': t['n_trained'], 'n_billing': t['n_billing'],
            'errors': rep.n_errors, 'missing_system': rep.counts.get('missing_system', 0), 'exact': t['exact']}

def job_validate(path, model):
    "finetune_nb: validate() alone, no tokens"
    from finetune_nb.validate import validate
    rep = validate(path, progress_bar=False)
    return {'n_examples': rep.n_examples, 'errors': rep.n_errors}

def job_count(path, model):
    "finetune_nb: count_tokens() alone"
    from finetune_nb.tokens import count_tokens
    st = count_tokens(path, model, show_progress=False)
    return {'n_examples': st.n_examples, 'n_tokens': st.n_tokens, 'n_trained': st.n_trained}

JOBS = {'baseline': job_baseline, 'ours': job_ours, 'validate': job_validate, 'count': job_count}

def child(name, path, model):
    os.environ['FTNB_NO_PROGRESS'] = '1'
    t0 = time.perf_counter()
    # imports are part of the cost for both sides; loading the encoding too
    out = JOBS[name](path, model)
    out['seconds'] = time.perf_counter() - t0
    print('RESULT ' + json.dumps(out), flush=True)

# ---------------------------------------------------------------------------------------------------
# the runner

def _tree_mem(pid):
    "(sum RSS, sum PSS) in MiB over `pid` and its descendants"
    try:
        import psutil
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except Exception: return 0, 0
    rss = pss = 0
    for q in procs:
        try:
            rss += q.memory_info().rss
            try: pss += q.memory_full_info().pss
            except Exception: pss += q.memory_info().rss
        except Exception: pass
    return rss / 2**20, pss / 2**20

REPEAT = 1

def measure(name, path, model):
    "Run job `name` REPEAT times, each in a fresh process: the fastest run's figures, the highest peak memory"
    runs = [_measure(name, path, model) for _ in range(REPEAT)]
    best = min(runs, key=lambda r: r['seconds'])
    for k in ('max_process_rss_mb', 'tree_rss_mb', 'tree_pss_mb'): best[k] = max(r[k] for r in runs)
    return best

def _measure(name, path, model):
    "Run job `name` in a fresh process; its result with wall time and peak memory"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HERE), '--job', name, str(path), model], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    peak_rss = peak_pss = 0.0
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)   # this child's own rusage: its largest process's peak RSS
        if pid: break
        r, p = _tree_mem(proc.pid)
        peak_rss, peak_pss = max(peak_rss, r), max(peak_pss, p)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read()
    if proc.returncode: raise SystemExit(f'{name} failed ({proc.returncode}):\n{out}')
    res = json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
    res.update(wall=wall, cpu=ru.ru_utime + ru.ru_stime, max_process_rss_mb=ru.ru_maxrss / 1024, tree_rss_mb=peak_rss, tree_pss_mb=peak_pss)
    return res

def dataset(d, n):
    p = Path(d)/f'chat_{n}.jsonl'
    if not p.exists():
        gen = REPO.parent/'shared'/'bench'/'make_chat_dataset.py'
        if not gen.exists(): gen = Path('/work/shared/bench/make_chat_dataset.py')
        subprocess.run([sys.executable, str(gen), str(p), '--n', str(n)], check=True)
    return p

def row(label, r):
    return (f'{label:34} {r["seconds"]:7.2f} s  (wall {r["wall"]:6.2f}, CPU {r["cpu"]:6.2f})  max-process RSS {r["max_process_rss_mb"]:7.0f} MB  '
            f'tree RSS {r["tree_rss_mb"]:7.0f} MB  tree PSS {r["tree_pss_mb"]:7.0f} MB')

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--job', nargs=3, metavar=('NAME', 'PATH', 'MODEL'), help=argparse.SUPPRESS)
    ap.add_argument('--n', type=int, default=100_000)
    ap.add_argument('--big', type=int, default=400_000, help='size for the flat-memory check (0: skip)')
    ap.add_argument('--dir', default='/tmp/ftnb_bench')
    ap.add_argument('--model', default='gpt-4o-mini')
    ap.add_argument('--repeat', type=int, default=1, help='runs per measurement; the fastest counts (noisy machines)')
    a = ap.parse_args()
    if a.job: return child(*a.job)
    global REPEAT
    REPEAT = max(1, a.repeat)
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    small = dataset(a.dir, a.n)
    print(f'data: {small} ({small.stat().st_size/2**20:,.0f} MiB, {a.n:,} examples); model {a.model}; {os.cpu_count()} CPUs; '
          f'load average {os.getloadavg()[0]:.1f}')
    base = measure('baseline', small, a.model); print(row('notebook method (baseline)', base))
    ours = measure('ours', small, a.model); print(row('finetune_nb validate(model=...)', ours))
    for k in ('n_examples', 'n_tokens', 'n_trained', 'n_billing'):
        if base[k] != ours[k]: print(f'  !! {k} differs: baseline {base[k]:,} vs ours {ours[k]:,}')
    print(f'  same counts: {ours["n_examples"]:,} examples, {ours["n_tokens"]:,} tokens, {ours["n_trained"]:,} trained')
    cnt = measure('count', small, a.model); print(row('  of which: count_tokens() alone', cnt))
    val = measure('validate', small, a.model); print(row('  of which: validate() alone', val))
    print(f'  speed-up {base["seconds"]/ours["seconds"]:.2f}x (goal >= 3x); peak memory, ours / baseline: '
          f'max-process RSS {ours["max_process_rss_mb"]/base["max_process_rss_mb"]:.2f}, tree RSS {ours["tree_rss_mb"]/base["tree_rss_mb"]:.2f}, '
          f'tree PSS {ours["tree_pss_mb"]/base["tree_pss_mb"]:.2f} (goal <= 0.33); CPU seconds {ours["cpu"]/base["cpu"]:.2f}')
    print(f'  load average now {os.getloadavg()[0]:.1f} (other work on the machine stretches wall times)')
    if a.big:
        big = dataset(a.dir, a.big)
        print(f'\nflat memory: {a.n:,} vs {a.big:,} examples ({big.stat().st_size/2**20:,.0f} MiB)')
        v1 = val; print(row(f'validate, {a.n:,}', v1))
        v4 = measure('validate', big, a.model); print(row(f'validate, {a.big:,}', v4))
        print(f'  validator: time x{v4["seconds"]/v1["seconds"]:.2f} for x{a.big/a.n:.0f} the data; peak RSS x{v4["max_process_rss_mb"]/v1["max_process_rss_mb"]:.2f}')
        print(row(f'count_tokens, {a.n:,}', cnt))
        c4 = measure('count', big, a.model); print(row(f'count_tokens, {a.big:,}', c4))
        print(f'  counting: time x{c4["seconds"]/cnt["seconds"]:.2f}; peak RSS (max process) x{c4["max_process_rss_mb"]/cnt["max_process_rss_mb"]:.2f}, '
              f'tree PSS x{c4["tree_pss_mb"]/cnt["tree_pss_mb"]:.2f}')
        o4 = measure('ours', big, a.model); print(row(f'validate(model=...), {a.big:,}', o4))
        print(f'  validate + count: time x{o4["seconds"]/ours["seconds"]:.2f}; peak RSS (max process) x{o4["max_process_rss_mb"]/ours["max_process_rss_mb"]:.2f}, '
              f'tree PSS x{o4["tree_pss_mb"]/ours["tree_pss_mb"]:.2f}')

if __name__ == '__main__':
    main()
