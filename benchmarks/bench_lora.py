"""Benchmark the LoRA backend: its overhead against a bare TRL script, and SmolLM2-135M LoRA speed on this machine.

    python benchmarks/bench_lora.py [--steps 60] [--repeats 3] [--smol-steps 10] [--no-smol]

1. The same tiny-model run (finetune_nb.testing.make_tiny_model, the bundled sample chats, LoRA r=8 on all
   projections, batch 4, `--steps` steps, checkpoint per epoch, no eval) as whole processes, alternating:
   `LoraBackend().launch(...).wait()` (subprocess, run registry, live metrics, stop checks) versus a bare
   TRL `SFTTrainer` script with the same settings. Reports the median wall time of each and their ratio
   (goal: backend within 10% of bare TRL).
2. SmolLM2-135M-Instruct LoRA through the backend on this CPU: steps/s (after the first step) and the
   training process's peak RSS.

Machines here are noisy: compare the ratio, measured in one run, not the absolute times.
"""
import os, re, sys, time, json, argparse, resource, subprocess, statistics, tempfile, textwrap
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

BARE = textwrap.dedent('''
    import sys, json
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    model_dir, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rows = [{'messages': [{'role': m['role'], 'content': m.get('content') or ''} for m in json.loads(l)['messages']]}
            for l in open(data, encoding='utf-8') if l.strip()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type='CAUSAL_LM',
                          target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])
    args = SFTConfig(output_dir=out, max_steps=steps, learning_rate=1e-2, per_device_train_batch_size=4, seed=0,
                     max_length=1024, assistant_only_loss=True, bf16=False, use_cpu=True, gradient_checkpointing=False,
                     logging_steps=1, save_strategy='epoch', save_total_limit=2, report_to='none', disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, processing_class=tok, peft_config=peft_cfg, train_dataset=Dataset.from_list(rows))
    trainer.train()
    trainer.model.save_pretrained(out + '/adapter')
''')

def _train_runtime(log:str)->float:
    "The Trainer's own `train_runtime` (seconds in the training loop) from its printed summary"
    return float(re.findall(r"'train_runtime': '([0-9.e+-]+)', 'train_samples_per_second'", log)[-1])

def _cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime

def run_backend(root, model_dir, data, steps):
    "Wall seconds and CPU seconds (training process + this process's polling) of one backend run"
    from finetune_nb.lora import LoraBackend, LoraSpec
    t, c0, s0 = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    job = LoraBackend(root).launch(data, spec=LoraSpec(str(model_dir), max_steps=steps, learning_rate=1e-2, batch_size=4,
                                                       eval_split=0.0, target_modules='auto'))
    job.wait(timeout=1800)
    cpu = _cpu(resource.RUSAGE_CHILDREN) - c0 + _cpu(resource.RUSAGE_SELF) - s0
    return time.perf_counter() - t, cpu, _train_runtime((job.folder/'train.log').read_text()), job

def run_bare(script, model_dir, data, out, steps):
    "Wall seconds and CPU seconds of one bare TRL script run"
    t, c0 = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, str(script), str(model_dir), str(data), str(out), str(steps)], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return time.perf_counter() - t, _cpu(resource.RUSAGE_CHILDREN) - c0, _train_runtime(p.stdout)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=60)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--smol-steps', type=int, default=10)
    ap.add_argument('--no-smol', action='store_true')
    ap.add_argument('--threads', type=int, default=1, help='torch threads per process (1: steadier on a shared machine)')
    a = ap.parse_args()
    os.environ['OMP_NUM_THREADS'] = str(a.threads)  # inherited by both arms' processes
    from finetune_nb.testing import make_tiny_model
    from finetune_nb.data import sample_path
    tmp = Path(tempfile.mkdtemp(prefix='bench_lora_'))
    model_dir, data = make_tiny_model(tmp/'tiny'), sample_path()
    script = tmp/'bare_trl.py'; script.write_text(BARE)

    print(f'tiny model, {a.steps} steps, {a.repeats} repeats each, alternating (whole processes)')
    bare, back = [], []
    for i in range(a.repeats):
        bare.append(run_bare(script, model_dir, data, tmp/f'bare{i}', a.steps))
        *r, job = run_backend(tmp/'runs', model_dir, data, a.steps)
        assert job.status == 'succeeded', job.log()
        back.append(tuple(r))
        print(f'  repeat {i+1}: bare TRL {bare[-1][0]:.2f} s wall, {bare[-1][1]:.2f} s CPU, {bare[-1][2]:.2f} s in train loop   '
              f'LoraBackend {back[-1][0]:.2f} s wall, {back[-1][1]:.2f} s CPU, {back[-1][2]:.2f} s in train loop')
    # on a shared machine the fastest repeat is the least disturbed one
    for k, what in ((0, 'wall, whole process'), (1, 'CPU seconds'), (2, 'train loop (Trainer train_runtime)')):
        b, t = min(r[k] for r in back), min(r[k] for r in bare)
        print(f'{what:36s} fastest: bare TRL {t:6.2f} s   LoraBackend {b:6.2f} s   ratio {b/t:.3f}')
    print('goal: LoraBackend within 10% of bare TRL (ratio <= 1.10)')

    if a.no_smol: return
    from finetune_nb.lora import resolve_model
    t = time.perf_counter(); resolve_model('smollm2-135m'); print(f'\nSmolLM2-135M-Instruct resolved in {time.perf_counter()-t:.1f} s')
    from finetune_nb.lora import LoraBackend, LoraSpec
    job = LoraBackend(tmp/'runs').launch(data, spec=LoraSpec('smollm2-135m', max_steps=a.smol_steps, batch_size=8,
                                                             learning_rate=1e-3, eval_split=0.0))
    job.wait(timeout=3600)
    rows = [r for r in job.metrics.rows if r['split'] == 'train']
    sps = (len(rows) - 1) / (rows[-1]['time'] - rows[0]['time'])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB, largest child so far
    tps = statistics.median(r['tokens_per_s'] for r in rows[1:] if r.get('tokens_per_s'))
    print(f'SmolLM2-135M LoRA (r=8, all projections, batch 8, float32, {a.threads} torch thread(s) on {os.cpu_count()} CPUs): '
          f'{sps:.3f} steps/s ({1/sps:.2f} s/step), {tps:.0f} tokens/s, peak RSS {peak:.0f} MiB; '
          f'loss {rows[0]["loss"]:.2f} -> {rows[-1]["loss"]:.2f} in {len(rows)} steps')

if __name__ == '__main__': main()
