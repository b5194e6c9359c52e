"""One module per lifecycle step: load inputs -> call components -> write outputs -> log to MLflow."""
