"""The SageMaker training container: LoRA training over SageMaker's ``/opt/ml`` contract."""
