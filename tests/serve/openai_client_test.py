"""conveyor-serve driven by the official OpenAI Python client: models, chat and completions,
whole and streamed, stop strings, and the errors the client maps to its exception types.

Usage: openai_client_test.py BASE_URL MODEL_NAME
"""

import sys

import openai


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="not-needed", max_retries=0)

    ids = [m.id for m in client.models.list().data]
    check(ids == [model], f"models {ids}")

    question = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(
        model=model, messages=question, temperature=0, max_tokens=40
    )
    answer = whole.choices[0].message.content
    check("Paris" in answer, f"answer {answer!r}")
    check(whole.choices[0].message.role == "assistant", "role")
    check(whole.choices[0].finish_reason == "stop", f"finish {whole.choices[0].finish_reason}")
    check(whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0, "usage")

    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(
        model=model,
        messages=question,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    check(text == answer, f"streamed {text!r} != whole {answer!r}")
    check(finish == "stop", f"streamed finish {finish}")
    check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens,
          f"streamed usage {usage}")

    prompt = "The capital of France is"
    completion = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=8)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, temperature=0, max_tokens=8, stream=True
        )
        if c.choices
    )
    check(streamed == completion.choices[0].text, f"{streamed!r} != {completion.choices[0].text!r}")
    check(completion.choices[0].finish_reason == "length", completion.choices[0].finish_reason)

    cut = client.completions.create(
        model=model, prompt=prompt, temperature=0, max_tokens=12, stop=["Paris"]
    )
    check("Paris" not in cut.choices[0].text, f"stop string kept: {cut.choices[0].text!r}")
    check(cut.choices[0].finish_reason == "stop", cut.choices[0].finish_reason)

    sampled = [
        client.completions.create(
            model=model, prompt=prompt, temperature=0.9, max_tokens=8, seed=7
        ).choices[0].text
        for _ in range(2)
    ]
    check(sampled[0] == sampled[1], f"a seed gives the same sample: {sampled}")

    try:
        client.completions.create(model="gpt-4o", prompt=prompt)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError:
        pass
    try:
        client.chat.completions.create(model=model, messages=question, temperature=5)
        raise AssertionError("temperature 5 accepted")
    except openai.BadRequestError as e:
        check("temperature" in str(e), str(e))

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
