"""Reranks documents through embed-server with the official `cohere` client, unchanged.

usage: cohere_client_check.py BASE_URL API_KEY MODEL QUERY DOCUMENT...
Prints JSON: the results of the v1 client (top 2, documents returned) and of the v2 client
(all documents), as the clients parsed them.
"""
import json
import sys

import cohere


def main() -> None:
    base, key, model, query, documents = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    v1 = cohere.Client(api_key=key, base_url=base, timeout=60, max_retries=0)
    top = v1.rerank(model=model, query=query, documents=documents, top_n=2, return_documents=True)
    v2 = cohere.ClientV2(api_key=key, base_url=base, timeout=60, max_retries=0)
    every = v2.rerank(model=model, query=query, documents=documents)
    print(json.dumps({
        "v1": [{"index": r.index, "score": r.relevance_score, "text": r.document.text if r.document else None} for r in top.results],
        "v2": [{"index": r.index, "score": r.relevance_score} for r in every.results],
    }))


if __name__ == "__main__":
    main()
