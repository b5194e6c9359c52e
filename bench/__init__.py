"""Benchmarks that print numbers (ratios against a baseline measured in the same run), apart from
the lifecycle's steps: `python -m bench.<name>`, all of them with `make bench`.

    data.py       ingest + validate + split on the full shipped datasets
    search.py     query latency (ONNX vs PyTorch query tower) and catalog-pass throughput
    recommend.py  recommendation latency per known user
    serving.py    the same requests in-process and through `bentoml serve`
    rollout.py    the rollout's error rates and interleaving vs A/B, simulated on the real search bundle
    soak.py       10 minutes of load on `bentoml serve` with both domains in canary: 5xx, p99, memory
"""
