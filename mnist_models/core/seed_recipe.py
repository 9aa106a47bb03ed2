"""The seed's recipe (docs/SEED.md): what every run follows unless a flag says otherwise, and what a
run name leaves out when it does."""

SEED_EPOCHS = 15
SEED_BATCH_SIZE = 100
SEED_LR = 1e-3  # Adam
SEED = 777  # torch.manual_seed
