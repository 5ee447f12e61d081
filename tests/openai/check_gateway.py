"""The official `openai` package against a running `cocoon gateway`.

Run by tests/tests/openai_py.rs with OPENAI_BASE_URL (the gateway's /v1) and OPENAI_API_KEY
set; exits non-zero with a message on the first thing that is not as an OpenAI client expects.
"""
import os
import sys

import openai

MODEL = os.environ.get("COCOON_MODEL", "smollm2-135m-instruct-q4_1")
client = openai.OpenAI(max_retries=0, timeout=120)

models = [m.id for m in client.models.list()]
assert MODEL in models, models

chat = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=8,
    temperature=0,
    seed=7,
)
text = chat.choices[0].message.content
assert chat.object == "chat.completion", chat
assert text, chat
assert chat.usage.completion_tokens >= 1, chat.usage
assert chat.model_extra["cocoon"]["paid_nanoton"] > 0, chat.model_extra

streamed = ""
last = None
for chunk in client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=8,
    temperature=0,
    seed=7,
    stream=True,
):
    if chunk.choices and chunk.choices[0].delta.content:
        streamed += chunk.choices[0].delta.content
    last = chunk
assert streamed == text, (streamed, text)
assert last.choices[0].finish_reason in ("stop", "length"), last

completion = client.completions.create(
    model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0
)
assert completion.choices[0].text, completion

try:
    client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "x"}]
    )
    sys.exit("an unknown model was not refused")
except openai.NotFoundError as e:
    assert e.status_code == 404, e

try:
    client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    sys.exit("an empty conversation was not refused")
except openai.BadRequestError as e:
    assert e.status_code == 400, e

print("ok", repr(text))
