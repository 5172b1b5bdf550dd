"""Pure image operations: arrays in, arrays out (tone, denoise, NL-means in torch, upscalers, resampling,
metrics). No storage, no runs, no Celery; only the modules that run a model import torch.
"""
