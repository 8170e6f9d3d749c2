"""Networks (nn.Modules) and the one training loop that fits them."""
