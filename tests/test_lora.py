"""LoRA backend: real training runs on a tiny model in subprocesses (fast), and SmolLM2-135M (slow: `-m slow`)."""
import os, json, time, signal
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('FTNB_NO_PROGRESS', '1')

from finetune_nb.core import ConfigError, DataError, FtnbError, sha256_file, asset_path
from finetune_nb.data import sample_path, load_sample
from finetune_nb.lora import (LoraSpec, LoraBackend, LocalJob, LocalModel, generate, load_adapter, merge, is_adapter,
                              last_checkpoint, read_chats, STOP_FILE)
from finetune_nb.testing import make_tiny_model


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp('model')/'tiny')

@pytest.fixture(scope='module')
def backend(tmp_path_factory):
    return LoraBackend(tmp_path_factory.mktemp('runs'))

def _spec(tiny, **kw):
    return LoraSpec(str(tiny), **{'max_steps': 30, 'learning_rate': 1e-2, 'batch_size': 4, 'eval_split': 0.1, **kw})

def _train_rows(job): return [r for r in job.metrics.rows if r['split'] == 'train']

@pytest.fixture(scope='module')
def done(tiny, backend):
    "One finished 30-step run, shared by the tests that only read its results"
    base_hash = sha256_file(tiny/'model.safetensors')
    job = backend.launch(sample_path(), spec=_spec(tiny)).wait(timeout=300)
    return job, base_hash

def test_loss_falls(done):
    job, _ = done
    assert job.status == 'succeeded', job.log()
    losses = [r['loss'] for r in _train_rows(job)]
    assert len(losses) == 30 and [r['step'] for r in _train_rows(job)] == list(range(1, 31))
    # a random tiny model learns slowly: the drop is 0.14 at today's versions, 0.05-0.09 at the floors (deterministic per install)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.03, losses
    valid = [r for r in job.metrics.rows if r['split'] == 'valid']
    assert valid and valid[-1]['step'] == 30
    row = _train_rows(job)[-1]
    assert row['lr'] is not None and row['tokens'] > 0 and row['tokens_per_s'] > 0
    assert job.run.extra['assistant_only_loss'] is True and job.run.extra['n_valid'] == 4

def test_base_unchanged_lora_changed(done, tiny):
    job, base_hash = done
    from safetensors.torch import load_file
    assert sha256_file(tiny/'model.safetensors') == base_hash
    ad = Path(job.result)
    assert is_adapter(ad) and (ad/'adapter_model.safetensors').exists() and not list(ad.glob('*.bin'))
    w = load_file(ad/'adapter_model.safetensors')
    assert w and all('lora_' in k for k in w)                      # only LoRA weights are saved
    assert all(w[k].abs().sum() > 0 for k in w if 'lora_B' in k)   # lora_B starts at zero: it was trained
    cfg = json.loads((ad/'adapter_config.json').read_text())
    assert set(cfg['target_modules']) == {'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'}

def test_merged_and_adapter_agree(done, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    job, _ = done
    out = merge(None, job.result, tmp_path/'merged')
    x = torch.tensor([[1, 40, 41, 42, 2, 1, 90]])
    with torch.no_grad():
        peft_model = load_adapter(None, job.result)
        a = peft_model(x).logits
        m = AutoModelForCausalLM.from_pretrained(out)(x).logits
        with peft_model.disable_adapter(): b = peft_model(x).logits
    assert torch.allclose(a, m, atol=1e-4), (a - m).abs().max()
    assert not torch.allclose(a, b, atol=1e-4)  # and the adapter does change the model
    assert isinstance(generate(job.result, 'Wie sperre ich meine Karte?', max_new_tokens=5), str)

def test_attach_after_restart(done, backend):
    job, _ = done
    again = LoraBackend(backend.runs.root).attach(job.id)  # a fresh backend, as after a kernel restart
    assert isinstance(again, LocalJob) and again.status == 'succeeded' and again.result == job.result
    assert [r['loss'] for r in again.metrics.rows] == [r['loss'] for r in job.metrics.rows]
    assert job.id in set(backend.jobs().id)

def test_cancel_then_resume(tiny, backend):
    job = backend.launch(sample_path(), spec=_spec(tiny, max_steps=50, eval_split=0.0))
    t0 = time.time()
    while len(_train_rows(job)) < 3:
        assert time.time() - t0 < 120 and not job.finished, job.log()
        time.sleep(0.1)
    job.cancel()
    assert job.status == 'cancelled', job.log()
    ck = last_checkpoint(job.folder)
    assert ck is not None
    stopped_at = int(ck.name.split('-')[1])
    assert 3 <= stopped_at < 50 and max(r['step'] for r in _train_rows(job)) == stopped_at
    job2 = job.resume().wait(timeout=300)
    assert job2.status == 'succeeded' and job2.id == job.id and job2.run.extra['resumed_from'] == ck.name
    steps = [r['step'] for r in _train_rows(job2)]
    assert steps == list(range(1, 51)), steps  # picks up right after the checkpoint: no step twice, none missing
    assert is_adapter(job2.result)

def test_two_processes_one_model(tiny, backend):
    job = backend.launch(sample_path(), spec=_spec(tiny, max_steps=6, n_procs=2))
    job.wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    log = (job.folder/'train.log').read_text()
    assert 'torch.distributed.run' in log and 'world size 2' in log
    assert log.count('[ftnb] tiny') + log.count('parameters trainable') == 1  # only rank 0 speaks
    steps = [r['step'] for r in _train_rows(job)]
    assert steps == list(range(1, 7))  # one row per step: only rank 0 writes metrics
    assert job.run.extra['world_size'] == 2

def test_bad_inputs_fail_early(tiny, backend, tmp_path):
    with pytest.raises(ConfigError, match='QLoRA needs a CUDA GPU'):
        backend.launch(sample_path(), spec=_spec(tiny, qlora=True))
    with pytest.raises(ConfigError, match='not found'):
        backend.launch(sample_path(), spec=_spec(tmp_path/'no-model'))
    bad = tmp_path/'bad.jsonl'
    bad.write_text((sample_path().read_text().splitlines()[0]) + '\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match='bad.jsonl:2: \\[missing_assistant\\]'):
        backend.launch(bad, spec=_spec(tiny))

def test_crash_is_reported(tiny, backend, tmp_path):
    broken = tmp_path/'broken'; broken.mkdir()
    for f in tiny.iterdir(): (broken/f.name).write_bytes(f.read_bytes())
    (broken/'model.safetensors').write_bytes(b'not safetensors')
    job = backend.launch(sample_path(), spec=_spec(broken)).wait(timeout=120)
    assert job.status == 'failed' and 'could not load the model' in job.error and str(broken) in job.error, job.error

def test_resume_after_a_kill_while_the_adapter_was_written(tiny, backend):
    import shutil
    job = backend.launch(sample_path(), spec=_spec(tiny, max_steps=12, save_steps=6, eval_split=0.0)).wait(timeout=300)
    assert job.status == 'succeeded' and last_checkpoint(job.folder).name == 'checkpoint-12'
    shutil.rmtree(job.result)                                        # killed while adapter/ was being written
    job.run.update(status='failed', result=None, error='the training process exited')
    job.resume().wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    assert [r['step'] for r in _train_rows(job)] == list(range(1, 13))  # not a 13th step past max_steps=12
    assert is_adapter(job.result) and 'end of the schedule' in job.log()

def test_the_trainer_does_not_inherit_secrets(tiny, backend, monkeypatch):
    import finetune_nb.lora as lora, subprocess
    seen = {}
    real = subprocess.Popen
    def spy(cmd, env=None, **kw):
        seen.update(env); return real(['true'], **{k: v for k, v in kw.items() if k in ('stdout', 'stderr', 'stdin')})
    monkeypatch.setattr(lora.subprocess, 'Popen', spy)
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-proj-SECRET0123456789'); monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'x')
    monkeypatch.setenv('HF_TOKEN', 'hf_x')
    backend.launch(sample_path(), spec=_spec(tiny, max_steps=1), new=True)
    assert seen and 'OPENAI_API_KEY' not in seen and 'AWS_SECRET_ACCESS_KEY' not in seen and seen['HF_TOKEN'] == 'hf_x'

# ---- model handles: LocalModel, job.tuned() / job.base()

QS = ['Wie sperre ich meine Karte?', 'Hallo', 'Was kostet eine Auslandsüberweisung in Franken, und wie lange dauert sie?',
      [{'role': 'system', 'content': 'Kurz antworten.'}, {'role': 'user', 'content': 'Konto?'}],
      [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'the reference: not part of the prompt'}]]

def test_local_model_batched_equals_one_by_one(done):
    job, _ = done
    m = job.tuned()
    many = m.generate(QS * 3, max_new_tokens=16)        # 15 conversations: two batches of 8, lengths mixed
    assert len(many) == 15 and many[:5] == many[5:10] == many[10:]
    assert many[:5] == [generate(job.result, q, max_new_tokens=16) for q in QS]   # lora.generate, one at a time
    assert many[4] == m('Hi', max_new_tokens=16)       # the trailing assistant message was dropped
    ex = load_sample()[0]                              # a ChatExample asks its prompt
    assert m.generate([ex], max_new_tokens=8) == [generate(job.result, ex.prompt, max_new_tokens=8)]

def test_local_model_loads_once_quietly(tiny, capfd):
    import warnings
    m = LocalModel(str(tiny), batch_size=2)
    assert not m.loaded and m.name == 'tiny' and m.cache_key()['adapter'] is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        first = m.generate(QS[:3], max_new_tokens=6)
        model = m.load()[0]
        assert m.generate(QS[:3], max_new_tokens=6) == first and m.load()[0] is model
    out, err = capfd.readouterr()
    assert out == '' and 'Loading weights' not in err and '%|' not in err, err   # no progress bars
    assert not caught, [str(w.message) for w in caught]

def test_nothing_loud_from_load_model_and_generate(tiny, capfd):
    import warnings
    from finetune_nb.lora import load_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model, tok = load_model(str(tiny))
        assert isinstance(generate(model, 'Hallo', tokenizer=tok, max_new_tokens=4), str)
        assert isinstance(generate(str(tiny), 'Hallo', max_new_tokens=4), str)
    out, err = capfd.readouterr()
    assert out == '' and 'Loading weights' not in err and '%|' not in err, err
    assert not caught, [str(w.message) for w in caught]

def test_tuned_and_base_handles(done, tiny):
    job, _ = done
    tuned, base = job.tuned(), job.base()
    assert isinstance(tuned, LocalModel) and isinstance(base, LocalModel)
    assert tuned.adapter == Path(job.result) and base.adapter is None and tuned.name == job.id
    assert tuned.base == base.base == str(tiny)
    assert job.tuned() is tuned                       # the same handle: loaded once per job
    k1, k2 = tuned.cache_key(), base.cache_key()
    assert k1['adapter'] == sha256_file(Path(job.result)/'adapter_model.safetensors')[:16] and k2['adapter'] is None
    assert k1['base'] == k2['base']
    assert base.generate(QS[:2], max_new_tokens=12) != tuned.generate(QS[:2], max_new_tokens=12)   # the adapter answers differently
    assert job.ask(QS[0], max_tokens=12) == tuned(QS[0], max_new_tokens=12)

def test_tuned_of_an_unfinished_run_is_refused(tiny, backend):
    job = backend.launch(sample_path(), spec=_spec(tiny, max_steps=400, eval_split=0.0), new=True)
    try:
        with pytest.raises(FtnbError, match='has no tuned model'): job.tuned()
        assert isinstance(job.base(), LocalModel)     # the base is there from the start
    finally: job.cancel()
    with pytest.raises(FtnbError, match='it is cancelled.*LocalModel\\(base, adapter=job.checkpoint\\)'): job.tuned()

# ---- DPO

def test_dpo_margin_rises(tiny, backend):
    job = backend.launch(asset_path('sample_prefs_de.jsonl'), base_model=str(tiny), method='dpo', beta=0.1, max_steps=16,
                         learning_rate=1e-2, batch_size=4, eval_split=0.2).wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    rows = _train_rows(job)
    assert [r['step'] for r in rows] == list(range(1, 17))
    assert all({'rewards/chosen', 'rewards/rejected', 'rewards/margins'} <= set(r) for r in rows)
    first, last = rows[0]['rewards/margins'], sum(r['rewards/margins'] for r in rows[-3:]) / 3
    assert last > first + 0.5, [r['rewards/margins'] for r in rows]
    assert rows[-1]['loss'] < rows[0]['loss']
    valid = [r for r in job.metrics.rows if r['split'] == 'valid']
    assert valid and 'rewards/margins' in valid[-1]
    assert job.run.extra['method'] == 'dpo' and job.run.spec['method'] == 'dpo'
    # one copy of the model: the reference is the base with the adapter off, so the adapter holds only LoRA weights
    from safetensors.torch import load_file
    assert all('lora_' in k for k in load_file(Path(job.result)/'adapter_model.safetensors'))
    # the margin plots like the loss
    from finetune_nb.plot import LossPlot
    p = LossPlot(job, renderer='static', metric='rewards/margins')
    tr = next(t for t in p.traces() if t['split'] == 'train')
    assert list(tr['y']) == [r['rewards/margins'] for r in rows]
    assert job.tuned().generate(['Meine Karte wurde gestohlen. Was jetzt?'], max_new_tokens=6)

def test_dpo_takes_trl_rows(tiny, tmp_path):
    rows = [json.loads(l) for l in asset_path('sample_prefs_de.jsonl').read_text().splitlines()]
    trl = [{'prompt': r['input']['messages'], 'chosen': r['preferred_output'], 'rejected': r['non_preferred_output']} for r in rows]
    job = LoraBackend(tmp_path/'runs').launch(trl, base_model=str(tiny), method='dpo', max_steps=2, eval_split=0.0).wait(timeout=300)
    assert job.status == 'succeeded', job.log()

def test_dpo_file_for_sft_names_the_line(tiny, backend, tmp_path):
    with pytest.raises(DataError, match=r'sample_prefs_de.jsonl:1: \[dpo_not_supported\].*pass method="dpo"'):
        backend.launch(asset_path('sample_prefs_de.jsonl'), base_model=str(tiny))
    with pytest.raises(ConfigError, match="needs dpo examples"):        # and chats for DPO
        backend.launch(sample_path(), base_model=str(tiny), method='dpo')
    chats = tmp_path/'chats.jsonl'; chats.write_text(sample_path().read_text().splitlines()[0] + '\n')
    with pytest.raises(DataError, match=r'chats.jsonl:1: \[chat_not_dpo\]'):   # the trainer's own reader says so too
        from finetune_nb.lora import read_prefs
        read_prefs(chats)

def test_dpo_estimate(tiny, backend):
    from finetune_nb.validate import validate
    rep = validate(asset_path('sample_prefs_de.jsonl'), model=str(tiny), progress_bar=False)
    sft = backend.estimate({'train': validate(sample_path(), model=str(tiny), progress_bar=False)}, LoraSpec(str(tiny), max_steps=10))
    dpo = backend.estimate({'train': rep}, LoraSpec(str(tiny), method='dpo', max_steps=10))
    assert dpo.batch_size == 2 * sft.batch_size       # a pair is two sequences
    st = rep.tokens
    assert dpo.n_tokens == int((2*st.n_tokens - st.n_trained) * 1.5 / st.n_examples * 40)

@pytest.mark.slow
def test_smollm2_learns(tmp_path):  # skipped unless -m slow / FTNB_SLOW=1 (tests/conftest.py)
    q = [{'role': 'system', 'content': 'Sie sind der Kundenservice-Assistent der Alpenbank Digital.'},
         {'role': 'user', 'content': 'Wie kann ich meine Karte sperren lassen?'}]
    before = generate('smollm2-135m', q, max_new_tokens=40)
    job = LoraBackend(tmp_path/'runs').launch(sample_path(), spec=LoraSpec('smollm2-135m', max_steps=10, batch_size=8,
                                                                           learning_rate=2e-3, eval_split=0.0))
    job.wait(timeout=1800)
    losses = [r['loss'] for r in _train_rows(job)]
    after = generate(job.result, q, max_new_tokens=40)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    assert after != before


# ---- memory: the chunked loss, micro-batches from a budget

def _peft_tiny(tiny, dropout=0.0):
    import peft, torch
    from transformers import AutoModelForCausalLM
    from finetune_nb.lora import lora_config
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny)
    pm = peft.get_peft_model(m, lora_config(LoraSpec(str(tiny), lora_dropout=dropout), m)).train()
    for k, p in pm.named_parameters():   # lora_B starts at zero: give the adapters a gradient path that matters
        if 'lora_B' in k: torch.nn.init.normal_(p.data, std=0.05)
    return pm

def _batch(seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, 400, (3, 40), generator=g)
    labels = x.clone(); labels[:, :15] = -100; labels[2, 30:] = -100   # prompt and padding positions are not trained
    mask = torch.ones_like(x); mask[2, 30:] = 0
    return dict(input_ids=x, attention_mask=mask, labels=labels)

def _grads(pm):
    g = {k: p.grad.clone() for k, p in pm.named_parameters() if p.requires_grad}
    pm.zero_grad()
    return g

def test_chunked_loss_equals_the_plain_loss_with_gradients(tiny):
    import torch
    from finetune_nb.train import add_chunked_loss, chunked_nll
    pm, b = _peft_tiny(tiny), _batch()
    plain = pm(**b).loss                                  # the model's own: mean NLL over the trained positions
    plain.backward(); g_plain = _grads(pm)
    assert add_chunked_loss(pm.get_base_model()) is None
    out = pm(**b, chunked_loss=True)
    assert int(out.n_tokens) == int((b['labels'][:, 1:] != -100).sum())
    loss = out.nll / out.n_tokens
    loss.backward(); g_chunked = _grads(pm)
    assert torch.allclose(loss, plain, rtol=1e-5, atol=1e-6), (loss, plain)
    assert all(torch.allclose(g_chunked[k], g_plain[k], rtol=1e-4, atol=1e-5) for k in g_plain), \
        max((g_chunked[k] - g_plain[k]).abs().max() for k in g_plain)
    # several chunks of a few rows give the same numbers as one
    torch.manual_seed(1)
    h, w = torch.randn(37, 64, requires_grad=True), torch.randn(500, 64, requires_grad=True)
    y = torch.randint(0, 500, (37,))
    nll, ent, hit = chunked_nll(h, w, y, rows=5)
    nll.sum().backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    z = h2 @ w2.t()
    ref = torch.nn.functional.cross_entropy(z, y, reduction='sum')
    ref.backward()
    assert torch.allclose(nll.sum(), ref, rtol=1e-5) and torch.allclose(h.grad, h2.grad, atol=1e-4) and torch.allclose(w.grad, w2.grad, atol=1e-4)
    p = z.detach().softmax(-1)
    assert torch.allclose(ent, -(p * p.clamp_min(1e-30).log()).sum(-1), atol=1e-4) and torch.equal(hit, z.detach().argmax(-1) == y)

def test_folded_dropout_gives_the_same_gradients(tiny):
    import torch
    from finetune_nb.train import fold_lora_dropout
    pm, b = _peft_tiny(tiny, dropout=0.2), _batch()
    torch.manual_seed(3); pm(**b).loss.backward(); before = _grads(pm)
    assert fold_lora_dropout(pm) == 14
    torch.manual_seed(3); pm(**b).loss.backward(); after = _grads(pm)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    torch.manual_seed(4); pm(**b).loss.backward(); other = _grads(pm)
    assert not all(torch.allclose(before[k], other[k], atol=1e-6) for k in before)   # the dropout is still there

def test_memory_plan_keeps_the_batch():
    from finetune_nb.lora import plan_memory
    smol = {'hidden_size': 576, 'intermediate_size': 1536, 'num_hidden_layers': 30, 'num_attention_heads': 9,
            'num_key_value_heads': 3, 'head_dim': 64, 'vocab_size': 49152}
    seen = set()
    for bs, ga in ((8, 1), (4, 2), (6, 1), (1, 8), (12, 2)):
        for budget in (0.5, 1.6, 2.5, 4, 8, 100):
            p = plan_memory(LoraSpec(batch_size=bs, grad_accum=ga), smol, 512, budget_gb=budget)
            assert p.micro_batch * p.grad_accum == bs * ga and p.batch == bs * ga, (bs, ga, budget, p)
            assert p.fits == (p.need_gb <= budget)
            seen.add((p.micro_batch, p.gradient_checkpointing))
    assert {(1, False), (1, True), (8, False)} <= seen     # split, checkpointed, and whole, as the budget allows
    # more memory never means a smaller micro-batch; checkpointing only when nothing fits without it
    ps = [plan_memory(LoraSpec(batch_size=8), smol, 512, budget_gb=b) for b in (1.4, 2.0, 2.2, 2.5, 2.8, 3.5, 5, 9, 20)]
    assert [p.micro_batch for p in ps if not p.gradient_checkpointing] == sorted(p.micro_batch for p in ps if not p.gradient_checkpointing)
    assert all(not p.gradient_checkpointing for p in ps if p.budget_gb >= 2.8)
    p = plan_memory(LoraSpec(batch_size=4, method='dpo'), smol, 512, budget_gb=6)          # a pair is two sequences
    assert p.micro_batch < plan_memory(LoraSpec(batch_size=4), smol, 512, budget_gb=6).micro_batch

def test_micro_batches_give_the_losses_of_the_whole_batch(tiny, tmp_path):
    "TRL's loss on batches of 4 and the chunked loss on micro-batches of 1 (4 accumulation steps): the same per-step loss"
    from finetune_nb.train import make_trainer
    from finetune_nb.lora import load_model, lora_config, training_template, plan_memory, training_memory_gb
    rows = read_chats(sample_path())
    def losses(whole, chunked):
        spec = LoraSpec(str(tiny), max_steps=4, batch_size=4, learning_rate=1e-2, lora_dropout=0.0, eval_split=0.0,
                        chunked_loss=chunked, save_steps=100)
        model, tok = load_model(str(tiny))
        tok.chat_template = training_template(tok)[0]
        one = training_memory_gb(model.config, 1, 400, spec)   # a budget that fits one example at a time, not two
        plan = plan_memory(spec, model.config, 400, budget_gb=64.0 if whole else one + 1e-9)
        tr = make_trainer(spec, model, tok, lora_config(spec, model), rows, [], tmp_path/f'{whole}{chunked}', True, False, [], plan)
        tr.train()
        return plan, tr.chunked, [h['loss'] for h in tr.state.log_history if 'loss' in h]
    plan1, ch1, whole = losses(True, False)
    plan2, ch2, micro = losses(False, True)
    assert (plan1.micro_batch, plan1.grad_accum, ch1) == (4, 1, False)
    assert (plan2.micro_batch, plan2.grad_accum, plan2.gradient_checkpointing, ch2) == (1, 4, False, True), plan2
    assert len(whole) == len(micro) == 4
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(micro, whole)), (micro, whole)

def test_a_small_memory_budget_still_trains(tiny, backend):
    job = backend.launch(sample_path(), spec=_spec(tiny, max_steps=6, memory_gb=0.3, eval_split=0.1)).wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    x = job.run.extra
    assert (x['micro_batch'], x['grad_accum'], x['checkpoint_every'], x['chunked_loss']) == (1, 4, 1, True)
    assert any('more than its 0.3 GB budget' in n for n in x['notices']), x['notices']   # it said it might not fit
    assert [r['step'] for r in _train_rows(job)] == list(range(1, 7)) and 0 < x['peak_rss_gb'] < 10
    assert 'memory: batch 4 run as 1 × 4 accumulation steps, every layer checkpointed' in job.log()

def test_set_threads_reaches_the_running_trainer(tiny, tmp_path):
    "A run started on one thread takes two from its next step once asked (the demo's hand-over after the baselines)"
    b = LoraBackend(tmp_path/'runs', env={'OMP_NUM_THREADS': '1'})
    job = b.launch(sample_path(), spec=_spec(tiny, max_steps=4, eval_split=0.0))
    assert job.set_threads(2) is job
    with pytest.raises(ConfigError, match='whole number'): job.set_threads(0)
    job.wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    assert '2 CPU threads from step' in job.log(), job.log()
    job.set_threads(1)                                    # a finished run: nothing to tell, nothing written
    assert (job.folder/'THREADS').read_text() == '2'
