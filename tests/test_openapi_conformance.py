"""Every response the simulator sends validates against OpenAI's published OpenAPI description (issue 17).

The whole flow runs through the real `openai` client (raw HTTP only for a URL the SDK has no method for);
an httpx event hook hands each response, as it came over the wire, to `Conformance.check`, which finds the
path's response schema in the spec file (never copied here: read and `$ref`-resolved from the file) and
validates with jsonschema 2020-12, as OpenAPI 3.1 does. A route the simulator serves but the flow does not
exercise fails `test_every_served_route_is_covered`.

Where the spec and the service (or the spec and itself) disagree, `load_spec` says so, with the source.
"""
import json, os, re
from pathlib import Path
import pytest
from _lines import chat_lines, dpo_lines
import openai
from openai.types import ErrorObject
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from finetune_nb.simulator import serve, routes

MODEL = 'gpt-4o-mini-2024-07-18'
SPEC_NAME = 'openai-fine-tuning.json'
SPEC_URI, SDK_ERROR_URI = 'urn:openai:openapi', 'urn:openai-python:ErrorObject'
REPO = Path(__file__).resolve().parents[1]

def spec_file()->Path:
    "The spec: $FTNB_OPENAPI_SPEC, tests/openapi/, or a `shared/openapi/` folder beside the repo or above it"
    env = os.environ.get('FTNB_OPENAPI_SPEC')
    cands = ([Path(env)] if env else []) + [REPO/'tests'/'openapi'/SPEC_NAME] + [p/'shared'/'openapi'/SPEC_NAME for p in REPO.parents]
    for p in cands:
        if p.is_file(): return p
    pytest.fail(f'OpenAI OpenAPI description not found (looked at {", ".join(map(str, cands))})')

def to_2020(node):
    "OpenAPI 3.0 keywords the 3.1 document still carries, in their 2020-12 meaning (else jsonschema misreads them)"
    if isinstance(node, list): return [to_2020(v) for v in node]
    if not isinstance(node, dict): return node
    node = {k: to_2020(v) for k, v in node.items()}
    for lim in ('Minimum', 'Maximum'):   # 3.0: `minimum: 0, exclusiveMinimum: true`; 2020-12: `exclusiveMinimum: 0`
        flag = node.get('exclusive' + lim)
        if flag is True: node['exclusive' + lim] = node.pop(lim.lower())
        elif flag is False: del node['exclusive' + lim]
    if node.pop('nullable', False): node = {'anyOf': [node, {'type': 'null'}]}   # 3.0: `nullable: true`
    return node

def load_spec()->dict:
    "The spec in 2020-12 terms, with the documented differences from the service applied"
    spec = to_2020(json.loads(spec_file().read_text()))
    S = spec['components']['schemas']
    # 1. `ErrorResponse` refers to `#/components/schemas/Error`, which the published subset leaves out (a dangling
    #    $ref). openai-python's `ErrorObject` is generated from the same spec; its schema stands in (registered below).
    S.setdefault('Error', {'$ref': SDK_ERROR_URI})
    # 2. A paused job's status is "paused": the spec's own example answer of POST /fine_tuning/jobs/{id}/pause
    #    (x-oaiMeta, "status": "paused") and the pause/resume guide say so, while FineTuningJob.status's enum stops
    #    at "cancelled" (openai-python's Literal too). The simulator follows the service.
    st = S['FineTuningJob']['properties']['status']
    if 'paused' not in st['enum']: st['enum'] = st['enum'] + ['paused']
    # 3. An empty file list has no first or last id: it answers `null` for them, as the checkpoints list (same
    #    cursor design, same spec) types them `string | null`; ListFilesResponse requires strings. Inferred from the
    #    sibling list, not seen on the live service: a page with files carries real ids, which is what clients use.
    for k in ('first_id', 'last_id'):
        p = S['ListFilesResponse']['properties'][k]
        S['ListFilesResponse']['properties'][k] = {'anyOf': [p, {'type': 'null'}]}
    return spec

class Conformance:
    "Finds each response's schema in the spec and validates it; remembers every kind seen and every failure"
    def __init__(self, spec:dict):
        self.spec, self.kinds, self.failures = spec, {}, []
        sdk_error = {'$id': SDK_ERROR_URI, **ErrorObject.model_json_schema()}
        self.registry = Registry().with_resources([(SPEC_URI, Resource(spec, DRAFT202012)),
                                                   (SDK_ERROR_URI, Resource(sdk_error, DRAFT202012))])
        self.templates = [(t, re.compile(re.sub(r'\\\{[^}]+\\\}', '[^/]+', re.escape(t)) + '$')) for t in spec['paths']]
        self._validators = {}

    def template(self, path:str)->str|None:
        "The spec's path template for a request path under /v1, /openai or /openai/deployments/{name}"
        rest = re.sub(r'^/(v1|openai/deployments/[^/]+|openai)(?=/)', '', path)
        return next((t for t, rx in self.templates if rx.match(rest)), None)

    def validate(self, pointer:str, value)->list:
        v = self._validators.get(pointer)
        if v is None:
            v = self._validators[pointer] = Draft202012Validator({'$ref': f'{SPEC_URI}#{pointer}'}, registry=self.registry)
        return [f'{"/".join(map(str, e.absolute_path)) or "(body)"}: {e.message[:300]}' for e in v.iter_errors(value)]

    def response(self, method:str, tmpl:str|None, status:int)->tuple:
        "(JSON pointer, response object) that documents this answer; (pointer of a schema, None) for an undocumented error"
        op = self.spec['paths'].get(tmpl, {}).get(method.lower()) if tmpl else None
        resps = (op or {}).get('responses', {})
        key = next((k for k in (str(status), f'{str(status)[0]}XX', 'default') if k in resps), None)
        if key is not None:
            ptr, resp = f"/paths/{tmpl.replace('~', '~0').replace('/', '~1')}/{method.lower()}/responses/{key}", resps[key]
            if '$ref' in resp: ptr = resp['$ref'][1:]; resp = self.spec['components']['responses'][ptr.rsplit('/', 1)[1]]
            return ptr, resp
        # The spec documents only the success answer of most paths (and 429 for chat); every error the service
        # answers has the `{"error": {...}}` body (API reference, "Error codes"; openai-python reads
        # `body["error"]` for every APIStatusError), i.e. the spec's ErrorResponse.
        if status >= 400: return '/components/schemas/ErrorResponse', None
        return None, None

    def check(self, method:str, path:str, status:int, headers, body:bytes):
        tmpl = self.template(path)
        ctype = (headers.get('content-type') or '').split(';')[0].strip()
        kind = (method, tmpl or path, status, ctype)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        ptr, resp = self.response(method, tmpl, status)
        fail = lambda msg: self.failures.append(f'{method} {path} → {status} {ctype}: {msg}')
        if ptr is None: return fail('no response documented for this status')
        if resp is None: return self._check_json(ptr, body, fail)   # a schema, not a response object
        for name, h in (resp.get('headers') or {}).items():   # e.g. 429's Retry-After: integer seconds >= 1
            if name in headers:
                val = headers[name]
                try: val = int(val) if h['schema'].get('type') == 'integer' else val
                except ValueError: pass
                for e in self.validate(f'{ptr}/headers/{name}/schema', val): fail(f'header {name}: {e}')
        content = resp.get('content') or {}
        if ctype == 'text/event-stream' and ctype in content:
            chunks = [l[6:] for l in body.decode().split('\n') if l.startswith('data: ')]
            if not chunks or chunks[-1] != '[DONE]': fail('the stream does not end with data: [DONE]')
            for c in chunks[:-1]:
                for e in self.validate(f'{ptr}/content/text~1event-stream/schema', json.loads(c)): fail(f'chunk: {e}')
        elif ctype == 'application/json':
            self._check_json(f'{ptr}/content/application~1json/schema', body, fail)
        elif content.get('application/json', {}).get('schema') == {'type': 'string'}:
            # GET /files/{id}/content: the spec writes "application/json, a string"; the service sends the bytes as
            # they were uploaded (openai-python reads it as a binary response). The text is that string.
            for e in self.validate(f'{ptr}/content/application~1json/schema', body.decode('utf-8')): fail(e)
        else: fail(f'content type {ctype!r} not in the spec ({", ".join(content)})')

    def _check_json(self, ptr, body, fail):
        try: obj = json.loads(body)
        except ValueError: return fail(f'not JSON: {body[:80]!r}')
        for e in self.validate(ptr, obj): fail(e)

@pytest.fixture(scope='module')
def spec(): return load_spec()

def hooked(conf):
    "An httpx client (for the SDK's `http_client=`) that hands every response to `conf`"
    def hook(r):
        r.read()   # the SSE stream too: the SDK then parses the body from memory
        conf.check(r.request.method, r.request.url.path, r.status_code, r.headers, r.content)
    return openai.DefaultHttpxClient(event_hooks={'response': [hook]})

def walk(sim, conf):
    "The whole flow of a fine-tuning user, every response checked on the way"
    http = hooked(conf)
    c = openai.OpenAI(base_url=sim.base_url, api_key='sim', max_retries=0, http_client=http)
    jobs = c.fine_tuning.jobs
    sup = lambda **hp: {'type': 'supervised', 'supervised': {'hyperparameters': hp}}
    ask = lambda m, **kw: c.chat.completions.create(model=m, messages=[{'role': 'user', 'content': 'Frage q 3 zum Konto'}], **kw)
    c.models.list()
    # files: upload (uploaded, then processed), list (full, empty, a page), content, delete, errors
    f = c.files.create(file=('train.jsonl', chat_lines()), purpose='fine-tune')
    c.files.retrieve(f.id)
    sim.advance(1)
    assert c.files.retrieve(f.id).status == 'processed'
    v = c.files.create(file=('valid.jsonl', chat_lines(10, 'v')), purpose='fine-tune')
    d = c.files.create(file=('dpo.jsonl', dpo_lines()), purpose='fine-tune')
    bad = c.files.create(file=('bad.jsonl', chat_lines() + b'{"messages": [{"role": "robot", "content": "x"}]}\n'), purpose='fine-tune')
    sim.advance(1)
    c.files.list(); c.files.list(purpose='fine-tune', limit=2, order='asc')
    assert list(c.files.list(purpose='batch')) == []
    assert c.files.content(f.id).read() == chat_lines()
    assert c.files.delete(c.files.create(file=('x.jsonl', b'{}'), purpose='fine-tune').id).deleted
    with pytest.raises(openai.NotFoundError): c.files.retrieve('file-nope')
    with pytest.raises(openai.BadRequestError): c.files.create(file=('train.csv', b'a,b'), purpose='fine-tune')
    # a supervised job with a validation file and metadata, through every phase, paused and resumed
    job = jobs.create(model=MODEL, training_file=f.id, validation_file=v.id, suffix='demo', metadata={'run': 'r1'},
                      method=sup(n_epochs=3, batch_size=2, learning_rate_multiplier=0.5), seed=11)
    for dt in (0, 2, 2, 1.05): sim.advance(dt); jobs.retrieve(job.id)
    assert jobs.pause(job.id).status == 'paused'
    jobs.retrieve(job.id); jobs.list_events(job.id, limit=3)
    assert jobs.resume(job.id).status == 'running'
    sim.advance(100)
    j = jobs.retrieve(job.id)
    assert j.status == 'succeeded'
    evs = list(jobs.list_events(job.id, limit=7))                 # pages, with metrics and validation metrics
    assert any('full_valid_loss' in (e.data or {}) for e in evs)
    cps = jobs.checkpoints.list(job.id).data
    jobs.checkpoints.list(job.id, limit=1, after=cps[0].id)
    c.files.retrieve(j.result_files[0]); c.files.content(j.result_files[0]).read()
    # a job without a validation file (checkpoint metrics without valid_*), a DPO job, a failed one, a cancelled one
    plain = jobs.create(model=MODEL, training_file=f.id, method=sup(n_epochs=2))
    dpo = jobs.create(model=MODEL, training_file=d.id, method={'type': 'dpo', 'dpo': {'hyperparameters': {'beta': 0.2}}})
    failed = jobs.create(model=MODEL, training_file=bad.id)
    sim.advance(100)
    assert [jobs.retrieve(x.id).status for x in (plain, dpo, failed)] == ['succeeded', 'succeeded', 'failed']
    assert 'valid_loss' not in jobs.checkpoints.list(plain.id).data[0].metrics.model_dump(exclude_none=True)
    jobs.list_events(dpo.id, limit=5); jobs.checkpoints.list(dpo.id); jobs.list_events(failed.id, limit=3)
    gone = jobs.create(model=MODEL, training_file=f.id)
    assert jobs.cancel(gone.id).status == 'cancelled'
    # continuing from a checkpoint and from a tuned model
    cont = jobs.create(model=cps[-1].fine_tuned_model_checkpoint, training_file=f.id, method=sup(n_epochs=1))
    sim.advance(100)
    assert jobs.retrieve(cont.id).status == 'succeeded'
    jobs.create(model=j.fine_tuned_model, training_file=f.id)
    jobs.list(); jobs.list(limit=2); jobs.list(metadata={'run': 'r1'})
    # job errors
    with pytest.raises(openai.BadRequestError): jobs.cancel(gone.id)
    with pytest.raises(openai.BadRequestError): jobs.pause(gone.id)
    with pytest.raises(openai.BadRequestError): jobs.resume(gone.id)
    with pytest.raises(openai.BadRequestError): jobs.create(model='gpt-nope', training_file=f.id)
    with pytest.raises(openai.BadRequestError): jobs.create(model=MODEL, training_file=f.id, method=sup(n_epochs=99))
    with pytest.raises(openai.NotFoundError): jobs.retrieve('ftjob-nope')
    with pytest.raises(openai.NotFoundError): jobs.list_events('ftjob-nope')
    with pytest.raises(openai.NotFoundError): jobs.checkpoints.list('ftjob-nope')
    # chat: base model, tuned model, checkpoint, streamed, unknown model; the model list with tuned models
    ask(MODEL); ask(j.fine_tuned_model); ask(cps[0].fine_tuned_model_checkpoint)
    assert ''.join(ch.choices[0].delta.content or '' for ch in ask(j.fine_tuned_model, stream=True) if ch.choices) == 'Antwort q 3.'
    with pytest.raises(openai.NotFoundError): ask('ft:nope')
    c.models.list()
    # injected faults: their answers are the API's too
    sim.inject(429, route='POST /v1/fine_tuning/jobs').inject(429, route='POST /v1/chat/completions')
    with pytest.raises(openai.RateLimitError): jobs.create(model=MODEL, training_file=f.id)
    with pytest.raises(openai.RateLimitError): ask(MODEL)
    sim.inject(500, route='GET /v1/fine_tuning/jobs/*').inject(503, route='GET /v1/files')
    with pytest.raises(openai.InternalServerError): jobs.retrieve(job.id)
    with pytest.raises(openai.InternalServerError): c.files.list()
    sim.inject('slow', route='POST /v1/fine_tuning/jobs', delay=0.05)
    assert jobs.create(model=MODEL, training_file=f.id).status == 'validating_files'
    # a URL the API does not have (raw: the SDK has no method for it)
    assert http.get(f'{sim.base_url}/fine_tuning/nothing', headers={'Authorization': 'Bearer sim'}).status_code == 404
    # the Azure paths (/openai/..., /openai/deployments/{name}/chat/completions)
    az = openai.AzureOpenAI(azure_endpoint=sim.url, api_key='sim', api_version='2024-10-21', max_retries=0, http_client=hooked(conf))
    az.files.list(); az.files.retrieve(f.id)
    azf = az.files.create(file=('az.jsonl', chat_lines()), purpose='fine-tune')
    sim.advance(1)
    azj = az.fine_tuning.jobs.create(model=MODEL, training_file=azf.id)
    az.fine_tuning.jobs.retrieve(azj.id); az.fine_tuning.jobs.list(limit=1); az.fine_tuning.jobs.list_events(job.id, limit=2)
    az.fine_tuning.jobs.checkpoints.list(job.id)
    az.chat.completions.create(model=j.fine_tuned_model, messages=[{'role': 'user', 'content': 'Frage q 1'}])
    list(az.chat.completions.create(model=j.fine_tuned_model, messages=[{'role': 'user', 'content': 'Frage q 1'}], stream=True))
    with pytest.raises(openai.NotFoundError): az.fine_tuning.jobs.retrieve('ftjob-nope')

@pytest.fixture(scope='module')
def flow(spec):
    "Walk the flow on a simulator, one that checks keys and one that drops metadata; return the Conformance"
    conf = Conformance(spec)
    sim = serve(speed=0, seed=3)
    try: walk(sim, conf)
    finally: sim.stop()
    locked = serve(speed=0, api_key='sk-sim-right-key-123456')
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=locked.base_url, api_key='sk-wrong-key-98765432', max_retries=0, http_client=hooked(conf)).models.list()
        assert hooked(conf).get(f'{locked.base_url}/models').status_code == 401   # no key at all
    finally: locked.stop()
    blind = serve(speed=0, keep_metadata=False)
    try:
        c = openai.OpenAI(base_url=blind.base_url, api_key='sim', max_retries=0, http_client=hooked(conf))
        f = c.files.create(file=('t.jsonl', chat_lines()), purpose='fine-tune')
        blind.advance(1)
        j = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, metadata={'run': 'r1'})
        assert c.fine_tuning.jobs.retrieve(j.id).metadata is None
        assert [x.id for x in c.fine_tuning.jobs.list(metadata={'run': 'other'})] == [j.id]
    finally: blind.stop()
    return conf

def test_every_response_conforms(flow):
    assert not flow.failures, '\n'.join(flow.failures)
    # the response kinds (method, path, status, content type) the flow met, all conforming
    ok = sorted(flow.kinds)
    print(f'\n{len(ok)} of {len(ok)} response kinds conform:\n' + '\n'.join(f'  {m} {p} {s} {t} (x{flow.kinds[(m, p, s, t)]})' for m, p, s, t in ok))
    statuses = {s for _, _, s, _ in ok}
    assert {200, 400, 401, 404, 429, 500, 503} <= statuses
    assert any(t == 'text/event-stream' for *_, t in ok)

def test_every_served_route_is_covered(flow, spec):
    conf = Conformance(spec)
    served = {}
    for method, rx in routes():
        hits = [t for t in spec['paths'] if method.lower() in spec['paths'][t]
                and re.fullmatch(rx, '/v1' + re.sub(r'\{[^}]+\}', 'x1', t))]
        assert len(hits) == 1, f'the simulator serves {method} {rx}, which is {"not in" if not hits else "ambiguous in"} the spec'
        served[(method, hits[0])] = rx
    covered = {(m, p) for m, p, s, _ in flow.kinds if 200 <= s < 300}
    missing = [f'{m} {p}' for (m, p) in served if (m, p) not in covered]
    assert not missing, f'served by the simulator but not exercised (and so not checked) by the flow: {missing}'
    assert conf.template('/openai/deployments/gpt-x/chat/completions') == '/chat/completions'
    assert conf.template('/v1/files/file-1/content') == '/files/{file_id}/content'

def test_spec_reads_as_2020_12(spec):
    "Every schema is a valid 2020-12 schema once the 3.0 leftovers are translated (and not before)"
    for name, sch in spec['components']['schemas'].items(): Draft202012Validator.check_schema(sch)
    raw = json.loads(spec_file().read_text())['components']['schemas']
    with pytest.raises(Exception): Draft202012Validator.check_schema(raw['FineTuneSupervisedHyperparameters'])

def test_the_check_can_fail(spec):
    "The gaps issue 17 found are caught: the check is not vacuous"
    conf = Conformance(spec)
    f = {'id': 'file-1', 'object': 'file', 'bytes': 3, 'created_at': 1, 'filename': 't.jsonl', 'purpose': 'fine-tune', 'status': 'processed'}
    h = {'content-type': 'application/json'}
    check = lambda method, path, body, status=200: conf.check(method, path, status, h, json.dumps(body).encode())
    check('GET', '/v1/files/file-1', f)
    check('GET', '/v1/files', {'object': 'list', 'data': [f], 'has_more': False, 'first_id': 'file-1', 'last_id': 'file-1'})
    assert conf.failures == []
    check('GET', '/v1/files/file-1', {**f, 'expires_at': None, 'status_details': None})
    check('GET', '/v1/files', {'object': 'list', 'data': [f], 'has_more': False})
    ck = {'object': 'fine_tuning.job.checkpoint', 'id': 'ftckpt_1', 'created_at': 1, 'fine_tuned_model_checkpoint': 'ft:x:ckpt-step-1',
          'fine_tuning_job_id': 'ftjob-1', 'step_number': 1, 'metrics': {'step': 1, 'train_loss': 1.0, 'valid_loss': None}}
    check('GET', '/v1/fine_tuning/jobs/ftjob-1/checkpoints', {'object': 'list', 'data': [ck], 'has_more': False})
    check('POST', '/v1/fine_tuning/jobs', {'error': {'message': 'x'}}, status=400)        # no `type`
    check('POST', '/openai/deployments/m/chat/completions', {'object': 'chat.completion'})
    conf.check('GET', '/v1/models', 200, {'content-type': 'text/html'}, b'<html>')
    assert all(any(k in x for x in conf.failures) for k in ('expires_at', 'status_details', 'first_id', 'valid_loss', "'type' is a required", 'choices', 'text/html'))
