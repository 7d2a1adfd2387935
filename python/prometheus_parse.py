"""Parses Prometheus text exposition with the official `prometheus_client` parser.

usage: prometheus_parse.py < metrics.txt
Prints JSON: a list of [sample name, labels, value] for every sample. Exits non-zero (with the
parser's error) when the text does not parse.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    samples = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        for s in family.samples:
            samples.append([s.name, s.labels, s.value])
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
