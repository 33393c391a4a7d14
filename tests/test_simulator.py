"""The simulator, through the real `openai` client over HTTP."""
import base64, json, time
import pytest
import openai
from finetune_nb.simulator import serve, Simulator, auto_epochs, total_steps

MODEL = 'gpt-4o-mini-2024-07-18'

from _lines import chat_lines, dpo_lines

def wait_until(cond, timeout=30.0):
    "Poll `cond` until it holds; fail after `timeout` seconds"
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, 'condition not met in time'
        time.sleep(0.01)

@pytest.fixture
def sim():
    s = serve(speed=0, seed=7)
    yield s
    s.stop()

@pytest.fixture
def client(sim): return openai.OpenAI(base_url=sim.base_url, api_key='sim', max_retries=0)

def upload(sim, client, data=None, name='train.jsonl'):
    f = client.files.create(file=(name, data or chat_lines()), purpose='fine-tune')
    sim.advance(1)
    return f

def test_files(sim, client):
    data = chat_lines()
    f = client.files.create(file=('train.jsonl', data), purpose='fine-tune')
    assert (f.filename, f.bytes, f.purpose, f.status) == ('train.jsonl', len(data), 'fine-tune', 'uploaded')
    sim.advance(1)
    assert client.files.retrieve(f.id).status == 'processed'
    assert client.files.content(f.id).read() == data
    assert [x.id for x in client.files.list(purpose='fine-tune')] == [f.id]
    assert list(client.files.list(purpose='batch')) == []
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError): client.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError, match='jsonl'): client.files.create(file=('train.csv', b'a,b'), purpose='fine-tune')

def test_job_lifecycle_and_curve_length(sim, client):
    f = upload(sim, client, chat_lines(40))
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method={'type': 'supervised',
                                         'supervised': {'hyperparameters': {'batch_size': 4, 'n_epochs': 2}}})
    assert job.status == 'validating_files' and job.method.type == 'supervised'
    statuses = []
    for dt in (2, 2, 1):
        sim.advance(dt)
        statuses.append(client.fine_tuning.jobs.retrieve(job.id).status)
    assert statuses == ['queued', 'running', 'running']
    sim.advance(100)
    j = client.fine_tuning.jobs.retrieve(job.id)
    assert j.status == 'succeeded' and j.finished_at and j.trained_tokens > 0
    assert (j.hyperparameters.batch_size, j.hyperparameters.n_epochs, j.hyperparameters.learning_rate_multiplier) == (4, 2, 1.8)
    evs = list(client.fine_tuning.jobs.list_events(job.id, limit=100))   # auto-pagination over `after`
    steps = [e.data['step'] for e in evs if e.type == 'metrics']
    assert steps == list(range(total_steps(40, 4, 2), 0, -1)) == list(range(20, 0, -1))   # newest first
    assert {e.data['total_steps'] for e in evs if e.type == 'metrics'} == {20}
    msgs = [e.message for e in evs][::-1]
    assert msgs[0].startswith('Created fine-tuning job') and msgs[-1] == 'The job has successfully completed'
    losses = [e.data['train_loss'] for e in evs if e.type == 'metrics'][::-1]
    assert losses[-1] < losses[0] / 2

def test_auto_epochs_follow_data(sim, client):
    for n in (10, 37):
        f = upload(sim, client, chat_lines(n, tag=str(n)))
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
        sim.advance(200)
        j = client.fine_tuning.jobs.retrieve(job.id)
        assert j.hyperparameters.n_epochs == auto_epochs(n)
        assert [e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == 'metrics'][0].data['total_steps'] == n * auto_epochs(n)

def test_events_pagination(sim, client):
    f = upload(sim, client)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    sim.advance(4.55)
    p1 = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert p1.has_more and [e.data.get('step') for e in p1.data] == [5, 4, 3]
    p2 = client.fine_tuning.jobs.list_events(job.id, limit=3, after=p1.data[-1].id)
    assert [e.data.get('step') for e in p2.data] == [2, 1, None]

def test_list_jobs_by_metadata_and_pages(sim, client):
    f = upload(sim, client)
    ids = [client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, metadata={'run': f'r{i}', 'team': 'a'}).id for i in range(5)]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={'run': 'r3'})] == [ids[3]]
    assert len(list(client.fine_tuning.jobs.list(metadata={'team': 'a'}))) == 5
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=ids[3]).data] == ids[::-1][2:4]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=100)] == ids[::-1]

def test_create_rejections(sim, client):
    f = upload(sim, client)
    with pytest.raises(openai.BadRequestError, match='not available for fine-tuning'):
        client.fine_tuning.jobs.create(model='gpt-nope', training_file=f.id)
    with pytest.raises(openai.BadRequestError, match='invalid training_file'):
        client.fine_tuning.jobs.create(model=MODEL, training_file='file-missing')
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method={'type': 'supervised', 'supervised': {'hyperparameters': {'n_epochs': 99}}})
    with pytest.raises(openai.BadRequestError, match='beta'):
        client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method={'type': 'supervised', 'supervised': {'hyperparameters': {'beta': 0.1}}})
    with pytest.raises(openai.BadRequestError, match='metadata'):
        client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, metadata={f'k{i}': 'v' for i in range(17)})
    g = client.files.create(file=('t.jsonl', chat_lines()), purpose='fine-tune')
    with pytest.raises(openai.BadRequestError, match='still being processed'):
        client.fine_tuning.jobs.create(model=MODEL, training_file=g.id)
    assert sim.job_list() == []

@pytest.mark.parametrize('data,msg', [
    (b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n' * 3, 'at least 10 examples'),
    (chat_lines() + b'not json\n', 'Line 13 is not valid JSON'),
    (chat_lines() + b'{"messages": [{"role": "robot", "content": "x"}]}\n', "unrecognized role 'robot'"),
])
def test_bad_file_fails_the_job(sim, client, data, msg):
    f = upload(sim, client, data)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    sim.advance(3)
    j = client.fine_tuning.jobs.retrieve(job.id)
    assert j.status == 'failed' and j.error.code == 'invalid_training_file' and j.error.param == 'training_file'
    assert msg in j.error.message and j.error.message.startswith('The job failed due to an invalid training file.')
    assert client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].level == 'error'

def test_pause_resume_cancel(sim, client):
    f = upload(sim, client)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    with pytest.raises(openai.BadRequestError, match='only a running job'): client.fine_tuning.jobs.pause(job.id)
    sim.advance(5)
    assert client.fine_tuning.jobs.pause(job.id).status == 'paused'
    n = len(list(client.fine_tuning.jobs.list_events(job.id)))
    sim.advance(1000)
    assert client.fine_tuning.jobs.retrieve(job.id).status == 'paused'
    assert len(list(client.fine_tuning.jobs.list_events(job.id))) == n
    assert client.fine_tuning.jobs.resume(job.id).status == 'running'
    sim.advance(1)
    assert client.fine_tuning.jobs.cancel(job.id).status == 'cancelled'
    sim.advance(1000)
    j = client.fine_tuning.jobs.retrieve(job.id)
    assert j.status == 'cancelled' and j.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError, match='cannot be cancelled'): client.fine_tuning.jobs.cancel(job.id)

def test_checkpoints_result_csv_and_chat(sim, client):
    f = upload(sim, client, chat_lines(12))
    v = upload(sim, client, chat_lines(10, tag='v'), name='valid.jsonl')
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, validation_file=v.id, suffix='demo',
                                         method={'type': 'supervised', 'supervised': {'hyperparameters': {'n_epochs': 4}}})
    sim.advance(100)
    j = client.fine_tuning.jobs.retrieve(job.id)
    assert j.fine_tuned_model == f'ft:{MODEL}:sim-org:demo:{job.id[-8:]}'
    cps = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in cps] == [48, 36, 24]            # newest first, last 3 epochs
    assert cps[0].fine_tuned_model_checkpoint == j.fine_tuned_model + ':ckpt-step-48'
    assert cps[0].metrics.full_valid_loss is not None
    raw = client.files.content(j.result_files[0]).read()
    csv = base64.b64decode(raw).decode()
    assert csv.splitlines()[0] == 'step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy'
    assert len(csv.splitlines()) == 49 and any(l.split(',')[3] for l in csv.splitlines()[1:])
    assert client.files.retrieve(j.result_files[0]).purpose == 'fine-tune-results'
    ask = lambda m, q: client.chat.completions.create(model=m, messages=[{'role': 'user', 'content': q}]).choices[0].message.content
    assert ask(j.fine_tuned_model, 'Frage q 5 zum Konto') == 'Antwort q 5.'
    assert ask(cps[1].fine_tuned_model_checkpoint, 'Frage q 2') == 'Antwort q 2.'
    assert 'simulated reply' in ask(MODEL, 'Hallo')
    with pytest.raises(openai.NotFoundError, match='does not exist'): ask('ft:nope', 'x')
    stream = client.chat.completions.create(model=j.fine_tuned_model, messages=[{'role': 'user', 'content': 'Frage q 3'}], stream=True)
    assert ''.join(c.choices[0].delta.content or '' for c in stream) == 'Antwort q 3.'
    assert j.fine_tuned_model in [m.id for m in client.models.list()]

def test_dpo_job(sim, client):
    f = upload(sim, client, dpo_lines())
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method={'type': 'dpo', 'dpo': {'hyperparameters': {'beta': 0.2, 'n_epochs': 2}}})
    sim.advance(100)
    j = client.fine_tuning.jobs.retrieve(job.id)
    assert j.status == 'succeeded' and j.method.type == 'dpo' and j.method.dpo.hyperparameters.beta == 0.2
    losses = [e.data['train_loss'] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == 'metrics'][::-1]
    assert len(losses) == 24 and 0.4 < losses[0] < 1.0 and losses[-1] < losses[0]
    g = upload(sim, client, chat_lines())    # chat lines are not preference pairs
    bad = client.fine_tuning.jobs.create(model=MODEL, training_file=g.id, method={'type': 'dpo'})
    sim.advance(3)
    assert 'preferred_output' in client.fine_tuning.jobs.retrieve(bad.id).error.message

def test_faults(sim):
    c0 = openai.OpenAI(base_url=sim.base_url, api_key='sim', max_retries=0)
    c2 = openai.OpenAI(base_url=sim.base_url, api_key='sim', max_retries=2)
    f = upload(sim, c0)
    create = lambda c: c.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    sim.inject(429, route='POST /v1/fine_tuning/jobs').inject(500, route='POST /v1/fine_tuning/jobs')
    create(c2)
    assert len(sim.job_list()) == 1                                 # the client's own retries got through
    sim.inject(503, times=2)                                        # any route
    with pytest.raises(openai.InternalServerError): c0.files.list()
    with pytest.raises(openai.InternalServerError): c0.models.list()
    c0.models.list()
    sim.inject('drop', route='POST /v1/fine_tuning/jobs')
    with pytest.raises(openai.APIConnectionError): create(c0)
    assert len(sim.job_list()) == 2                                 # the work was done anyway
    sim.inject('drop-before', route='POST /v1/fine_tuning/jobs')
    with pytest.raises(openai.APIConnectionError): create(c0)
    assert len(sim.job_list()) == 2                                 # ... but not this time
    sim.inject(500, route='GET /v1/fine_tuning/jobs/*')             # a glob: retrieve, not list
    c0.fine_tuning.jobs.list()
    with pytest.raises(openai.InternalServerError): c0.fine_tuning.jobs.retrieve(sim.job_list()[0]['id'])
    sim.hang_seconds = 1.0
    sim.inject('timeout', route='POST /v1/fine_tuning/jobs')
    with pytest.raises(openai.APITimeoutError): c0.with_options(timeout=0.3).fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    sim.settle()                                                    # the server has let go of the request
    assert len(sim.job_list()) == 3
    assert [r['status'] for r in sim.requests if r['path'] == '/v1/fine_tuning/jobs' and r['method'] == 'POST'] == [429, 500, 200, 'drop', 'drop', 'timeout']
    with pytest.raises(ValueError): sim.inject(200)

def test_auth(sim):
    s = serve(speed=0, api_key='sk-sim-right-key-123456')
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=s.base_url, api_key='sk-wrong-key-98765432', max_retries=0).models.list()
        assert 'wrong-key' not in str(e.value)
        openai.OpenAI(base_url=s.base_url, api_key='sk-sim-right-key-123456').models.list()
        assert s.client().models.list().data
    finally: s.stop()

def test_azure_client_and_clock(sim):
    az = openai.AzureOpenAI(azure_endpoint=sim.url, api_key='sim', api_version='2024-10-21', max_retries=0)
    f = az.files.create(file=('t.jsonl', chat_lines()), purpose='fine-tune')
    sim.advance(1)
    job = az.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    assert az.fine_tuning.jobs.retrieve(job.id).status == 'validating_files'
    t0 = sim.now()
    sim.speed = 1000                      # simulated time now runs fast
    wait_until(lambda: az.fine_tuning.jobs.retrieve(job.id).status == 'succeeded')
    assert sim.now() - t0 > 4             # (validating + queued: only the fast clock got it there)
    assert 'serving' in repr(sim) and '1 jobs' in repr(sim)


def test_slow_create_the_client_abandons_makes_one_job(sim, capfd):
    c = openai.OpenAI(base_url=sim.base_url, api_key='sim', max_retries=0)
    f = upload(sim, c)
    sim.inject('slow', times=1, route='POST /v1/fine_tuning/jobs', delay=1.5)
    with pytest.raises(openai.APITimeoutError):
        c.with_options(timeout=0.3).fine_tuning.jobs.create(model=MODEL, training_file=f.id, metadata={'run': 'r1'})
    sim.settle()
    assert [j['metadata'] for j in sim.job_list()] == [{'run': 'r1'}]   # created once, after the client gave up
    assert {k: sim.requests[-1][k] for k in ('fault', 'status')} == {'fault': 'slow', 'status': 200}
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={'run': 'r1'})] == [sim.job_list()[0]['id']]   # still serving
    assert 'Traceback' not in capfd.readouterr().err                  # writing to the closed socket was no crash
    sim.inject('slow', route='POST /v1/fine_tuning/jobs', delay=0.2)     # a patient client gets its answer late
    assert c.fine_tuning.jobs.create(model=MODEL, training_file=f.id).status == 'validating_files'
    assert len(sim.job_list()) == 2
    with pytest.raises(ValueError, match='delay'): sim.inject('slow', delay=-1)

def test_slow_holds_other_faults_and_timeout_uses_delay(sim):
    c = openai.OpenAI(base_url=sim.base_url, api_key='sim', max_retries=0)
    f = upload(sim, c)
    sim.inject('timeout', route='POST /v1/fine_tuning/jobs', delay=0.1)   # `delay` overrides hang_seconds
    with pytest.raises(openai.APIConnectionError): c.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    sim.inject(503, route='GET /v1/models', delay=0.1)
    with pytest.raises(openai.InternalServerError): c.models.list()
    sim.settle()
    assert len(sim.job_list()) == 1 and [r.get('fault') for r in sim.requests[-2:]] == ['timeout', 503]

def test_provider_that_ignores_metadata():
    s = serve(speed=0, keep_metadata=False)
    try:
        c = s.client(max_retries=0)
        f = upload(s, c)
        ids = [c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, metadata={'ftnb_run_id': f'r{i}'}).id for i in range(3)]
        assert c.fine_tuning.jobs.retrieve(ids[0]).metadata is None
        assert [j['metadata'] for j in s.job_list()] == [None] * 3
        assert [j.id for j in c.fine_tuning.jobs.list(metadata={'ftnb_run_id': 'r1'})] == ids[::-1]   # the filter is ignored
        assert [j.id for j in c.fine_tuning.jobs.list(metadata={'ftnb_run_id': 'nope'}, limit=2).data] == ids[::-1][:2]
    finally: s.stop()
    assert Simulator().keep_metadata and not Simulator(keep_metadata=False).keep_metadata

def metric_losses(client, jid):
    return [(e.data['step'], e.data['train_loss']) for e in client.fine_tuning.jobs.list_events(jid, limit=1000) if e.type == 'metrics'][::-1]

def test_continuing_from_a_checkpoint_continues_the_curve(sim, client):
    f = upload(sim, client, chat_lines(12))
    hp = lambda n: {'type': 'supervised', 'supervised': {'hyperparameters': {'n_epochs': n, 'batch_size': 1}}}
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method=hp(4), suffix='s')
    sim.advance(4 + 30 * 0.1 + 0.01)                                 # validated, queued, 30 of 48 steps
    assert client.fine_tuning.jobs.cancel(job.id).status == 'cancelled'
    cps = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in cps] == [24, 12]
    ck = cps[0].fine_tuned_model_checkpoint
    assert ck == f'ft:{MODEL}:sim-org:s:{job.id[-8:]}:ckpt-step-24'
    assert client.chat.completions.create(model=ck, messages=[{'role': 'user', 'content': 'Frage q 4 zum Konto'}]).choices[0].message.content == 'Antwort q 4.'
    cont = client.fine_tuning.jobs.create(model=ck, training_file=f.id, method=hp(2), seed=5)
    fresh = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method=hp(2), seed=5)
    sim.advance(100)
    c = client.fine_tuning.jobs.retrieve(cont.id)
    assert (c.status, c.model) == ('succeeded', ck)
    assert c.fine_tuned_model == f'ft:{MODEL}:sim-org::{cont.id[-8:]}'   # named after the base model, not the checkpoint
    parent, child, new = metric_losses(client, job.id), metric_losses(client, cont.id), metric_losses(client, fresh.id)
    assert [s for s, _ in child] == list(range(1, 25))                 # steps restart at 1
    mean = lambda xs: sum(xs) / len(xs)
    at24, start = mean([l for s, l in parent if 22 <= s <= 24]), mean([l for _, l in child[:3]])
    assert 0.7 < start / at24 < 1.3                                     # it starts where the parent was at step 24 ...
    assert start < 0.5 * mean([l for _, l in new[:3]])                   # ... not where a fresh job starts
    assert mean([l for _, l in child[-3:]]) < 0.8 * start               # and it keeps falling
    pc, cc = sim.jobs[job.id].curve, sim.jobs[cont.id].curve
    assert [cc.clean(s) for s in (1, 10, 24)] == [pc.clean(25), pc.clean(34), pc.clean(48)]   # the parent's curve, from step 24
    # a continuation of the continuation's final model goes on from its end (24 steps more: step 48 of the first)
    g = client.fine_tuning.jobs.create(model=c.fine_tuned_model, training_file=f.id, method=hp(1))
    sim.advance(100)
    assert client.fine_tuning.jobs.retrieve(g.id).status == 'succeeded' and sim.jobs[g.id].curve.clean(1) == pc.clean(49)

def test_dropped_checkpoints_cannot_be_continued(sim, client):
    f = upload(sim, client, chat_lines(10))
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, method={'type': 'supervised', 'supervised': {'hyperparameters': {'n_epochs': 4}}})
    sim.advance(100)
    kept = [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert [k.rsplit('-', 1)[1] for k in kept] == ['40', '30', '20']
    dropped = kept[-1].replace('ckpt-step-20', 'ckpt-step-10')             # the service keeps the last 3 only
    with pytest.raises(openai.BadRequestError, match='not available'): client.fine_tuning.jobs.create(model=dropped, training_file=f.id)
    with pytest.raises(openai.NotFoundError): client.chat.completions.create(model=dropped, messages=[{'role': 'user', 'content': 'x'}])
    dpo = client.fine_tuning.jobs.create(model=kept[0], training_file=upload(sim, client, dpo_lines()).id, method={'type': 'dpo'})
    sim.advance(100)
    assert client.fine_tuning.jobs.retrieve(dpo.id).status == 'succeeded'   # (jobs move when they are asked about)
    assert sim.jobs[dpo.id].curve.start == 0.693                        # another kind of loss: a fresh DPO curve
