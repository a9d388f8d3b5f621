"""Reading model files without trusting them: safetensors headers, pickle opcodes, detection."""
