"""huggingface_hub's InferenceClient against embed-server started as text-embeddings-inference is.

Usage: hf_inference_client_check.py BASE_URL API_KEY

Calls `feature_extraction` (one text, then a list) and `sentence_similarity` through the
client's own request code (it posts to BASE_URL itself, as it does for a TEI endpoint) and
prints what came back as one JSON object; embed-server's tests/it/e2e.rs compares it with the
server's /embed and /similarity answers.
"""

import json
import os
import sys

# The client refuses every HTTP call, a local base_url included, under HF_HUB_OFFLINE.
os.environ.pop("HF_HUB_OFFLINE", None)

from huggingface_hub import InferenceClient  # noqa: E402

SOURCE = "a cat sat on the mat"
# One sentence: with the source, the two inputs the test start allows (--max-client-batch-size 2).
SENTENCES = ["a kitten rests on a rug"]
TEXTS = ["hello world", "the quick brown fox"]


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    client = InferenceClient(base_url=base, api_key=key)
    one = client.feature_extraction(TEXTS[0])
    many = client.feature_extraction(TEXTS)
    similarity = client.sentence_similarity(SOURCE, other_sentences=SENTENCES)
    print(json.dumps({
        "texts": TEXTS,
        "one": one.tolist(),
        "many": many.tolist(),
        "source": SOURCE,
        "sentences": SENTENCES,
        "similarity": [float(s) for s in similarity],
    }))


if __name__ == "__main__":
    main()
