"""The official `openai` Python client against lmaas's chat and completions routes on SmolLM2.

Run by the Rust integration tests (tests/generation.rs) with LMAAS_URL, LMAAS_TOKEN and LMAAS_ROOT
set. Greedy answers of the fp32 version (smollm2:fp32) must equal llama.cpp's on the same weights
(samples/fixtures/smollm2_reference.json); streamed answers must equal whole ones.
Exits non-zero with a message on the first mismatch.
"""
import json
import os
import sys

import openai


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def streamed(client, **request):
    """Content of a streamed chat answer, its finish reason, and the usage chunk's usage."""
    text, finish, usage, roles = "", None, None, []
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    check(roles == ["assistant"], f"one role chunk, got {roles}")
    return text, finish, usage


def main() -> None:
    # The client's own retries, as in openai_client.py: the emulator now and then loses an invocation.
    client = openai.OpenAI(base_url=os.environ["LMAAS_URL"] + "/v1", api_key=os.environ["LMAAS_TOKEN"], max_retries=2,
                           timeout=120)
    reference = json.load(open(os.path.join(os.environ["LMAAS_ROOT"], "samples/fixtures/smollm2_reference.json")))
    for case in reference["f32"]["cases"][:3]:
        request = dict(model="smollm2:fp32", messages=case["messages"], temperature=0, max_tokens=32)
        whole = client.chat.completions.create(**request)
        answer = whole.choices[0].message.content
        check(answer == case["text"], f"greedy answer {answer!r} != llama.cpp's {case['text']!r}")
        finish = "stop" if len(case["tokens"]) < 32 else "length"
        check(whole.choices[0].finish_reason == finish, f"finish_reason {whole.choices[0].finish_reason}, expected {finish}")
        check(whole.usage.prompt_tokens == len(case["prompt_tokens"]), f"usage {whole.usage}")
        check(whole.usage.completion_tokens == len(case["tokens"]), f"usage {whole.usage}")
        text, finish_streamed, usage = streamed(client, **request)
        check(text == answer, f"streamed {text!r} != whole {answer!r}")
        check(finish_streamed == finish and usage.total_tokens == whole.usage.total_tokens, f"{finish_streamed} {usage}")

    # Sampling with a seed repeats, streamed or not; int4 answers too.
    sampled = dict(model="smollm2:int4", messages=[{"role": "user", "content": "Tell me about cats."}],
                   temperature=0.8, top_p=0.95, seed=42, max_tokens=24)
    first = client.chat.completions.create(**sampled).choices[0].message.content
    check(len(first) > 10, f"int4 answered {first!r}")
    text, finish, _ = streamed(client, **sampled)
    check(text == first, f"seeded stream {text!r} != seeded answer {first!r}")

    # Stop sequences end the answer before them.
    colors = next(c for c in reference["f32"]["cases"] if "primary colors" in c["prompt"])
    stopped = client.chat.completions.create(model="smollm2:fp32", messages=colors["messages"], temperature=0,
                                             max_tokens=32, stop=["\n\n"])
    check(stopped.choices[0].message.content == colors["text"].split("\n\n")[0], f"stop: {stopped.choices[0]}")
    check(stopped.choices[0].finish_reason == "stop", "stop finish_reason")

    completion = client.completions.create(model="smollm2:int4", prompt="The capital of France is", max_tokens=4,
                                           temperature=0)
    check(completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 4,
          f"completions: {completion}")
    pieces = [c.choices[0].text for c in client.completions.create(model="smollm2:int4", prompt="The capital of France is",
                                                                  max_tokens=4, temperature=0, stream=True) if c.choices]
    check("".join(pieces) == completion.choices[0].text, f"streamed completion {pieces} vs {completion.choices[0].text!r}")

    for call, status, words in [
        (lambda: client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "word " * 2100}]),
         400, "context length"),
        (lambda: client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}]), 400,
         "not a text generation model"),
        (lambda: client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}]), 404,
         "no-such-model"),
        (lambda: client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], n=2), 400,
         "'n'"),
    ]:
        try:
            call()
            check(False, f"expected HTTP {status}")
        except openai.APIStatusError as e:
            check(e.status_code == status, f"status {e.status_code}, expected {status}: {e}")
            check(words in (e.body or {}).get("message", ""), f"error body {e.body} should mention {words!r}")
    print("openai chat client: all checks passed")


if __name__ == "__main__":
    main()
