"""Evaluation end to end: APIModel against the simulator (faults, cache, judge), and a tiny local model trained here."""
import os, json
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('FTNB_NO_PROGRESS', '1')

import openai
from finetune_nb.core import FtnbError
from finetune_nb.data import load_sample
from finetune_nb.validate import validate
from finetune_nb.simulator import serve
from finetune_nb.openai_ft import OpenAIBackend
from finetune_nb.lora import LoraSpec, LoraBackend
from finetune_nb.testing import make_tiny_model
from finetune_nb.card import write_model_card
from finetune_nb.evaluate import (APIModel, LocalModel, Judge, evaluate, compare, distill, chrf, load_evals, ComparePanel,
                                  bootstrap_ci, EvalReport, CompareReport)

pytestmark = pytest.mark.needs('sacrebleu')   # the `eval` extra: chrF is the default metric
BASE = 'gpt-4o-mini-2024-07-18'
KEY = 'sk-proj-EVALSECRET0123456789abcdefXYZ'

def chats(sim): return [r for r in sim.requests if r['path'] == '/v1/chat/completions']

@pytest.fixture(scope='module')
def sim():
    s = serve(speed=400, seed=5, api_key=KEY)
    yield s
    s.stop()

@pytest.fixture(scope='module')
def client(sim): return openai.OpenAI(base_url=sim.base_url, api_key=KEY)

@pytest.fixture(scope='module')
def hosted(sim, client, tmp_path_factory):
    "A fine-tune on the simulator, trained on 70% of the sample and validated on the rest"
    d = tmp_path_factory.mktemp('hosted')
    tr, va = load_sample().split(0.3)
    be = OpenAIBackend(d/'runs', client=client, poll=0.02, max_poll=0.05, file_cache=d/'files.json')
    job = be.launch(tr.to_jsonl(d/'train.jsonl'), valid=va.to_jsonl(d/'valid.jsonl'), n_epochs=1).wait(timeout=60)
    assert job.status == 'succeeded'
    return job

def _eval(job, client, cache):
    judge = Judge(APIModel(BASE, client=client, cache=cache))
    return evaluate(job.tuned(cache=cache), job, metrics=['chrf', 'exact', 'rougeL'], judge=judge)

def test_faults_change_nothing_and_a_rerun_asks_nothing(hosted, sim, client, tmp_path):
    clean = _eval(hosted, client, tmp_path/'clean')
    n0 = len(chats(sim))
    for code in (429, 500, 503, 429, 500):
        sim.inject(code, route='POST /v1/chat/completions')
    faulty = _eval(hosted, client, tmp_path/'faulty')
    faults = [r for r in chats(sim)[n0:] if r.get('fault')]
    assert len(faults) == 5                                     # the faults were met, and retried past
    assert faulty.to_frame().equals(clean.to_frame())
    assert faulty.summary().equals(clean.summary())
    assert clean.to_frame()['judge'].notna().all()              # the judge graded every answer
    n1 = len(chats(sim))
    again = _eval(hosted, client, tmp_path/'faulty')            # new handles, as after a restart: from the disk cache
    assert len(chats(sim)) == n1
    assert again.to_frame().equals(clean.to_frame())
    files = list((tmp_path/'faulty').glob('*.jsonl'))
    assert len(files) == 2 and all(KEY not in f.read_text() for f in files)
    assert KEY not in repr(hosted.tuned()) and KEY not in json.dumps(clean.to_dict())

def test_tuned_beats_base_on_the_simulator(hosted, client, tmp_path):
    judge = Judge(APIModel(BASE, client=client, cache=tmp_path))
    cr = compare(hosted, hosted.base(cache=tmp_path), hosted.tuned(cache=tmp_path), metrics=['chrf', 'rougeL'], judge=judge)
    s = cr.summary()
    assert s.loc['chrf', 'low'] > 0 and s.loc['rougeL', 'low'] > 0, s
    w = cr.wins()
    assert w['win'] > w['loss'] and sum(w.values()) == len(cr) == hosted.run.data['valid']['n_examples']
    prefs = cr.preferences(tmp_path/'prefs.jsonl')
    rep = validate(prefs)
    assert rep.ok and rep.kind == 'dpo', rep.errors
    cr.save(hosted)
    card = write_model_card(hosted.run).read_text()
    assert '## Evaluation' in card and '| chrf |' in card and hosted.tuned().name in card

def test_unfinished_job_has_no_tuned_model_and_refusals_surface(sim, client, tmp_path):
    be = OpenAIBackend(tmp_path/'runs', client=client, poll=0.02, file_cache=tmp_path/'files.json')
    job = be.launch(load_sample(), n_epochs=3)
    with pytest.raises(FtnbError, match='no tuned model yet'): job.tuned()
    with pytest.raises(FtnbError, match='no-such-model') as e:
        APIModel('no-such-model', client=client, cache=tmp_path/'c').generate(['Hallo', 'Hi'])
    assert '404' in str(e.value) and KEY not in str(e.value)
    job.cancel()

# --- a tiny local model, trained here ----------------------------------------------------------------------------

ORDERS = ('Bestellung {}: Wo ist mein Paket?', 'Ihr Paket ist unterwegs.')
BILLS = ('Rechnung {}: Bitte senden Sie mir die Rechnung.', 'Die Rechnung kommt per E-Mail.')

def task(numbers):
    return [{'messages': [{'role': 'user', 'content': q.format(n)}, {'role': 'assistant', 'content': a}]}
            for n in numbers for q, a in (ORDERS, BILLS)]

def write(path, rows):
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
    return path

@pytest.fixture(scope='module')
def tiny(tmp_path_factory): return make_tiny_model(tmp_path_factory.mktemp('model')/'tiny')

def spec(tiny, **kw): return LoraSpec(str(tiny), **{'max_steps': 60, 'learning_rate': 1e-2, 'batch_size': 8, 'eval_split': 0.0, **kw})

@pytest.fixture(scope='module')
def local(tiny, tmp_path_factory):
    "A tiny adapter trained on one task; held-out examples of the same task (other numbers) to evaluate on"
    d = tmp_path_factory.mktemp('local')
    train, valid = write(d/'train.jsonl', task(range(100, 124))), write(d/'valid.jsonl', task(range(900, 906)))
    job = LoraBackend(d/'runs').launch(train, valid=valid, spec=spec(tiny)).wait(timeout=600)
    assert job.status == 'succeeded', job.log()
    return job

def test_tiny_tuned_ahead_of_base_on_held_out(local):
    base, tuned = local.base(), local.tuned()
    assert isinstance(tuned, LocalModel) and tuned.adapter is not None
    rb = evaluate(base, local, metrics=['chrf', 'exact'], max_new_tokens=16)
    rt = evaluate(tuned, local, metrics=['chrf', 'exact'], max_new_tokens=16)
    sb, st = rb.summary(), rt.summary()
    print('\nbase\n', sb.round(2), '\ntuned\n', st.round(2))
    assert rb.data['n'] == rt.data['n'] == 12 and rb.data['split'] == 'valid'
    assert st.loc['chrf', 'low'] > sb.loc['chrf', 'high']         # the intervals do not even overlap
    assert st.loc['exact', 'mean'] > sb.loc['exact', 'mean']

def test_tiny_compare_preferences_validate(local, tmp_path):
    cr = compare(local, local.base(), local.tuned(), metrics=['chrf'], max_new_tokens=16)
    assert cr.summary().loc['chrf', 'low'] > 0
    prefs = cr.preferences(tmp_path/'prefs.jsonl', by='chrf')
    rep = validate(prefs)
    assert rep.ok and rep.kind == 'dpo' and rep.n_examples >= 10, rep.errors
    panel = ComparePanel(cr, path=tmp_path/'pairs.jsonl')
    for i in range(len(cr)): panel.better('a' if panel.view(i)['a']['content'] == cr.tuned.rows[i]['answer'] else 'b', i)
    assert panel.tally()['win'] == len(cr)
    assert validate(panel.export(tmp_path/'human.jsonl')).ok
    panel.close()
    # the loop closed: the comparison's verdicts train the base with DPO, and the reward margin rises
    job = LoraBackend(tmp_path/'runs').launch(prefs, base_model=local.run.spec['base_model'], method='dpo', max_steps=16,
                                              learning_rate=1e-2, batch_size=4, eval_split=0.0).wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    margins = [r['rewards/margins'] for r in job.metrics.rows if r['split'] == 'train']
    assert sum(margins[-3:]) / 3 > margins[0] + 0.5, margins

def _pair_report(answers_a, answers_b)->CompareReport:
    "A comparison of two made-up models on made-up prompts (no model asked)"
    rows = lambda ans: [{'line': i + 1, 'prompt': [{'role': 'user', 'content': f'Frage {i}'}], 'reference': 'r', 'answer': a,
                         'scores': {'exact': 0.0}} for i, a in enumerate(ans)]
    data = {'path': 'x.jsonl', 'sha256': 'abc', 'split': 'valid', 'n': len(answers_a)}
    return CompareReport(EvalReport(rows(answers_a), ['exact'], {'name': 'base'}, data), EvalReport(rows(answers_b), ['exact'], {'name': 'tuned'}, data))

def test_compare_panel_keeps_pairs_in_the_cache_or_in_a_folder_given(tmp_path, monkeypatch):
    monkeypatch.setenv('FTNB_CACHE', str(tmp_path/'cache'))
    cr = _pair_report(['a1', 'a2'], ['b1', 'b2'])
    p = ComparePanel(cr)                                              # the default, as before: the cache, by content
    assert p.session.ds.path.parent == tmp_path/'cache'/'compare'
    p.tie(0); p.close()
    q = ComparePanel(cr, dir=tmp_path/'run'/'compare')                # a folder of the caller's (the Workbench: the run's)
    assert q.session.ds.path.parent == tmp_path/'run'/'compare' and q.session.ds.path.name == p.session.ds.path.name
    assert q.tally()['open'] == 2                                     # its own journal: the cache's verdict stays there
    q.better('a', 1); q.close()
    r = ComparePanel(CompareReport.from_dict(json.loads(json.dumps(cr.to_dict()))), dir=tmp_path/'run'/'compare')
    assert r.tally()['open'] == 1 and r.session.ds.path == q.session.ds.path   # the same comparison, read back: the same file
    r.close()
    other = ComparePanel(_pair_report(['a1', 'a2'], ['b1', 'c2']), dir=tmp_path/'run'/'compare')
    assert other.session.ds.path != q.session.ds.path and other.tally()['open'] == 2   # other answers, another file
    other.close()

def test_distill_moves_the_student_toward_the_teacher(local, client, tiny, tmp_path):
    "A hosted fine-tune of the task (on the simulator) teaches a tiny local student"
    d = Path(local.run.data['train']['path'])
    be = OpenAIBackend(tmp_path/'hosted', client=client, poll=0.02, max_poll=0.05, file_cache=tmp_path/'files.json')
    teacher = be.launch(d, n_epochs=1).wait(timeout=60).tuned(cache=tmp_path/'answers')
    job = distill(task(range(300, 324)), teacher, spec(tiny), runs=tmp_path/'runs').wait(timeout=600)
    assert job.status == 'succeeded', job.log()
    assert len(job.run.data['train']) and job.run.data['train']['n_examples'] == 48
    convs = [r['messages'][:1] for r in task(range(900, 906))]     # prompts neither saw
    want = teacher.generate(convs)
    def closeness(model):
        return bootstrap_ci([chrf(a, w) for a, w in zip(model.generate(convs, max_new_tokens=16), want)])
    before, after = closeness(job.base()), closeness(job.tuned())
    print(f'\nchrF to the teacher: before {before[0]:.1f} [{before[1]:.1f}, {before[2]:.1f}], after {after[0]:.1f} [{after[1]:.1f}, {after[2]:.1f}]')
    assert after[1] > before[2]
