#!/usr/bin/env python3
"""Validation + exact token counting in one pass: finetune_nb vs the method of OpenAI's data-prep notebook.

    python benchmarks/bench_validate.py [--n 100000] [--big 400000] [--repeat 3] [--dir /tmp/ftnb_bench] [--model gpt-4o-mini]

Data: ../shared/bench/make_chat_dataset.py (deterministic), written to --dir (never the repo).
Each measurement runs in a fresh process. For each we report the time the job took inside its process
(imports and loading the encoding included), the CPU seconds of the process and its workers, and memory:
the peak of the RSS summed over the whole process tree (workers included; what the goal is stated in),
sampled with psutil every 10 ms, next to the peak of the PSS sum (every 100 ms) (shared pages split between the processes
that share them: what the machine really spends) and the largest single process's peak RSS.

Goals (issue "One Backend/Job contract ..."): validate + count at least 3.5x faster than the notebook's
method, with at most a third of its peak memory (summed RSS), and that memory flat from --n to --big.
Baseline and ours run alternately, --repeat times; the ratios are taken pair by pair (the two runs of a
pair are seconds apart) and the median pair is reported. These 2-core machines are shared and noisy:
compare ratios, not absolute times.
"""
import argparse, json, os, subprocess, sys, time, threading, statistics
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
    "finetune_nb: validate(model=...): one pass that checks every rule, hashes the file and counts the valid examples"
    from finetune_nb.validate import validate
    rep = validate(path, model=model, progress_bar=False)
    t = rep.tokens
    return {'n_examples': t.n_examples, 'n_tokens': t.n_tokens, 'n_trained': t.n_trained, 'n_billing': t.n_billing,
            'errors': rep.n_errors, 'missing_system': rep.counts.get('missing_system', 0), 'exact': t.exact, 'sha256': rep.sha256}

def job_serial(path, model):
    "finetune_nb: the same pass in one process (workers=1)"
    from finetune_nb.validate import validate
    rep = validate(path, model=model, progress_bar=False, workers=1)
    return {'n_examples': rep.tokens.n_examples, 'n_tokens': rep.tokens.n_tokens}

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

JOBS = {'baseline': job_baseline, 'ours': job_ours, 'serial': job_serial, 'validate': job_validate, 'count': job_count}

def child(name, path, model):
    os.environ['FTNB_NO_PROGRESS'] = '1'
    t0 = time.perf_counter()
    # imports are part of the cost for both sides; loading the encoding too
    out = JOBS[name](path, model)
    out['seconds'] = time.perf_counter() - t0
    print('RESULT ' + json.dumps(out), flush=True)

# ---------------------------------------------------------------------------------------------------
# the runner

def _tree(proc)->list:
    import psutil
    try: return [proc] + proc.children(recursive=True)
    except psutil.Error: return []

def _sum(procs, pss:bool=False)->float:
    "Summed RSS (or PSS) in MiB of `procs`; reading PSS walks every mapping, so it is sampled less often"
    import psutil
    total = 0
    for q in procs:
        try: total += getattr(q.memory_full_info(), 'pss') if pss else q.memory_info().rss
        except (psutil.Error, AttributeError): pass
    return total / 2**20

def measure(name, path, model):
    "Run job `name` in a fresh process; its result with CPU and peak memory"
    import psutil
    proc = subprocess.Popen([sys.executable, str(HERE), '--job', name, str(path), model], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    ps, peak, done = psutil.Process(proc.pid), [0.0, 0.0], threading.Event()
    def sample():
        i, procs = 0, [ps]
        while not done.is_set():
            if i % 5 == 0: procs = _tree(ps) or procs          # new workers: every 50 ms
            peak[0] = max(peak[0], _sum(procs))                 # RSS: every 10 ms (cheap: /proc/PID/statm)
            if i % 10 == 0: peak[1] = max(peak[1], _sum(procs, pss=True))
            i += 1; time.sleep(0.01)
    th = threading.Thread(target=sample, daemon=True); th.start()
    _, status, ru = os.wait4(proc.pid, 0)   # the child's rusage includes its waited-for workers
    done.set(); th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read()
    if proc.returncode: raise SystemExit(f'{name} failed ({proc.returncode}):\n{out}')
    res = json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
    res.update(cpu=ru.ru_utime + ru.ru_stime, max_process_rss_mb=ru.ru_maxrss / 1024, tree_rss_mb=peak[0], tree_pss_mb=peak[1])
    return res

def dataset(d, n):
    p = Path(d)/f'chat_{n}.jsonl'
    if not p.exists():
        gen = REPO.parent/'shared'/'bench'/'make_chat_dataset.py'
        if not gen.exists(): gen = Path('/work/shared/bench/make_chat_dataset.py')
        subprocess.run([sys.executable, str(gen), str(p), '--n', str(n)], check=True)
    return p

HEAD = f'| {"run":34} | {"time s":>6} | {"CPU s":>6} | {"tree RSS MB":>11} | {"tree PSS MB":>11} | {"max proc MB":>11} |'

def row(label, r):
    return (f'| {label:34} | {r["seconds"]:6.2f} | {r["cpu"]:6.2f} | {r["tree_rss_mb"]:11.0f} | {r["tree_pss_mb"]:11.0f} | '
            f'{r["max_process_rss_mb"]:11.0f} |')

def table(rows):
    print(HEAD); print('|' + '|'.join('-' * (len(c)) for c in HEAD.split('|')[1:-1]) + '|')
    for label, r in rows: print(row(label, r))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--job', nargs=3, metavar=('NAME', 'PATH', 'MODEL'), help=argparse.SUPPRESS)
    ap.add_argument('--n', type=int, default=100_000)
    ap.add_argument('--big', type=int, default=400_000, help='size for the flat-memory check (0: skip)')
    ap.add_argument('--dir', default='/tmp/ftnb_bench')
    ap.add_argument('--model', default='gpt-4o-mini')
    ap.add_argument('--repeat', type=int, default=3, help='baseline/ours pairs; the median pair counts (noisy machines)')
    ap.add_argument('--parts', action='store_true', help='also time validate() alone, count_tokens() alone and the pass in one process')
    a = ap.parse_args()
    if a.job: return child(*a.job)
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    small = dataset(a.dir, a.n)
    print(f'data: {small} ({small.stat().st_size/2**20:,.0f} MiB, {a.n:,} examples); model {a.model}; {os.cpu_count()} CPUs; '
          f'load average before {os.getloadavg()[0]:.1f}\n')
    pairs = []
    for i in range(max(1, a.repeat)):
        b = measure('baseline', small, a.model); o = measure('ours', small, a.model)
        for k in ('n_examples', 'n_tokens', 'n_trained', 'n_billing', 'missing_system'):
            if b[k] != o[k]: print(f'  !! {k} differs: baseline {b[k]:,} vs ours {o[k]:,}')
        pairs.append((b, o))
    rows = []
    for i, (b, o) in enumerate(pairs, 1): rows += [(f'{i}: notebook method (baseline)', b), (f'{i}: validate(model=...)', o)]
    table(rows)
    speed = [b['seconds'] / o['seconds'] for b, o in pairs]
    mem = [o['tree_rss_mb'] / b['tree_rss_mb'] for b, o in pairs]
    pss = [o['tree_pss_mb'] / b['tree_pss_mb'] for b, o in pairs]
    print(f'\nsame counts: {pairs[0][1]["n_examples"]:,} examples, {pairs[0][1]["n_tokens"]:,} tokens, {pairs[0][1]["n_trained"]:,} trained')
    print(f'speed-up, pair by pair: {", ".join(f"{s:.2f}x" for s in speed)}; median {statistics.median(speed):.2f}x (goal >= 3.5x)')
    print(f'peak memory ours/baseline, summed RSS: {", ".join(f"{m:.2f}" for m in mem)}; median {statistics.median(mem):.2f} (goal <= 0.33); '
          f'summed PSS: median {statistics.median(pss):.2f}')
    print(f'CPU seconds ours/baseline: median {statistics.median(o["cpu"] / b["cpu"] for b, o in pairs):.2f}; '
          f'load average now {os.getloadavg()[0]:.1f} (other work on the machine stretches wall times)')
    if a.parts:
        print()
        table([('validate() alone', measure('validate', small, a.model)), ('count_tokens() alone', measure('count', small, a.model)),
               ('validate(model=...), workers=1', measure('serial', small, a.model))])
    if a.big:
        big = dataset(a.dir, a.big)
        print(f'\nflat memory: {a.n:,} vs {a.big:,} examples ({big.stat().st_size/2**20:,.0f} MiB)')
        o4 = measure('ours', big, a.model)
        o1 = min((o for _, o in pairs), key=lambda o: o['seconds'])
        table([(f'validate(model=...), {a.n:,}', o1), (f'validate(model=...), {a.big:,}', o4)])
        print(f'  x{a.big/a.n:.0f} the data: time x{o4["seconds"]/o1["seconds"]:.2f}; summed RSS x{o4["tree_rss_mb"]/o1["tree_rss_mb"]:.2f}, '
              f'summed PSS x{o4["tree_pss_mb"]/o1["tree_pss_mb"]:.2f}')

if __name__ == '__main__':
    main()
