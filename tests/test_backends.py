"""One scenario through every backend, by name only: the Backend/Job contract of `finetune_nb.jobs`.

Nothing here touches a backend-specific class, attribute or verb: what passes for one backend passes for all.
"""
import time
import pytest
from finetune_nb.data import sample_path
from finetune_nb.backends import get_backend, BACKENDS
from finetune_nb.simulator import serve
from finetune_nb.testing import make_tiny_model
from finetune_nb.core import ConfigError

N_SAMPLE = 37

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp('tiny')/'model')

@pytest.fixture(params=['simulator', 'lora', 'bedrock'])
def case(request, tmp_path, monkeypatch):
    "(make a backend on the same runs folder, spec fields for a short run and for one long enough to cancel, can it resume)"
    name, runs = request.param, tmp_path/'runs'
    if name == 'simulator':
        sim = serve(speed=4, seed=0)
        make = lambda: get_backend('simulator', runs=runs, sim=sim, poll=0.05, max_poll=0.2)
        yield make, dict(base_model='gpt-4o-mini-2024-07-18', n_epochs=2), dict(base_model='gpt-4o-mini-2024-07-18', n_epochs=3), True
        sim.stop()
    elif name == 'bedrock':
        # moto simulates S3 and the job calls; FakeBedrock plays the training (metrics CSVs, status) in moto's state
        pytest.importorskip('moto')
        from test_bedrock import FakeBedrock, with_models, REGION, BUCKET, ROLE
        import boto3, moto
        for k, v in (('AWS_ACCESS_KEY_ID', 'testing'), ('AWS_SECRET_ACCESS_KEY', 'testing'), ('AWS_DEFAULT_REGION', REGION)): monkeypatch.setenv(k, v)
        with moto.mock_aws():
            boto3.client('s3', region_name=REGION).create_bucket(Bucket=BUCKET)
            sess = with_models(boto3.Session(region_name=REGION))
            make = lambda: get_backend('bedrock', runs=runs, bucket=f's3://{BUCKET}/ft', role_arn=ROLE, region=REGION, session=sess,
                                       poll=0.05, max_poll=0.2, retry_delay=0.01)
            with FakeBedrock(steps_per_epoch=36, tick=0.01):
                yield (make, dict(base_model='nova-micro', n_epochs=2, skip_tool_examples=True),
                       dict(base_model='nova-micro', n_epochs=5, skip_tool_examples=True), False)
    else:
        for m in ('torch', 'transformers', 'peft', 'trl'): pytest.importorskip(m)   # the local extra
        tiny = request.getfixturevalue('tiny')
        make = lambda: get_backend('lora', runs=runs)
        short = dict(base_model=tiny, max_steps=12, learning_rate=3e-3, eval_split=0.1)
        yield make, short, dict(base_model=tiny, max_steps=160, learning_rate=3e-3, eval_split=0.1, batch_size=2), True

def wait_until(job, cond, timeout=120):
    "Refresh `job` until `cond(job)` holds"
    t0 = time.monotonic()
    while not cond(job.refresh()):
        assert not job.finished and time.monotonic() - t0 < timeout, f'gave up waiting: {job.progress_line()}'
        time.sleep(0.05)

def train_steps(job): return [r['step'] for r in job.metrics.rows if r['split'] == 'train']

def test_the_contract(case):
    make, short, long, _ = case
    be = make()
    job = be.launch(sample_path(), **short)                              # spec fields as keywords
    assert job.id == job.run.id and job.status in ('created', 'validating_files', 'queued', 'running')
    assert job.follow(plot=False) is job and job.following               # returns at once, follows in the background
    assert job.wait(timeout=300).status == 'succeeded', job.error
    steps = train_steps(job)
    assert steps == sorted(set(steps)) and steps[-1] == max(steps)       # every step once, in order
    losses = [r['loss'] for r in job.metrics.rows if r['split'] == 'train']
    assert losses[-1] < losses[0]

    fresh = make()                                                       # a restarted kernel
    again = fresh.attach(job.id)
    assert (again.id, again.status, again.result) == (job.id, 'succeeded', job.result)
    assert train_steps(again) == steps
    listed = fresh.jobs()
    assert list(listed.columns) == ['id', 'status', 'base_model', 'created', 'step', 'loss', 'usd']
    row = listed.set_index('id').loc[job.id]
    assert row.status == 'succeeded' and row.step == steps[-1]
    assert fresh.open_jobs() == []
    assert isinstance(again.ask('Wie sperre ich meine Karte?', max_tokens=8), str)

def test_cancel_and_resume_continue_the_same_run(case):
    make, short, long, resumes = case
    be = make()
    job = be.launch(sample_path(), **long)
    wait_until(job, lambda j: (train_steps(j) or [0])[-1] >= 45)       # past the first checkpoint
    assert job.cancel().status == 'cancelled' and job.finished
    stopped_at = train_steps(job)[-1]
    if not resumes:                                                      # the service cannot continue a stopped job: it says so
        with pytest.raises(ConfigError, match=f'run {job.id} is cancelled'): job.resume()
        assert len(be.runs) == 1 and be.attach(job.id).status == 'cancelled' and train_steps(job)[-1] == stopped_at
        return
    assert job.resume() is job and job.id == job.run.id                  # the same job, the same run
    assert job.wait(timeout=300).status == 'succeeded', job.error
    steps = train_steps(job)
    assert steps == list(range(steps[0], steps[-1] + 1)) and steps[-1] > stopped_at   # every step once, no gap
    assert len(be.runs) == 1 and be.attach(job.id).status == 'succeeded'

def test_every_backend_is_reachable_by_name():
    assert {'openai', 'simulator', 'lora', 'bedrock'} <= set(BACKENDS)
