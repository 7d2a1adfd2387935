"""Embeds texts through embed-server with the official `openai` client, unchanged.

usage: openai_client_check.py BASE_URL API_KEY MODEL TEXT...
Prints JSON: the vectors from the client's default request (base64 on the wire) and from
encoding_format="float", the model name and the usage the client parsed.
"""
import json
import sys

from openai import OpenAI


def main() -> None:
    base, key, model, texts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    default = client.embeddings.create(model=model, input=texts)
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
    single = client.embeddings.create(model=model, input=texts[0])
    listed = [m.id for m in client.models.list()]
    print(json.dumps({
        "default": [list(map(float, d.embedding)) for d in default.data],
        "float": [d.embedding for d in floats.data],
        "single": single.data[0].embedding,
        "indices": [d.index for d in default.data],
        "model": default.model,
        "prompt_tokens": default.usage.prompt_tokens,
        "total_tokens": default.usage.total_tokens,
        "models": listed,
    }))


if __name__ == "__main__":
    main()
