"""What training, gating, serving and rollout share: artifact locations, bundle formats, the model
registry and the rollout state store.

Between the pure library (components/) and its users (pipelines/, services/): it imports only
components/ and the standard library (plus MLflow inside the registry's functions), and neither
pipelines/ nor services/ imports the other.

    paths.py           every location a step, the service or a DAG reads or writes (stdlib only)
    files.py           atomic writes (staged folders, JSON), append-only JSONL, content hashes
    search_bundle.py   the search bundle format: save, load into a SearchModel
    recommend_bundle.py  the recommendation bundle format: save, load into a RecommendModel
    bundles.py         load_bundle(domain, folder): the one way to load either
    pyfunc.py          the MLflow models-from-code entry of both registered models
    registry.py        the MLflow registry: names, aliases, register, promote, reject
    rollout_store.py   rollout state, audit trail, request / feedback / evaluation logs
"""
