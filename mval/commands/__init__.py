"""Click commands of the bandit side, one module each; cli.py registers them."""
