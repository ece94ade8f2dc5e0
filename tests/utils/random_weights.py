"""Random weights for equivalence tests against reference models."""
import torch


def randomize(model, seed):
    """Every parameter random: norms near 1, layer scales near 0.5, the rest
    ``N(0, 0.1)`` (tokens ``N(0, 0.5)``), so nothing is trivially zero or one.
    Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(('lambda1', 'gamma')):
                p.copy_(0.5 + 0.2 * noise)
            elif name.endswith(('token', 'tokens', 'embeddings', 'pos_embed')):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()
