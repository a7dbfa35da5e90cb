"""`sdtp serve` spoken to by the real `openai` Python client (from PyPI).

scripts/test.sh runs this with a venv that has `openai` and `pytest`; it needs the sdtp binary
($SDTP_BIN, else build/sdtp) and the default model ($SDTP_MODEL, else ~/.cache/sdtp/models/...).
Each module-level fixture starts one server on 127.0.0.1 with --port 0 and reads the port it
prints.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SDTP_BIN", str(ROOT / "build" / "sdtp"))
MODEL = os.environ.get(
    "SDTP_MODEL", str(Path.home() / ".cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


def start_server(*extra):
    proc = subprocess.Popen([BIN, "serve", "-m", MODEL, "--port", "0", "-c", "2048", "--quiet", *extra],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"sdtp serve exited: {line}{proc.stderr.read()}")
    proc.kill()
    raise RuntimeError("sdtp serve printed no port")


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, rest
    assert "stopped" in rest


@pytest.fixture(scope="module")
def server():
    proc, port = start_server()
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    stop_server(proc)


@pytest.fixture(scope="module")
def keyed_server():
    proc, port = start_server("--api-key", "sekret")
    yield port
    stop_server(proc)


def test_models(server):
    models = server.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


def test_chat(server):
    r = server.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # Greedy is deterministic.
    again = server.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_streaming_chat_equals_the_whole_reply(server):
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = server.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=20, temperature=0)
    chunks = list(server.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=20,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_and_logprobs(server):
    r = server.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=8, temperature=0,
                                  logprobs=2)
    assert r.object == "text_completion"
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == len(lp.token_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    chat = server.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(c.top_logprobs) == 3 and c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)


def test_stop_and_seed(server):
    r = server.completions.create(model=MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"])
    assert " 7" not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"
    a = server.completions.create(model=MODEL_ID, prompt="Tell me", max_tokens=12, temperature=1.0, seed=5)
    b = server.completions.create(model=MODEL_ID, prompt="Tell me", max_tokens=12, temperature=1.0, seed=5)
    assert a.choices[0].text == b.choices[0].text


def test_sdtp_extension(server):
    r = server.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Summarise: " + "the cat sat on the mat. " * 40}],
        max_tokens=4, temperature=0, extra_body={"sdtp": {"prune": "attn", "keep_ratio": 0.5}})
    extra = r.model_extra["sdtp"]
    assert extra["prune"] == "attn"
    assert extra["alive_last_layer"] < r.usage.prompt_tokens
    assert 0 < extra["flops_saved"] < 1


def test_errors(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.chat.completions.create(model=MODEL_ID, messages=[], max_tokens=4)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        server.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "x"}], temperature=5)
    with pytest.raises(openai.BadRequestError) as e:
        server.completions.create(model=MODEL_ID, prompt="word " * 3000, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        server.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        server.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"sdtp": {"prune": "no-such-method"}})


def test_api_key(keyed_server):
    base = f"http://127.0.0.1:{keyed_server}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=base, api_key="sekret", max_retries=0)
    assert ok.models.list().data[0].id == MODEL_ID
