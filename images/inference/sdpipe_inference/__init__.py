"""The inference container: SageMaker's /ping and /invocations over diffusers pipelines."""
