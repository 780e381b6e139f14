"""The run contract: an intermediate training step is exported, evaluated and served as it was trained.

A run with a custom system prompt and a small max_pixels trains 4 steps; the in-memory model's logits at
step 2 are kept. Step 2 is exported with the CLI, loaded by transformers (its own image processor reading the
exported config), and gives the same logits (<= 1e-4); `evaluate` and `serve` open the same step and prompt
with the run's system prompt.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

HERE = os.path.dirname(__file__)
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import dataset  # noqa: E402
import tiny_config  # noqa: E402

pytestmark = pytest.mark.slow(seconds=180)  # about its CI time: xdist starts it early (conftest.py)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SYSTEM_PROMPT = "You are a careful radiologist. {{ not jinja }}"
MAX_PIXELS = 56 * 56 * 4  # the 200 x 150 image below is resized down to fit
TOL = 1e-4


def probe_image() -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 255, (150, 200, 3), dtype=np.uint8))


def probe_messages() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which organ is shown?"}]}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, contract, logits of the in-memory model at step 2, the probe's prompt)."""
    from octomed_jax.data.tokenizer import load_tokenizer
    from octomed_jax.generation.prompts import encode_prompt
    from octomed_jax.training.trainer import train

    data_dir = dataset.build(str(tmp_path_factory.mktemp("data")))
    workdir = str(tmp_path_factory.mktemp("run"))
    cfg = tiny_config.get_config()
    cfg.data.data_dir = data_dir
    cfg.data.system_prompt = SYSTEM_PROMPT
    cfg.recipe.images.max_pixels = MAX_PIXELS
    cfg.train.num_steps = 4
    cfg.checkpoint.update(every=2, keep=5, async_save=False)
    cfg.export.hf = False
    cfg.eval.update(every=2, at_start=False)
    tokenizer = load_tokenizer()
    prompt = encode_prompt(tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, *probe_messages()],
                           [probe_image()], max_pixels=MAX_PIXELS)
    logits = {}

    def keep_logits(model, step):
        out = model(prompt.token_ids[None], prompt.pixel_values, prompt.image_grid_thw)
        logits[step] = np.asarray(out, np.float32)[0]
        return {}

    train(cfg, workdir, evaluate_fn=keep_logits)
    assert sorted(logits) == [2, 4]
    return workdir, logits[2], prompt


def test_every_step_carries_the_contract(run):
    from octomed_jax.checkpoint import load_contract

    workdir, _, _ = run
    step2 = load_contract(os.path.join(workdir, "checkpoints", "2"))
    latest = load_contract(workdir)  # a workdir means its latest step
    assert step2 == latest
    assert step2.prompting.system_prompt == SYSTEM_PROMPT
    assert step2.preprocessing.max_pixels == step2.data.max_pixels == MAX_PIXELS
    assert step2.model.text.vocab_size == 152000 and step2.train.total_steps == 4


def test_an_intermediate_step_exports_to_transformers_with_the_same_logits(run, tmp_path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    workdir, logits, prompt = run
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "octomed_jax.export", "--to=hf",
                        f"--checkpoint={workdir}/checkpoints/2", f"--out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    # transformers' own processor and template, from the exported files, reproduce our prompt exactly.
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(out))
    pixels = processor(images=[probe_image()], return_tensors="np")
    np.testing.assert_array_equal(pixels["image_grid_thw"], prompt.image_grid_thw)
    np.testing.assert_allclose(pixels["pixel_values"], prompt.pixel_values, rtol=0, atol=1e-5)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer.apply_chat_template(probe_messages(), add_generation_prompt=True, tokenize=False)
    assert SYSTEM_PROMPT in ids  # the run's system prompt is the export's default, Jinja-looking text kept raw
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = prompt.token_ids[None]
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels["pixel_values"]),
                       image_grid_thw=torch.tensor(pixels["image_grid_thw"]),
                       mm_token_type_ids=torch.tensor((ids == 151655).astype(np.int64))).logits.numpy()[0]
    assert float(np.abs(theirs - logits).max()) <= TOL
    contract = json.loads((out / "octomed_contract.json").read_text())
    assert contract["prompting"]["system_prompt"] == SYSTEM_PROMPT


def test_evaluate_and_serve_open_an_intermediate_step(run, tmp_path):
    """evaluate and a live server on step 2 give the same greedy answer, both prompted with the run's system prompt."""

    import openai

    from data_pipeline.formats import render_question
    from octomed_jax.data.template import encode_chat
    from octomed_jax.evaluation.benchmarks import BENCHMARKS
    from octomed_jax.evaluation.suite import evaluate_benchmarks
    from octomed_jax.generation.sampler import Sampler, SamplingParams
    from octomed_jax.serving import load_for_serving, start_server

    workdir, _, _ = run
    step = os.path.join(workdir, "checkpoints", "2")
    bench = tmp_path / "bench" / "medqa"
    bench.mkdir(parents=True)
    rows = [{"question": f"Case {i}: which drug?", "options": {"A": "aspirin", "B": "heparin"}, "answer": "heparin",
             "answer_idx": "B"} for i in range(2)]
    (bench / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5)
    out = tmp_path / "eval"
    final = evaluate_benchmarks(step, "medqa", str(tmp_path / "bench"), str(out), greedy, max_batch=2)
    assert final["metrics"]["benchmarks"]["medqa"]["num_questions"] == 2
    assert final["settings"]["prompting"]["system_prompt"] == SYSTEM_PROMPT
    assert final["settings"]["preprocessing"]["max_pixels"] == MAX_PIXELS
    with open(out / "benchmarks" / "medqa.responses.jsonl") as f:
        evaluated = json.loads(f.readline())["responses"][0][0]["text"]

    served = load_for_serving(step)
    cfg = served.serve_config(batch_wait_s=0.0)
    assert (cfg.system_prompt, cfg.max_pixels) == (SYSTEM_PROMPT, MAX_PIXELS)
    with start_server(Sampler(served.model, max_batch=2), served.tokenizer, cfg) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        question = BENCHMARKS["medqa"].load(str(tmp_path / "bench"))[0][0]
        reply = client.chat.completions.create(
            model="octomed-jax", messages=[{"role": "user", "content": render_question(question)}], temperature=0,
            max_tokens=5,
        )
    assert reply.choices[0].message.content == evaluated
    # The server prompted with the run's system prompt (the template's default has another length).
    user = {"role": "user", "content": render_question(question)}
    with_run_prompt = encode_chat(served.tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, user],
                                  add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(with_run_prompt.token_ids)
    assert reply.usage.prompt_tokens != len(encode_chat(served.tokenizer, [user], add_generation_prompt=True).token_ids)


def copy_step(workdir, tmp_path, step="2"):
    import shutil

    dst = tmp_path / "checkpoints" / step
    shutil.copytree(os.path.join(workdir, "checkpoints", step), dst)
    return dst


def test_a_damaged_contract_is_named(run, tmp_path):
    from octomed_jax.checkpoint import load_contract
    from octomed_jax.contract import ContractError
    from octomed_jax.hf.export import checkpoint_to_hf

    workdir, _, _ = run
    step = copy_step(workdir, tmp_path)
    contract_file = step / "contract" / "metadata"  # Orbax's JSON item file
    contract_file.write_text(contract_file.read_text()[:200])  # truncated mid-write by a full disk, say
    with pytest.raises(ContractError, match=str(step / "contract")):
        load_contract(str(step))
    with pytest.raises(ContractError, match=str(step / "contract")):
        checkpoint_to_hf(str(step), str(tmp_path / "hf"))  # what `python -m octomed_jax.export` prints, exit 1
    assert not (tmp_path / "hf").exists()  # nothing half-written

    import shutil

    shutil.rmtree(step / "contract")
    with pytest.raises(ContractError, match=rf"{step}: this training step has no contract/ item"):
        load_contract(str(step))


def test_missing_parameters_are_named(run, tmp_path):
    import shutil

    from octomed_jax.checkpoint import load_run

    workdir, _, _ = run
    step = copy_step(workdir, tmp_path)
    shutil.rmtree(step / "state")
    os.makedirs(step / "state")  # an empty item: the array files are gone
    with pytest.raises(ValueError, match=str(step / "state")):
        load_run(str(step))


def test_resuming_under_another_contract_is_refused(run, tmp_path):
    import shutil

    from octomed_jax.training.trainer import SetupError, train

    workdir, _, _ = run
    shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
    from octomed_jax.checkpoint import load_contract

    cfg = tiny_config.get_config()
    cfg.data.data_dir = load_contract(workdir).data.data_dir
    cfg.recipe.images.max_pixels = MAX_PIXELS
    cfg.data.system_prompt = "Another prompt."  # the same run continued with another system prompt
    cfg.train.num_steps = 4
    with pytest.raises(SetupError, match=r"(?s)cannot resume from .*checkpoints/4.*prompting.*Another prompt"):
        train(cfg, str(tmp_path))


def test_plan_reads_the_run_from_a_step(run):
    from octomed_jax import plan, planning
    from octomed_jax.checkpoint import load_contract

    workdir, _, _ = run
    step = os.path.join(workdir, "checkpoints", "2")
    (r,) = plan.run(["plan", f"--checkpoint={step}", "--topology=gpu:8", "--nogpu_compile"])
    # tiny_config's mesh and batch split (4 rows per micro-batch, one per batch-parallel device; 2 micro-batches
    # make the 8-row step), read back from the step's contract: the plan compiles the step the run trained.
    train = load_contract(step).train
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} == train.mesh
    assert (r["rows_per_micro_batch"], r["micro_steps"]) == (train.rows_per_micro_batch, train.micro_steps) == (4, 2)
    with pytest.raises(planning.PlanError, match="not both"):
        plan.run(["plan", "--config=full_mix", f"--checkpoint={step}", "--topology=gpu:8"])
