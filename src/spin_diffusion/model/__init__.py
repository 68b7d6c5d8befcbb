"""Model I/O: loading and saving diffusers pipelines, LoRA, the model-family seam, tokens, tiny builders."""
