"""Amazon Bedrock end to end against moto's simulation of AWS: upload once, create once under throttling and a dropped
connection, follow metrics from the output bucket, re-attach after a restart, stop, ask, and no credential on disk.

moto simulates S3 and the job calls (create/get/list/stop) but not training: `FakeBedrock` plays Bedrock's part from
a thread, writing the metrics CSVs where Bedrock writes them and moving the job's status in moto's own state. Faults are
injected at botocore's event hooks (the service's side of the wire), never in finetune_nb's code.
"""
import json, logging, os, threading, time
from pathlib import Path
import pytest

boto3 = pytest.importorskip('boto3')
moto = pytest.importorskip('moto')
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError
from moto.bedrock.models import bedrock_backends

from finetune_nb.core import ConfigError, DataError
from finetune_nb.data import sample_path
from finetune_nb.jobs import BudgetExceeded, LaunchError
from finetune_nb.backends import get_backend
from finetune_nb.bedrock import job_name, request_token, model_name

REGION, ACCOUNT, BUCKET = 'us-east-1', '123456789012', 'ftnb-test-bucket'
ROLE = f'arn:aws:iam::{ACCOUNT}:role/BedrockFT'
KEY_ID, SECRET = 'AKIAFTNBTESTKEY00042', 'ftnbSecretAccessKey/DoNotLeak+0123456789abcd'
TOKEN = 'ftnbSessionToken0123456789DoNotLeak'

def moto_jobs(region=REGION)->dict:
    "moto's model customization jobs (name -> job), its own state"
    return bedrock_backends[ACCOUNT][region].model_customization_jobs

class FakeBedrock:
    "Plays Bedrock's training: every `tick` s each job in progress trains one step, rewriting its metrics CSVs; then completes"
    def __init__(self, steps_per_epoch:int=36, tick:float=0.01, region=REGION):
        self.steps_per_epoch, self.tick, self.region = steps_per_epoch, tick, region
        self.s3 = boto3.client('s3', region_name=region)
        self.done, self._stop = {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *a): self._stop.set(); self.thread.join(10)

    def _total(self, j)->int: return self.steps_per_epoch * int((j.hyper_parameters or {}).get('epochCount', '1'))

    def _write(self, j, n:int):
        out = j.output_data_config['s3Uri'][5:]
        bucket, _, prefix = out.partition('/')
        base = f'{prefix.rstrip("/")}/model-customization-job-{j.job_name}'
        rows = ''.join(f'{s},{(s - 1) // self.steps_per_epoch},{3.0 / (1 + 0.05 * s):.5f},{2.0 + 1 / s:.4f}\n' for s in range(1, n + 1))
        self.s3.put_object(Bucket=bucket, Key=f'{base}/training_artifacts/step_wise_training_metrics.csv',
                           Body='step_number,epoch_number,training_loss,perplexity\n' + rows)
        ends = [s for s in range(1, n + 1) if s % self.steps_per_epoch == 0]
        if ends and j.validation_data_config:
            vrows = ''.join(f'{s},{s // self.steps_per_epoch - 1},{3.2 / (1 + 0.05 * s):.5f},2.5\n' for s in ends)
            self.s3.put_object(Bucket=bucket, Key=f'{base}/validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv',
                               Body='step_number,epoch_number,validation_loss,perplexity\n' + vrows)

    def _run(self):
        while not self._stop.wait(self.tick):
            for name, j in list(moto_jobs(self.region).items()):
                if j.status != 'InProgress': continue
                n = self.done[name] = self.done.get(name, 0) + 1
                self._write(j, n)
                if n >= self._total(j): j.status = 'Completed'

def answer(parsed:dict, status:int=200):
    "A botocore `before-call` answer: the service's parsed reply, without a request"
    return AWSResponse(None, status, {}, None), parsed

def with_models(session, reply:str='Ich sperre Ihre Karte.', provisioned:bool=True, calls:list|None=None):
    "Answer what moto does not simulate: the provisioned-throughput listing and bedrock-runtime's Converse"
    def pts(params, **kw):
        arn = f'arn:aws:bedrock:{REGION}:{ACCOUNT}:provisioned-model/pt1'
        return answer({'provisionedModelSummaries': [{'provisionedModelArn': arn, 'status': 'InService'}] if provisioned else []})
    def converse(params, **kw):
        if calls is not None: calls.append(json.loads(params['body']))
        return answer({'output': {'message': {'role': 'assistant', 'content': [{'text': reply}]}}, 'stopReason': 'end_turn',
                       'usage': {'inputTokens': 1, 'outputTokens': 1, 'totalTokens': 2}, 'metrics': {'latencyMs': 1}})
    session.events.register('before-call.bedrock.ListProvisionedModelThroughputs', pts)
    session.events.register('before-call.bedrock-runtime.Converse', converse)
    return session

@pytest.fixture
def aws(monkeypatch):
    "moto's AWS with a bucket; credentials (recognisable, fake) only in the environment, as boto3's chain finds them"
    for k in ('AWS_PROFILE', 'AWS_DEFAULT_PROFILE'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', KEY_ID); monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', SECRET)
    monkeypatch.setenv('AWS_SESSION_TOKEN', TOKEN); monkeypatch.setenv('AWS_DEFAULT_REGION', REGION)
    with moto.mock_aws():
        boto3.client('s3', region_name=REGION).create_bucket(Bucket=BUCKET)
        yield

def bedrock(runs, session=None, **kw):
    kw = {'poll': 0.02, 'max_poll': 0.1, 'retry_delay': 0.01, **kw}
    return get_backend('bedrock', runs=runs, bucket=f's3://{BUCKET}/ft', role_arn=ROLE, region=REGION, session=session, **kw)

def count_calls(client, op:str)->list:
    "A list that grows by one for each `op` call the client makes"
    seen = []
    client.meta.events.register(f'before-parameter-build.{client.meta.service_model.service_id.hyphenize()}.{op}', lambda **kw: seen.append(1))
    return seen

NOVA = dict(base_model='nova-micro', n_epochs=1, skip_tool_examples=True)

@pytest.fixture
def single_turn(tmp_path)->Path:
    "The sample's single-turn examples (what Titan, Llama and Claude take)"
    out = tmp_path/'single.jsonl'
    rows = [l for l in sample_path().read_text(encoding='utf-8').splitlines()
            if sum(m['role'] == 'user' for m in json.loads(l)['messages']) == 1 and 'tool_calls' not in l]
    out.write_text('\n'.join(rows) + '\n', encoding='utf-8')
    return out

def test_upload_once_and_create_once_under_throttling_and_a_dropped_connection(aws, tmp_path, caplog):
    be = bedrock(tmp_path/'runs')
    puts, creates = count_calls(be.client('s3'), 'PutObject'), count_calls(be.client('bedrock'), 'CreateModelCustomizationJob')
    faults = ['throttle', 'drop']
    def throttle(**kw):   # the first create is refused: 429, rate exceeded (surely not processed)
        if faults and faults[0] == 'throttle':
            faults.pop(0)
            return answer({'Error': {'Code': 'ThrottlingException', 'Message': 'Rate exceeded'}, 'ResponseMetadata': {'HTTPStatusCode': 429}}, 429)
    def drop(http_response, **kw):   # the second reaches Bedrock, which creates the job; the answer is lost
        if faults and faults[0] == 'drop' and http_response.status_code == 200:
            faults.pop(0)
            raise ConnectionClosedError(endpoint_url=f'https://bedrock.{REGION}.amazonaws.com')
    be.client('bedrock').meta.events.register_first('before-call.bedrock.CreateModelCustomizationJob', throttle)
    be.client('bedrock').meta.events.register('after-call.bedrock.CreateModelCustomizationJob', drop)
    with caplog.at_level(logging.WARNING):
        job = be.launch(sample_path(), **NOVA)
    assert faults == [] and len(creates) == 2                       # throttled, then created with its answer lost
    assert list(moto_jobs()) == [job.name] and job.provider_id == moto_jobs()[job.name].job_arn   # one job, found by name
    assert job.name == job_name(job.id) and moto_jobs()[job.name].client_request_token == request_token(job.id)
    assert job.status == 'running' and 'will look for it before trying again' in caplog.text
    assert len(puts) == 1 and job.run.extra['training_uri'].startswith(f's3://{BUCKET}/ft/data/')
    again = be.launch(sample_path(), new=True, **NOVA)                # the same data: uploaded once
    assert again.id != job.id and len(puts) == 1 and again.run.extra['training_uri'] == job.run.extra['training_uri']
    assert len(moto_jobs()) == 2

def test_a_launch_cut_short_is_finished_without_a_second_job(aws, tmp_path):
    be = bedrock(tmp_path/'runs')
    def killed(http_response, **kw): raise KeyboardInterrupt   # the kernel dies after Bedrock received the create
    be.client('bedrock').meta.events.register('after-call.bedrock.CreateModelCustomizationJob', killed)
    with pytest.raises(KeyboardInterrupt): be.launch(sample_path(), **NOVA)
    (run,) = list(be.runs)
    assert run.status == 'created' and run.job_id is None and list(moto_jobs()) == [job_name(run.id)]
    fresh = bedrock(tmp_path/'runs')                                   # a restarted kernel, the same cell again
    job = fresh.launch(sample_path(), **NOVA)
    assert job.id == run.id and job.provider_id == moto_jobs()[job.name].job_arn and len(moto_jobs()) == 1
    assert fresh.attach(run.id).status == 'running'

def test_a_job_created_while_the_lookup_missed_it_is_adopted(aws, tmp_path):
    be = bedrock(tmp_path/'runs', create_attempts=2)
    misses = [1]
    def not_yet(**kw):       # an eventually consistent read: the first look-up does not see the job yet
        if misses:
            misses.pop()
            return answer({'Error': {'Code': 'ResourceNotFoundException', 'Message': 'not found'}, 'ResponseMetadata': {'HTTPStatusCode': 404}}, 404)
    def drop(http_response, **kw):
        if http_response.status_code == 200: raise ConnectionClosedError(endpoint_url='https://bedrock')
    be.client('bedrock').meta.events.register_first('before-call.bedrock.GetModelCustomizationJob', not_yet)
    be.client('bedrock').meta.events.register('after-call.bedrock.CreateModelCustomizationJob', drop)
    job = be.launch(sample_path(), **NOVA)   # create (lost) → look-up misses → create: ResourceInUseException → look-up finds it
    assert len(moto_jobs()) == 1 and job.provider_id == moto_jobs()[job.name].job_arn

def test_a_job_of_the_same_name_from_elsewhere_is_refused(aws, tmp_path):
    be = bedrock(tmp_path/'runs')
    be.client('bedrock').create_model_customization_job(
        jobName=job_name('run-x'), customModelName='other', roleArn=ROLE, baseModelIdentifier='amazon.nova-micro-v1:0',
        clientRequestToken='someone-else', trainingDataConfig={'s3Uri': f's3://{BUCKET}/x'}, outputDataConfig={'s3Uri': f's3://{BUCKET}/o'},
        hyperParameters={})
    with pytest.raises(LaunchError, match='was not created by run run-x'): be.launch(sample_path(), run_id='run-x', **NOVA)
    assert be.runs.get('run-x').status == 'failed' and len(moto_jobs()) == 1

def test_single_turn_families_refuse_multi_turn_before_any_upload(aws, tmp_path):
    rows = [{'messages': [{'role': 'user', 'content': f'Frage {i}'}, {'role': 'assistant', 'content': f'Antwort {i}'}]} for i in range(12)]
    rows[4]['messages'] += [{'role': 'user', 'content': 'Und?'}, {'role': 'assistant', 'content': 'Gern.'}]
    data = tmp_path/'chats.jsonl'
    data.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    be = bedrock(tmp_path/'runs')
    with pytest.raises(DataError, match=r'chats.jsonl:5: \[multi_turn\] 2 turns, but meta.llama3-1-8b-instruct-v1:0 takes single-turn'):
        be.launch(data, base_model='llama3-1-8b')
    assert 'Contents' not in be.client('s3').list_objects_v2(Bucket=BUCKET) and len(be.runs) == 0 and moto_jobs() == {}
    job = be.launch(data, base_model='nova-micro')                     # Nova takes conversations
    rec = be.client('s3').get_object(Bucket=BUCKET, Key=job.run.extra['training_uri'].split(f'{BUCKET}/')[1])['Body'].read().decode()
    lines = [json.loads(l) for l in rec.splitlines()]
    assert lines[0]['schemaVersion'] == 'bedrock-conversation-2024' and len(lines[4]['messages']) == 4
    assert moto_jobs()[job.name].hyper_parameters == {'epochCount': '2'}   # the model's default, sent explicitly

def test_follow_metrics_from_the_bucket_and_reattach(aws, tmp_path):
    be = bedrock(tmp_path/'runs')
    with FakeBedrock(steps_per_epoch=36) as fake:
        job = be.launch(sample_path(), valid=sample_path(), base_model='nova-micro', n_epochs=2, skip_tool_examples=True)
        assert job.follow(plot=False) is job
        assert job.wait(timeout=60).status == 'succeeded', job.error
    train = [r for r in job.metrics.rows if r['split'] == 'train']
    valid = [r for r in job.metrics.rows if r['split'] == 'valid']
    assert [r['step'] for r in train] == list(range(1, 73)) and train[-1]['loss'] < train[0]['loss']
    assert [r['step'] for r in valid] == [36, 72] and train[-1]['epoch'] == 1 and 'perplexity' in train[0]
    assert job.result == moto_jobs()[job.name].output_model_arn and model_name(job.id) in job.result
    assert 'step 72/72' in job.progress_line()                         # total steps: records × epochs (batch size 1)
    fresh = bedrock(tmp_path/'runs')                                   # a restart: the whole curve, once
    again = fresh.attach(job.id)
    assert again.metrics.rows == job.metrics.rows and again.status == 'succeeded' and fresh.open_jobs() == []
    assert fresh.jobs().set_index('id').loc[job.id].step == 72

def test_stop_and_no_resume(aws, tmp_path):
    be = bedrock(tmp_path/'runs')
    with FakeBedrock(steps_per_epoch=36, tick=0.02):
        job = be.launch(sample_path(), base_model='nova-micro', n_epochs=5, skip_tool_examples=True)
        t0 = time.monotonic()
        while len(job.refresh().metrics.rows) < 10:
            assert time.monotonic() - t0 < 60; time.sleep(0.02)
        assert job.cancel().status == 'cancelled' and moto_jobs()[job.name].status == 'Stopped'
    with pytest.raises(ConfigError, match='Bedrock cannot continue a stopped or failed customization job'): job.resume()
    assert job.cancel().status == 'cancelled'                          # cancelling again: nothing to do

def test_ask_through_provisioned_throughput_or_say_why_not(aws, tmp_path, single_turn):
    calls = []
    sess = with_models(boto3.Session(region_name=REGION), provisioned=False, calls=calls)
    be = bedrock(tmp_path/'runs', session=sess)
    job = be.launch(single_turn, base_model='titan-text-express', n_epochs=1)
    with pytest.raises(ConfigError, match='has no custom model yet'): job.ask('Hallo?')
    moto_jobs()[job.name].status = 'Completed'
    with pytest.raises(ConfigError, match=r'no Provisioned Throughput in service.*\$20.50 per model unit per hour'): job.refresh().ask('Hallo?')
    sess2 = with_models(boto3.Session(region_name=REGION), provisioned=True, calls=calls)
    job2 = bedrock(tmp_path/'runs', session=sess2).attach(job.id)
    msgs = [{'role': 'system', 'content': 'Sei knapp.'}, {'role': 'user', 'content': 'Karte sperren?'}]
    assert job2.ask(msgs, max_tokens=16) == 'Ich sperre Ihre Karte.'
    assert calls[-1]['system'] == [{'text': 'Sei knapp.'}] and calls[-1]['inferenceConfig']['maxTokens'] == 16
    assert job2.tuned().generate(['a', 'b']) == ['Ich sperre Ihre Karte.'] * 2
    assert job2.base().model_id == 'amazon.titan-text-express-v1'

def test_the_estimate_and_the_budget_guard_name_provisioned_throughput(aws, tmp_path, single_turn):
    be = bedrock(tmp_path/'runs')
    with pytest.raises(BudgetExceeded, match='Provisioned Throughput') as e:
        be.launch(single_turn, base_model='titan-text-express', n_epochs=10, max_usd=0.0001)
    assert e.value.estimate.pt_usd_per_hour == 20.5 and len(be.runs) == 0 and moto_jobs() == {}

def test_launch_settings_are_asked_for(aws, tmp_path):
    be = get_backend('bedrock', runs=tmp_path/'runs', region=REGION)
    with pytest.raises(ConfigError, match=r'needs bucket \(--bucket\) and role_arn \(--role-arn\)'): be.launch(sample_path(), **NOVA)
    job = bedrock(tmp_path/'runs').launch(sample_path(), **NOVA)
    with pytest.raises(ConfigError, match=f'was launched in {REGION}'):
        get_backend('bedrock', runs=tmp_path/'runs', region='eu-west-1').attach(job.id)

def test_credentials_never_reach_a_file_a_log_or_a_repr(aws, tmp_path, caplog):
    be = bedrock(tmp_path/'runs')
    with caplog.at_level(logging.DEBUG, logger='finetune_nb'), FakeBedrock(steps_per_epoch=36):
        job = be.launch(sample_path(), **NOVA)
        job.wait(timeout=60)
        shown = [repr(be), repr(job), job.progress_line(), str(job.run.cost)]
    assert job.status == 'succeeded'
    files = [p for p in (tmp_path/'runs').rglob('*') if p.is_file()]
    assert any(p.name == 'run.json' for p in files) and any(p.name == 'metrics.jsonl' for p in files)
    for secret in (KEY_ID, SECRET, TOKEN):
        for p in files: assert secret not in p.read_text(errors='replace'), p
        assert all(secret not in s for s in shown) and secret not in caplog.text
    run = json.loads((tmp_path/'runs'/job.id/'run.json').read_text())
    assert run['extra']['region'] == REGION and run['extra']['bucket'] == BUCKET

def test_ftnb_train_on_bedrock(aws, tmp_path, monkeypatch, capsys):
    "`ftnb train DATA --backend bedrock --bucket ... --role-arn ...`: the same launch, watch and record as the notebook's"
    from functools import partial
    from finetune_nb.backends import BACKENDS
    from finetune_nb.cli import main
    monkeypatch.setitem(BACKENDS, 'bedrock', partial(BACKENDS['bedrock'], poll=0.02, max_poll=0.1, retry_delay=0.01))
    args = ['train', str(sample_path()), '--backend', 'bedrock', '--bucket', f's3://{BUCKET}/ft', '--role-arn', ROLE, '--region', REGION,
            '--model', 'nova-micro', '--epochs', '1', '--set', 'skip_tool_examples=true', '--runs', str(tmp_path/'runs'), '--format', 'json']
    assert main(args + ['--no-watch']) == 0 and len(moto_jobs()) == 1    # launched, not followed (a lost terminal)
    first = json.loads(capsys.readouterr().out)
    with FakeBedrock(steps_per_epoch=36):
        assert main(args) == 0                                     # the same command again: re-attached, followed to the end
    rec = json.loads(capsys.readouterr().out)
    assert (rec['id'], rec['status'], rec['backend']) == (first['id'], 'succeeded', 'bedrock') and len(moto_jobs()) == 1
    assert main(['train', str(sample_path()), '--backend', 'bedrock', '--runs', str(tmp_path/'runs')]) == 2
    assert '--bucket' in capsys.readouterr().err

def test_train_panel_launches_and_follows_a_bedrock_run(aws, tmp_path):
    "The TrainPanel drives Bedrock as it drives the simulator: its form from BedrockSpec, Start, the curve, no credential in any widget"
    import ipywidgets as W
    from finetune_nb.panels import TrainPanel
    p = TrainPanel(sample_path(), runs=tmp_path/'runs', backend='bedrock', debounce=0, bucket=f's3://{BUCKET}/ft', role_arn=ROLE,
                   region=REGION, poll=0.02, max_poll=0.1, retry_delay=0.01)
    assert {'base_model', 'n_epochs', 'skip_tool_examples'} <= set(p.form.widgets)
    p.form.widgets['base_model'].value = 'nova-micro'
    p.form.widgets['n_epochs'].value = '1'
    p.form.widgets['skip_tool_examples'].value = True
    p.update()
    assert not p.btn_start.disabled, p.html_msg.value
    with FakeBedrock(steps_per_epoch=36):
        p.btn_start.click()
        job = p.wait(60)
    assert job is not None and job.status == 'succeeded', (p.html_msg.value, job and job.error)
    assert job.name in moto_jobs() and len(moto_jobs()) == 1
    assert 'succeeded' in p.html_status.value and p.plot is not None
    state = json.dumps(W.Widget.get_manager_state(drop_defaults=True), default=str)
    assert all(s not in state and s not in repr(p) for s in (KEY_ID, SECRET, TOKEN))
    p.close()
