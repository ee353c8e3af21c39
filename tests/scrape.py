#!/usr/bin/env python3
"""Scrape a sluice /metrics endpoint with a real HTTP client (urllib) and parse it with
Prometheus's own OpenMetrics parser (prometheus_client). Prints one JSON object:
{"content_type": ..., "samples": [[name, {labels}, value], ...]}. A body the parser refuses
makes this exit non-zero with the parser's message."""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

url = sys.argv[1]
with urllib.request.urlopen(url, timeout=30) as r:
    content_type = r.headers.get("Content-Type", "")
    body = r.read().decode("utf-8")
samples = []
types = {}
for family in text_string_to_metric_families(body):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"content_type": content_type, "types": types, "samples": samples}, sys.stdout)
