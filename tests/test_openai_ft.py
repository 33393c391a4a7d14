"""OpenAIBackend end to end: the real `openai` client over HTTP against the simulator."""
import io, json, os, logging, time
from pathlib import Path
import pytest
import openai
from finetune_nb.core import DataError, ConfigError
from finetune_nb.data import sample_path
from finetune_nb.runs import RunRegistry
from finetune_nb.simulator import serve
from finetune_nb.core import FtnbError, JsonlAppender
from finetune_nb.openai_ft import (OpenAIBackend, OpenAISpec, OpenAIJob, BudgetExceeded, LaunchError, openai_api_key,
                                   watch, progress_line, RUN_KEY)
from finetune_nb.card import write_model_card

MODEL = 'gpt-4o-mini-2024-07-18'
KEY = 'sk-proj-TOPSECRET0123456789abcdefXYZ'
N_SAMPLE = 37

@pytest.fixture
def sim():
    s = serve(speed=400, seed=3, api_key=KEY)
    yield s
    s.stop()

@pytest.fixture
def backend(sim, tmp_path):
    return OpenAIBackend(tmp_path/'runs', client=openai.OpenAI(base_url=sim.base_url, api_key=KEY), poll=0.01, max_poll=0.05,
                         retry_delay=0.01, lookup_wait=2.0, file_cache=tmp_path/'files.json')

def again(backend):
    "A new backend on the same runs folder and server: what a restarted kernel builds"
    return OpenAIBackend(backend.runs.root, client=openai.OpenAI(base_url=backend.client.base_url, api_key=KEY), poll=0.01,
                         max_poll=0.05, retry_delay=0.01, lookup_wait=2.0, file_cache=backend._files.path)

def remote_jobs(sim): return sim.job_list()

def dpo_file(path, n=12):
    path.write_text(''.join(json.dumps({'input': {'messages': [{'role': 'user', 'content': f'Wie kündige ich Vertrag {i}?'}]},
                                        'preferred_output': [{'role': 'assistant', 'content': f'Unter Konto > Verträge ({i}).'}],
                                        'non_preferred_output': [{'role': 'assistant', 'content': 'Keine Ahnung.'}]}) + '\n'
                            for i in range(n)))
    return path

def test_happy_path(backend, sim):
    job = backend.launch(sample_path(), n_epochs=2, suffix='support', max_usd=5)
    assert isinstance(job, OpenAIJob) and job.provider_id.startswith('ftjob-') and job.id == job.run.id
    run = job.run
    assert run.job_id == job.provider_id and run.backend == 'openai' and run.base_model == MODEL
    assert run.extra['base_url'] == sim.base_url + '/'                  # the endpoint it was launched on, never the key
    assert run.cost['usd'] > 0 and run.cost['n_epochs'] == 2
    assert run.extra['training_file'].startswith('file-') and run.data['train']['n_examples'] == N_SAMPLE
    assert run.spec['suffix'] == 'support'
    job.wait(timeout=30)
    assert job.status == 'succeeded' and job.error is None
    assert job.result.startswith(f'ft:{MODEL}:sim-org:support:')
    steps = [r['step'] for r in job.metrics.rows if r['split'] == 'train']
    assert steps == list(range(1, 2 * N_SAMPLE + 1))                    # the whole curve, each step once
    assert job.metrics.rows[0]['total_steps'] == 2 * N_SAMPLE
    assert (run.folder/'result.csv').read_text().startswith('step,train_loss')
    assert len(job.result_frame()) == 2 * N_SAMPLE
    assert [c['step'] for c in job.checkpoints()] == [37, 74] and job.checkpoints()[-1]['model'].endswith(':ckpt-step-74')
    assert job.ask('Ich habe mein Passwort vergessen')
    rec = json.loads((run.folder/'run.json').read_text())
    assert rec['status'] == 'succeeded' and rec['result'] == job.result and rec['extra']['hyperparameters']['n_epochs'] == 2
    j = remote_jobs(sim)[0]
    assert j['metadata'] == {RUN_KEY: run.id} and j['method']['type'] == 'supervised'

def test_429_then_500_then_success_makes_exactly_one_job(backend, sim):
    sim.inject(429, route='POST /v1/fine_tuning/jobs').inject(500, route='POST /v1/fine_tuning/jobs')
    job = backend.launch(sample_path())
    assert len(remote_jobs(sim)) == 1 and remote_jobs(sim)[0]['id'] == job.provider_id
    creates = [r['status'] for r in sim.requests if r['method'] == 'POST' and r['path'] == '/v1/fine_tuning/jobs']
    assert creates == [429, 500, 200]

@pytest.mark.parametrize('fault', ['drop', 'timeout'])
def test_unknown_outcome_never_makes_a_second_job(backend, sim, fault):
    sim.hang_seconds = 1.0
    backend.create_timeout = 0.4
    sim.inject(fault, route='POST /v1/fine_tuning/jobs')
    job = backend.launch(sample_path())
    jobs = remote_jobs(sim)
    assert len(jobs) == 1 and jobs[0]['id'] == job.provider_id        # found by its run id, not created twice
    creates = [r['status'] for r in sim.requests if r['method'] == 'POST' and r['path'] == '/v1/fine_tuning/jobs']
    assert creates == [fault]
    assert job.wait(timeout=30).status == 'succeeded'

def test_persistent_outage_leaves_a_failed_run_and_a_relaunch_is_safe(backend, sim):
    sim.inject(503, times=4, route='POST /v1/fine_tuning/jobs')
    with pytest.raises(LaunchError, match='no job exists for it') as e:
        backend.launch(sample_path())
    run = e.value.run.reload()
    assert remote_jobs(sim) == [] and run.job_id is None and run.status == 'failed'   # no orphan `created` run
    with pytest.raises(ConfigError, match='failed before creating a job'): backend.attach(run.id)
    job = backend.launch(sample_path())                                 # the same data again: a new run, one job
    assert job.id != run.id and len(remote_jobs(sim)) == 1

def test_interrupted_launch_is_finished_not_repeated(backend, sim, tmp_path):
    # the create reached the service, then the launcher lost it and could not even look the job up
    sim.inject('drop', route='POST /v1/fine_tuning/jobs').inject(500, times=50, route='GET /v1/fine_tuning/jobs')
    with pytest.raises(LaunchError, match='nothing was retried') as e: backend.launch(sample_path())
    run = e.value.run.reload()
    assert run.status == 'created' and run.job_id is None and len(remote_jobs(sim)) == 1
    sim.faults.clear()
    other = tmp_path/'other.jsonl'
    other.write_text(''.join(sample_path().read_text().splitlines(True)[:20]))
    with pytest.raises(ConfigError, match='other training data'): backend.launch(other, run_id=run.id)
    job = backend.launch(sample_path())                                 # the same data and spec: finishes that run
    assert job.id == run.id and len(remote_jobs(sim)) == 1
    assert backend.launch(sample_path(), run_id=run.id).id == job.id    # and again: still one job
    assert len(remote_jobs(sim)) == 1 and len(backend.runs) == 1

def test_refusal_is_recorded(backend, sim):
    with pytest.raises(LaunchError, match='not available for fine-tuning'):
        backend.launch(sample_path(), base_model='gpt-4o-mini-2024-07-18-nope')
    run = next(iter(backend.runs))
    assert run.status == 'failed' and 'not available' in run.error

def test_restart_attaches_and_continues_the_curve(backend, sim):
    sim.speed, sim.file_seconds = 0, 0
    job = backend.launch(sample_path())
    sim.advance(4 + 40 * 0.1 + 0.05)
    job.refresh()
    assert job.status == 'running' and len(job.metrics) == 40
    run_id, job_id = job.id, job.provider_id
    del job                                                             # the kernel dies here
    b2 = again(backend)
    open_jobs = b2.open_jobs()
    assert [j.id for j in open_jobs] == [run_id]
    j2 = open_jobs[0]
    assert len(j2.metrics) == 40 and j2.run.id == run_id
    sim.speed = 400
    j2.wait(timeout=30)
    steps = [r['step'] for r in j2.metrics.rows]
    assert steps == list(range(1, 3 * N_SAMPLE + 1))                    # continued, nothing lost or repeated
    lines = (j2.run.folder/'metrics.jsonl').read_text().splitlines()
    assert len(lines) == 3 * N_SAMPLE
    assert b2.open_jobs() == []
    assert b2.attach(job_id).id == run_id and b2.attach(run_id).provider_id == job_id

def test_wait_outlives_network_blips(backend, sim):
    job = backend.launch(sample_path(), n_epochs=1)
    sim.inject(503, times=5, route='GET /v1/fine_tuning/jobs/*').inject('drop', times=3, route='GET /v1/fine_tuning/jobs/*/events')
    assert job.wait(timeout=30).status == 'succeeded'
    assert [r['step'] for r in job.metrics.rows] == list(range(1, N_SAMPLE + 1))

def test_cancel_pause_resume(backend, sim):
    sim.speed, sim.file_seconds = 0, 0
    job = backend.launch(sample_path())
    with pytest.raises(ConfigError, match='only a running job'): job.pause()
    sim.advance(5)
    assert job.pause().status == 'paused'
    sim.advance(1000)
    assert job.refresh().status == 'paused'
    assert job.resume().status == 'running'
    assert job.cancel().status == 'cancelled' and job.finished
    assert json.loads((job.run.folder/'run.json').read_text())['status'] == 'cancelled'
    assert job.cancel().status == 'cancelled'                           # cancelling an ended job changes nothing
    assert again(backend).open_jobs() == []

def test_dpo(backend, sim, tmp_path):
    p = dpo_file(tmp_path/'prefs.jsonl')
    with pytest.raises(ConfigError, match='needs dpo examples'): backend.launch(sample_path(), method='dpo')
    with pytest.raises(ConfigError, match='needs chat examples'): backend.launch(p)
    assert sim.files == {}
    job = backend.launch(p, method='dpo', beta=0.3, n_epochs=2).wait(timeout=30)
    assert job.status == 'succeeded'
    m = remote_jobs(sim)[0]['method']
    assert m['type'] == 'dpo' and m['dpo']['hyperparameters']['beta'] == 0.3
    losses = [r['loss'] for r in job.metrics.rows]
    assert len(losses) == 24 and losses[0] < 1.0 and losses[-1] < losses[0]
    assert job.ask('Wie kündige ich Vertrag 4?') == 'Unter Konto > Verträge (4).'

def test_server_side_error_is_surfaced_verbatim(backend, sim, tmp_path, capsys):
    bad = tmp_path/'bad.jsonl'
    lines = sample_path().read_text().splitlines()[:12]
    lines[4] = json.dumps({'messages': [{'role': 'user', 'content': 'Hallo?'}]})   # no assistant reply
    bad.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError) as e: backend.launch(bad)              # our validator refuses it first ...
    assert 'bad.jsonl:5' in str(e.value) and sim.files == {}
    job = backend.launch(bad, check=False).wait(timeout=30)              # ... the service, if asked, fails the job
    assert job.status == 'failed' and job.error_code == 'invalid_training_file'
    expected = remote_jobs(sim)[0]['error']['message']
    assert job.error == expected == 'The job failed due to an invalid training file. Line 5: no assistant message.'
    assert job.run.error == expected and expected in progress_line(job)
    out = io.StringIO()
    watch(job, out=out)
    assert out.getvalue().strip().endswith('error: ' + expected)

def test_local_validation_and_budget_spend_nothing(backend, sim, tmp_path):
    bad = tmp_path/'b.jsonl'
    bad.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(DataError, match='nothing was started'): backend.launch(bad)
    with pytest.raises(BudgetExceeded, match='above max_usd') as e:
        backend.launch(sample_path(), n_epochs=10, max_usd=0.0001)
    assert e.value.estimate.usd > 0.0001
    assert sim.files == {} and remote_jobs(sim) == [] and len(backend.runs) == 0
    asked = []
    job = backend.launch(sample_path(), max_usd=0.0001, confirm=lambda est: asked.append(est.usd) or True)
    assert asked and job.run.cost['usd'] == asked[0]
    with pytest.raises(BudgetExceeded): backend.launch(sample_path(), max_usd=0.0001, confirm=lambda est: False, new=True)
    assert backend.launch(sample_path(), max_usd=0.0001, confirm=True).id == job.id   # the same data and spec: that run
    assert backend.launch(sample_path(), max_usd=0.0001, confirm=True, new=True).id != job.id
    assert len(remote_jobs(sim)) == 2

def test_upload_once(backend, sim, tmp_path):
    j1 = backend.launch(sample_path())
    assert len(sim.files) == 1
    j2 = backend.launch(sample_path(), new=True)
    assert len(sim.files) == 1 and j2.run.extra['training_file'] == j1.run.extra['training_file']
    backend._files.path.unlink()                                        # another machine: no local cache
    assert backend.upload(sample_path()) == j1.run.extra['training_file'] and len(sim.files) == 1
    backend.client.files.delete(j1.run.extra['training_file'])          # deleted on the server: upload again
    fid = backend.upload(sample_path())
    assert fid != j1.run.extra['training_file'] and len(sim.files) == 1
    name = sim.files[fid]['filename']
    assert name.startswith('sample_support_de.') and name.endswith('.jsonl')

def test_attach_job_launched_elsewhere(backend, sim):
    c = backend.client
    f = c.files.create(file=('x.jsonl', sample_path().read_bytes()), purpose='fine-tune')
    sim.advance(1)
    j = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    job = backend.attach(j.id).wait(timeout=30)
    assert job.status == 'succeeded' and job.run.extra['adopted'] and len(job.metrics) == 3 * N_SAMPLE
    assert backend.attach(j.id).run.id == job.run.id
    with pytest.raises(ConfigError, match='no run or job'): backend.attach('ftjob-doesnotexist')

def test_follow_in_background_and_watch(backend, sim):
    sim.speed = 60
    job = backend.launch(sample_path(), n_epochs=1)
    plot = job.follow(plot=True)                                        # returns at once
    assert job.following and not job.finished
    t0 = time.monotonic()
    while job.following and time.monotonic() - t0 < 30: time.sleep(0.05)
    assert job.status == 'succeeded' and plot.finished
    assert 'step 37' in plot.summary()
    out = io.StringIO()
    watch(job, out=out)
    assert 'succeeded' in out.getvalue() and 'step 37/37' in out.getvalue() and 'loss ' in out.getvalue()
    sim.speed = 20
    job2 = backend.launch(sample_path(), n_epochs=1)
    out = io.StringIO()
    watch(job2, out=out, poll=0.01)
    lines = out.getvalue().splitlines()                                 # not a tty: one line per change
    assert len(lines) == len(set(lines)) and 'succeeded' in lines[-1] and lines[-1].startswith(job2.id)

def test_azure_client(sim, tmp_path):
    az = openai.AzureOpenAI(azure_endpoint=sim.url, api_key=KEY, api_version='2024-10-21')
    b = OpenAIBackend(tmp_path/'runs', client=az, poll=0.01, file_cache=tmp_path/'f.json')
    job = b.launch(sample_path(), n_epochs=1).wait(timeout=30)
    assert job.status == 'succeeded' and len(job.metrics) == N_SAMPLE

def test_key_never_leaks(sim, tmp_path, caplog, capsys, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    monkeypatch.setenv('OPENAI_BASE_URL', sim.base_url)
    monkeypatch.setenv('OPENAI_LOG', 'debug')
    caplog.set_level(logging.DEBUG)
    b = OpenAIBackend(runs=tmp_path/'runs', poll=0.01, retry_delay=0.01, file_cache=tmp_path/'f.json')  # default client, key from env
    assert 'not created' in repr(b)
    sim.inject(500, route='POST /v1/fine_tuning/jobs').inject('drop', route='GET /v1/fine_tuning/jobs/*')
    job = b.launch(sample_path(), n_epochs=1)
    plot = job.follow(plot=True)
    job.wait(timeout=30)
    while job.following: time.sleep(0.02)
    watch(job, out=io.StringIO())
    texts = [repr(b), repr(job), str(job.run), repr(job.run), progress_line(job), caplog.text, *capsys.readouterr(), repr(plot), plot.to_svg()]
    texts += [p.read_text(errors='replace') for p in tmp_path.rglob('*') if p.is_file()]
    assert caplog.text                                                 # the client did log its requests
    for t in texts: assert KEY not in t and KEY[8:20] not in t
    try:
        import ipywidgets
        from finetune_nb.plot import LossPlot
    except ImportError: return
    wp = LossPlot(job, renderer='widget')
    seen, todo = [], [v for v in vars(wp.renderer).values() if isinstance(v, ipywidgets.Widget)]
    while todo:                                       # every widget the live plot shows, and their state
        w = todo.pop()
        if any(w is x for x in seen): continue
        seen.append(w)
        todo += [c for c in getattr(w, 'children', ()) if isinstance(c, ipywidgets.Widget)]
    assert seen
    state = json.dumps([w.get_state() for w in seen], default=str)
    assert len(state) > 100 and KEY not in state and KEY[8:20] not in state

def test_api_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match='no OpenAI API key'): openai_api_key(prompt=False)
    (tmp_path/'.env').write_text("OPENAI_API_KEY='sk-dotenv-0123456789'\n")
    assert openai_api_key(prompt=False) == 'sk-dotenv-0123456789'
    (tmp_path/'.env').unlink()
    monkeypatch.setattr('getpass.getpass', lambda prompt='': 'sk-typed-0123456789')
    assert openai_api_key(prompt=True) == 'sk-typed-0123456789'
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-env-0123456789')
    assert openai_api_key() == 'sk-env-0123456789'


# --- the holes a fault probe found (issue 11) --------------------------------------------------------------------

def creates(sim): return [r for r in sim.requests if r['method'] == 'POST' and r['path'] == '/v1/fine_tuning/jobs']

def test_a_slow_create_received_after_the_timeout_makes_one_job(backend, sim):
    backend.create_timeout, backend.lookup_wait = 0.5, 10.0
    sim.inject('slow', times=1, route='POST /v1/fine_tuning/jobs', delay=1.5)   # processed 1 s after the client gave up
    job = backend.launch(sample_path(), n_epochs=1)
    sim.settle()
    jobs = remote_jobs(sim)
    assert [j['id'] for j in jobs] == [job.provider_id]                 # found, not created a second time
    assert len(creates(sim)) == 1 and job.run.reload().job_id == job.provider_id
    assert job.wait(timeout=30).status == 'succeeded'

def test_a_provider_that_drops_metadata_never_gets_a_blind_retry(tmp_path, caplog):
    sim = serve(speed=400, seed=5, api_key=KEY, keep_metadata=False)
    try:
        be = OpenAIBackend(tmp_path/'runs', client=openai.OpenAI(base_url=sim.base_url, api_key=KEY), poll=0.01, max_poll=0.05,
                           retry_delay=0.01, lookup_wait=1.0, file_cache=tmp_path/'files.json')
        sim.inject('drop', times=3, route='POST /v1/fine_tuning/jobs')     # created, then the answer lost, three times
        caplog.set_level(logging.WARNING)
        job = be.launch(sample_path(), n_epochs=1)
        assert [j['id'] for j in remote_jobs(sim)] == [job.provider_id]  # matched by file, model and time: one job
        assert caplog.text.count('does not keep job metadata') == 1 and len(creates(sim)) == 1   # no retry was needed
        sim.faults.clear()
        other = tmp_path/'other.jsonl'
        other.write_text(''.join(sample_path().read_text().splitlines(True)[:20]))
        sim.inject('drop-before', route='POST /v1/fine_tuning/jobs')       # this time nothing reached the service
        with pytest.raises(LaunchError, match='does not retry blindly') as e: be.launch(other, n_epochs=1)
        run = e.value.run.reload()
        assert run.status == 'created' and len(remote_jobs(sim)) == 1 and len(creates(sim)) == 2
        job2 = be.launch(other, n_epochs=1)                                # the user decides: run it again
        assert job2.id == run.id and len(remote_jobs(sim)) == 2
    finally: sim.stop()

def test_ftnb_train_killed_during_create_then_run_again_makes_one_job(sim, tmp_path, ftnb):
    import signal, subprocess, os
    sim.inject('slow', times=1, route='POST /v1/fine_tuning/jobs', delay=3.0)
    env = {**os.environ, 'OPENAI_API_KEY': KEY, 'OPENAI_BASE_URL': sim.base_url, 'FTNB_CACHE': str(tmp_path/'cache')}
    args = [str(Path(__file__).parents[1]/'.venv'/'bin'/'ftnb'), 'train', str(sample_path()), '--backend', 'openai',
            '--epochs', '1', '--runs', str(tmp_path/'runs')]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not creates(sim) and time.monotonic() - t0 < 60: time.sleep(0.05)   # the create is on its way
    assert creates(sim), proc.communicate()
    proc.send_signal(signal.SIGKILL); proc.wait()
    sim.settle()
    assert len(remote_jobs(sim)) == 1                                    # the service made the job anyway
    r = ftnb(*args[1:], env=env)                                         # what every user does next
    assert r.returncode == 0, r.stderr
    assert len(remote_jobs(sim)) == 1 and len(list((tmp_path/'runs').glob('2*'))) == 1
    assert 'continuing it' in r.stderr or 'finishing the interrupted launch' in r.stderr

def test_a_run_id_from_job_metadata_cannot_escape_the_runs_folder(backend, sim, tmp_path):
    c = backend.client
    f = c.files.create(file=('x.jsonl', sample_path().read_bytes()), purpose='fine-tune')
    sim.advance(1)
    for evil in ('../../x', '/tmp/evil', '..'):
        j = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, metadata={RUN_KEY: evil})
        with pytest.raises(ConfigError, match='names run .* which is refused'): backend.attach(j.id)
    assert not (tmp_path/'x').exists() and not Path('/tmp/evil').exists()
    assert list(tmp_path.rglob('run.json')) == [] and len(backend.runs) == 0

def test_a_full_disk_during_refresh_leaves_no_gap(backend, sim, monkeypatch):
    sim.speed, sim.file_seconds = 0, 0
    job = backend.launch(sample_path())
    sim.advance(4 + 30 * 0.1 + 0.05)
    job.refresh()
    assert len(job.metrics) == 30
    real = JsonlAppender.write
    def full(self, data):
        real(self, data[:len(data) // 3])
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(JsonlAppender, 'write', full)
    sim.advance(50 * 0.1)
    with pytest.raises(FtnbError, match='metrics.jsonl: No space left on device'): job.refresh()
    monkeypatch.setattr(JsonlAppender, 'write', real)                    # the disk has room again
    sim.speed = 400
    job.wait(timeout=30)
    steps = [r['step'] for r in job.metrics.rows]
    assert job.status == 'succeeded' and steps == list(range(1, 3 * N_SAMPLE + 1))
    on_disk = (job.run.folder/'metrics.jsonl').read_text().splitlines()
    assert [json.loads(l)['step'] for l in on_disk] == steps              # no torn line, no gap
    assert f'last step {3 * N_SAMPLE}' in write_model_card(job.run).read_text()

def test_watch_rides_out_blips_and_fails_in_one_clear_line(backend, sim):
    job = backend.launch(sample_path(), n_epochs=1)
    sim.inject(500, times=3, route='GET /v1/fine_tuning/jobs/*').inject('drop', times=2, route='GET /v1/fine_tuning/jobs/*')
    out = io.StringIO()
    assert watch(job, out=out, poll=0.01).status == 'succeeded'
    backend.max_failures = 2
    job2 = backend.launch(sample_path(), n_epochs=1, new=True)
    sim.inject(503, times=100, route='GET /v1/fine_tuning/jobs/*')
    with pytest.raises(FtnbError, match=f'lost track of run {job2.id}.*HTTP 503.*The job itself is not affected'):
        watch(job2, out=io.StringIO(), poll=0.01)

def test_a_dropped_upload_is_not_uploaded_twice(backend, sim):
    sim.inject('drop', route='POST /v1/files')                            # the file arrived; the answer did not
    job = backend.launch(sample_path(), n_epochs=1)
    assert len(sim.files) == 1 and job.run.extra['training_file'] in sim.files
    sim.inject(429, times=10, route='POST /v1/files')
    other = Path(job.run.folder.parent.parent/'o.jsonl'); other.write_text(sample_path().read_text()[:-1] + '\n\n')
    with pytest.raises(LaunchError, match='could not upload o.jsonl: HTTP 429'): backend.launch(other)

def test_the_key_goes_only_to_the_endpoint_it_came_with(sim, tmp_path, monkeypatch):
    for k in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'OPENAI_ORG_ID', 'OPENAI_PROJECT_ID', 'AZURE_OPENAI_ENDPOINT'):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path/'.env').write_text(f'OPENAI_API_KEY="{KEY}"\nOPENAI_BASE_URL={sim.base_url}  # the local server\n')
    b = OpenAIBackend(tmp_path/'runs', poll=0.01, file_cache=tmp_path/'f.json')          # key and host from .env, together
    job = b.launch(sample_path(), n_epochs=1).wait(timeout=30)
    assert job.status == 'succeeded' and job.run.extra['base_url'] == sim.base_url + '/'
    other = serve(speed=400, api_key=KEY)
    try:
        b2 = OpenAIBackend(tmp_path/'runs', client=openai.OpenAI(base_url=other.base_url, api_key=KEY), file_cache=tmp_path/'f.json')
        with pytest.raises(ConfigError, match=f'was launched on {sim.base_url}/, but this backend talks to {other.base_url}/'):
            b2.attach(job.id)
        assert other.requests == []                                      # the other server was never asked
    finally: other.stop()
